//! The crate's error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in `bank-train`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; `field` names it (`optim.lr`) or the file.
    #[error("config `{field}`: {reason}")]
    Config {
        /// The field or file.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// File-system error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint or run folder is missing, damaged or inconsistent.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "loss is {value} at epoch {epoch}, step {step}; stopped (checkpoints already written are \
         kept: resume from the newest with a lower optim.lr, or start anew if there is none)"
    )]
    NonFiniteLoss {
        /// Epoch (from 1, as every message and `metrics.jsonl` count).
        epoch: usize,
        /// Global step.
        step: usize,
        /// The loss value.
        value: f64,
    },
    /// A parameter, running statistic or bank value became NaN or infinite; nothing was saved.
    #[error(
        "NaN or infinite values in the {part} at epoch {epoch}, step {step}; stopped without \
         saving (checkpoints already written are kept: resume from the newest with a lower \
         optim.lr, or start anew if there is none)"
    )]
    NonFiniteState {
        /// Epoch (from 1).
        epoch: usize,
        /// Global step.
        step: usize,
        /// Which part: `model parameters`, `bank rows`, `NCE normaliser Z`.
        part: &'static str,
    },
    /// The network maps evaluation images to NaN or infinite features although its parameters
    /// are finite (weights or running statistics grown too large: a diverged run).
    #[error(
        "the network's {what} of the evaluation images are NaN or infinite (in inference mode, \
         with BatchNorm's running statistics): it has diverged though its parameters are finite; \
         nothing was evaluated (train again, or resume from an earlier checkpoint, with a lower \
         optim.lr)"
    )]
    NonFiniteFeatures {
        /// `embeddings` or `pooled features`.
        what: &'static str,
    },
    /// `--resume` asked for settings that the run's checkpoint cannot continue with.
    #[error(
        "cannot resume with a changed configuration: {}; these fields may change on a resume: {}",
        changes.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        crate::resume::CHANGEABLE_ON_RESUME.join(", ")
    )]
    ResumeMismatch {
        /// Every refused change.
        changes: Vec<crate::resume::ConfigChange>,
    },
    /// A checkpoint read for evaluation or export that was not written under the run's config.
    #[error("{} does not match checkpoint {}: {reason}", config.display(), checkpoint.display())]
    CheckpointOfAnotherRun {
        /// The run's `config.toml`.
        config: PathBuf,
        /// The checkpoint folder.
        checkpoint: PathBuf,
        /// The fields that differ.
        reason: String,
    },
    /// The data given to a resume, `eval` or `export` is not the data the run trained on
    /// ([`crate::data_identity`]).
    #[error(
        "{}: the data differs from what this run trained on: {reason}; point --data (or \
         data.path) at the run's data, or train a new run",
        run.display()
    )]
    DataChanged {
        /// The run folder.
        run: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The run stopped because the user asked it to ([`crate::Progress::stop_requested`]),
    /// after writing a checkpoint where it was.
    #[error(
        "stopped on request; checkpoint {} written: to continue from there, run the same \
         command again (`train` with --resume; `ablation` resumes by itself)",
        checkpoint.display()
    )]
    Interrupted {
        /// The checkpoint written at the stop.
        checkpoint: PathBuf,
    },
    /// Another process is training the same run folder (it holds the folder's lock).
    #[error(
        "{}: another process is training this run (wait for it to end, or stop it, then \
         resume)",
        path.display()
    )]
    RunBusy {
        /// The run folder.
        path: PathBuf,
    },
    /// The run folder exists and resuming was not asked for.
    #[error(
        "{} already exists; pass --resume to continue it, or choose another --name",
        path.display()
    )]
    RunExists {
        /// The run folder.
        path: PathBuf,
    },
    /// A report or picture (`ablation.png`, ...) could not be drawn.
    #[error("{}: {reason}", path.display())]
    Report {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A collective operation between data-parallel replicas failed (burn-collective).
    #[error("data-parallel {op} (replica {rank}): {reason}")]
    Collective {
        /// The operation: register, all-reduce, finish.
        op: &'static str,
        /// The replica's rank.
        rank: usize,
        /// burn-collective's error.
        reason: String,
    },
    /// A data-parallel replica stopped (its thread ended or panicked).
    #[error("data-parallel replica {rank} stopped: {reason}")]
    Replica {
        /// The replica's rank.
        rank: usize,
        /// What is known of why.
        reason: String,
    },
    /// From bank-core.
    #[error(transparent)]
    Core(#[from] bank_core::Error),
    /// From bank-losses.
    #[error(transparent)]
    Losses(#[from] bank_losses::Error),
    /// From bank-mining.
    #[error(transparent)]
    Mining(#[from] bank_mining::Error),
    /// From bank-data.
    #[error(transparent)]
    Data(#[from] bank_data::Error),
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

    pub(crate) fn checkpoint(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }
}
