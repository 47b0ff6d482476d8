//! The crate's error type.

/// Everything that can go wrong when computing a loss.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hyperparameter is out of its valid range.
    #[error("invalid value for `{field}`: {value} ({reason})")]
    InvalidValue {
        /// Name of the hyperparameter.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// Tensor arguments have incompatible shapes.
    #[error("shape mismatch for `{what}`: expected {expected}, got {actual:?}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The shape that was given.
        actual: Vec<usize>,
    },
    /// An error from the memory bank.
    #[error(transparent)]
    Bank(#[from] bank_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks that `value` is finite and > 0.
pub(crate) fn positive(field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            field,
            value: value.to_string(),
            reason: "must be finite and > 0",
        })
    }
}

/// Checks that a 1-d tensor has `len` entries.
pub(crate) fn check_len(what: &'static str, dims: [usize; 1], len: usize) -> Result<()> {
    if dims[0] == len {
        Ok(())
    } else {
        Err(Error::Shape {
            what,
            expected: format!("[{len}]"),
            actual: dims.to_vec(),
        })
    }
}

/// Checks that log-probabilities have one row per row of `layout`.
pub(crate) fn check_layout(dims: [usize; 2], layout: bank_core::ViewLayout) -> Result<()> {
    let [rows, n] = dims;
    if rows == layout.rows() {
        return Ok(());
    }
    Err(Error::Shape {
        what: "log_probs",
        expected: format!(
            "[{} (B·K = {}·{}), N]",
            layout.rows(),
            layout.samples,
            layout.views
        ),
        actual: vec![rows, n],
    })
}
