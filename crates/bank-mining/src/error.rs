//! The crate's error type.

/// Everything that can go wrong while mining.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of its valid range.
    #[error("invalid value for `{field}`: {value} ({reason})")]
    InvalidValue {
        /// Name of the field.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// Saved group state does not fit the bank.
    #[error("invalid merge groups: {0}")]
    Groups(String),
    /// Similarities could not be read back from the device.
    #[error("cannot read similarities from the device: {0}")]
    Read(String),
    /// An error from the memory bank.
    #[error(transparent)]
    Bank(#[from] bank_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> Error {
    Error::InvalidValue {
        field,
        value: value.to_string(),
        reason,
    }
}
