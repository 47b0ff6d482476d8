//! The crate's error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in `bank-data`. Every variant that concerns a file names it.
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
    /// Reading or writing a file failed at the operating-system level.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file exists but its content is not what its format requires.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file (for an archive member: `archive.tar.gz!member`).
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// A symbolic or hard link that cannot be followed: a loop, a dangling target, a target
    /// outside the archive, or any link when following links is off.
    #[error("{}: {reason}", path.display())]
    Link {
        /// The link (for an archive member: `archive.tar!member`).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A class present in one split (or name list) and missing from the other.
    #[error("class `{class}` of {}: {reason}", source_path.display())]
    ClassMismatch {
        /// The class name.
        class: String,
        /// The dataset whose classes were being mapped.
        source_path: PathBuf,
        /// Which side lacks it.
        reason: &'static str,
    },
    /// A dataset folder or archive holds no usable images, or a class folder is empty.
    #[error("{}: {reason}", path.display())]
    Empty {
        /// The folder or archive.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The decoded images would not fit in the configured memory limit.
    #[error(
        "{}: the decoded images need more than {limit} bytes (the memory limit); raise `memory_limit` or use a subset",
        path.display()
    )]
    MemoryLimit {
        /// The dataset source.
        path: PathBuf,
        /// The limit in bytes.
        limit: usize,
    },
    /// A download failed (network error, HTTP status, or a server that does not behave).
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The address.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A downloaded file does not have the published SHA-256 checksum.
    #[error("{}: SHA-256 is {actual}, expected {expected} (the partial file was removed; try again)", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The published checksum.
        expected: String,
        /// The checksum of what was downloaded.
        actual: String,
    },
    /// An error from `bank-core` (atomic writes).
    #[error(transparent)]
    Core(#[from] bank_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn empty(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Self::Empty {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }
}
