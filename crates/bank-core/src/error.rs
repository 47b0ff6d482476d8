//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `bank-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration or argument value is out of its valid range.
    #[error("invalid value for `{field}`: {value} ({reason})")]
    InvalidValue {
        /// Name of the offending field or argument.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// A tensor argument has the wrong shape.
    #[error("shape mismatch for `{what}`: expected {expected}, got {actual:?}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The shape that was given.
        actual: Vec<usize>,
    },
    /// The backend cannot store the requested precision.
    #[error(
        "backend `{backend}` cannot store {precision} tensors; use a backend that supports it (flex, wgpu, cuda)"
    )]
    UnsupportedPrecision {
        /// The backend's name.
        backend: String,
        /// The requested storage precision.
        precision: crate::Precision,
    },
    /// Reading or writing a bank file failed at the operating-system level.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A bank file was written by another version of the format.
    #[error("{}: bank format version {found}, but this build reads version {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// A bank file exists but is not a valid bank file of this version.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
