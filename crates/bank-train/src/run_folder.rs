//! The run folder policy: never overwrite a run silently, resume only on request, and write
//! nothing into the folder before every check has passed.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::{Error, Result, checkpoint};

/// A run's folder: `config.toml`, `metrics.jsonl`, `training.png`, `summary.json`,
/// `checkpoints/`.
#[derive(Debug, Clone)]
pub struct RunFolder {
    dir: PathBuf,
}

impl RunFolder {
    /// Opens `dir` for a fresh run (it must not exist) or, with `resume`, for continuing from its
    /// newest checkpoint (returned; `None` when it has none). Creates nothing.
    ///
    /// # Errors
    /// [`Error::RunExists`] for an existing folder without `resume`; IO errors listing
    /// checkpoints.
    pub fn open(dir: &Path, resume: bool) -> Result<(Self, Option<PathBuf>)> {
        let folder = Self {
            dir: dir.to_path_buf(),
        };
        if !resume && dir.exists() {
            return Err(Error::RunExists {
                path: dir.to_path_buf(),
            });
        }
        let latest = if resume {
            checkpoint::latest(&folder.checkpoints())?
        } else {
            None
        };
        Ok((folder, latest))
    }

    /// Creates the folder and records the resolved configuration (atomically).
    ///
    /// # Errors
    /// IO errors naming the path.
    pub fn create(&self, config: &TrainConfig) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        bank_core::write_atomic(&self.dir.join("config.toml"), config.to_toml().as_bytes())?;
        Ok(())
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    /// `training.png`.
    pub fn plot(&self) -> PathBuf {
        self.dir.join("training.png")
    }

    /// `summary.json`.
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
}
