//! The run folder policy: never overwrite a run silently, resume only on request, and write
//! nothing into the folder before every check has passed.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::data_identity::DataIdentity;
use crate::data_source::TrainData;
use crate::{Error, Result, checkpoint};

/// A run's folder: `config.toml`, `metrics.jsonl`, `training.png`, `summary.json`,
/// `checkpoints/`.
///
/// From [`create`](Self::create) on, the folder is locked (an exclusive lock on its `.lock`
/// file, released when the `RunFolder` is dropped or the process ends, however it ends): a
/// second training of the same run, e.g. a `--resume` started while the run still goes, is
/// refused instead of writing every epoch twice.
#[derive(Debug)]
pub struct RunFolder {
    dir: PathBuf,
    lock: Option<fs::File>,
}

/// The lock file of a run folder.
pub const LOCK_FILE: &str = ".lock";

/// The file in a run folder that names the data folder (`--data`) the run read its data from.
pub const DATA_ROOT_FILE: &str = "data_root.txt";

/// The data folder a run recorded ([`DATA_ROOT_FILE`]) when it is still a folder; `None` when
/// the run recorded none (sets given in hand, a run from before stop 39) or it is gone.
pub fn recorded_data_root(run_dir: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(run_dir.join(DATA_ROOT_FILE)).ok()?;
    let root = PathBuf::from(text.trim_end_matches('\n'));
    root.is_dir().then_some(root)
}

impl RunFolder {
    /// Opens `dir` for a fresh run (it must not exist) or, with `resume`, for continuing from its
    /// newest checkpoint (returned; `None` when it has none). Locks an existing folder (see the
    /// type's docs); creates nothing else.
    ///
    /// # Errors
    /// [`Error::RunExists`] for an existing folder without `resume`; [`Error::RunBusy`] when
    /// another process trains it; IO errors listing checkpoints; a damaged `metrics.jsonl`
    /// (see [`metrics::read_lines`](crate::metrics::read_lines)).
    pub fn open(dir: &Path, resume: bool) -> Result<(Self, Option<PathBuf>)> {
        let mut folder = Self {
            dir: dir.to_path_buf(),
            lock: None,
        };
        if !resume && dir.exists() {
            return Err(Error::RunExists {
                path: dir.to_path_buf(),
            });
        }
        if dir.is_dir() {
            // Before its checkpoints are read: a run another process trains is refused first.
            folder.lock()?;
        } else {
            check_can_create(dir)?;
        }
        let latest = if resume {
            // A damaged history is refused now, before the data is read, not after.
            crate::metrics::read_lines(&folder.metrics())?;
            if folder.lock.is_some() {
                checkpoint::remove_abandoned(&folder.checkpoints());
            }
            checkpoint::latest(&folder.checkpoints())?
        } else {
            None
        };
        Ok((folder, latest))
    }

    /// Creates the folder, locks it, and records the resolved configuration, the training
    /// images ([`DATA_IDENTITY_FILE`](crate::data_identity::DATA_IDENTITY_FILE)) and, when
    /// known, the data folder they were read from ([`DATA_ROOT_FILE`]), each atomically.
    ///
    /// # Errors
    /// [`Error::RunBusy`] when another process holds the folder's lock; IO errors naming the
    /// path.
    pub fn create(&mut self, config: &TrainConfig, data: &TrainData) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        self.lock()?;
        bank_core::write_atomic(&self.dir.join("config.toml"), config.to_toml().as_bytes())?;
        DataIdentity::of(&*data.train).record(&self.dir)?;
        if let Some(root) = data.root.as_deref().and_then(Path::to_str) {
            bank_core::write_atomic(
                &self.dir.join(DATA_ROOT_FILE),
                format!("{root}\n").as_bytes(),
            )?;
        }
        Ok(())
    }

    fn lock(&mut self) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let path = self.dir.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::RunBusy {
                    path: self.dir.clone(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        self.lock = Some(file);
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

/// Whether the folder `dir` (not there yet) can be made: the nearest existing folder above it
/// must be a folder this process can write in. Checked by making and removing an empty file
/// there, before the data is read: a `--runs` that is a file or a read-only folder failed only
/// after the dataset had been decoded.
fn check_can_create(dir: &Path) -> Result<()> {
    let base = dir
        .ancestors()
        .skip(1)
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .find(|a| a.exists())
        .unwrap_or(Path::new("."));
    let refuse = |kind: std::io::ErrorKind, why: String| {
        Err(Error::io(
            base,
            std::io::Error::new(
                kind,
                format!(
                    "the run folder {} cannot be made here: {why}",
                    dir.display()
                ),
            ),
        ))
    };
    if !base.is_dir() {
        return refuse(std::io::ErrorKind::NotADirectory, "not a folder".into());
    }
    let probe = base.join(format!(".membank-probe-{}", std::process::id()));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => refuse(e.kind(), e.to_string()),
    }
}
