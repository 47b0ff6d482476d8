//! From `[data]` to datasets: locating (or downloading) the images, choosing in-memory or
//! streaming, splitting, subsetting, and the view settings the network sees.
//!
//! Every dataset reaches the trainer as `Arc<dyn Dataset>`; nothing downstream knows which
//! reader made it.

pub mod classes;
mod concat;
mod folder;
mod official;
mod subset;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bank_data::{Dataset, Normalize};

pub use concat::Concat;
pub use official::{cache_home, data_root};

use crate::config::{DataConfig, DatasetKind, TrainConfig};
use crate::{Error, Result};

/// Images per sample drawn to compute an image folder's mean and std.
const STATS_SAMPLE: usize = 2_000;

/// How images become network input: the same for training views and evaluation views.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewSpec {
    /// Side of the square views (training crops and evaluation centre crops).
    pub image_size: usize,
    /// Shorter side before the evaluation centre crop.
    pub eval_resize: usize,
    /// Input channels (1 or 3).
    pub channels: usize,
    /// Per-channel normalisation (first entry only with 1 channel).
    pub normalize: Normalize,
}

/// The labelled sets kNN and the other label-based protocols use.
#[derive(Clone)]
pub struct EvalData {
    /// The labelled reference ("train") images whose classes vote.
    pub reference: Arc<dyn Dataset>,
    /// Rows of the bank that stand for `reference`'s images, in order, when they are training
    /// images (the cheap per-epoch monitor); `None`: reference features are recomputed.
    pub bank_rows: Option<Vec<usize>>,
    /// The labelled queries ("test"), classes numbered as `reference`'s.
    pub queries: Arc<dyn Dataset>,
}

/// Everything a run reads.
#[derive(Clone)]
pub struct TrainData {
    /// The training images: one bank row each, in order.
    pub train: Arc<dyn Dataset>,
    /// Labelled evaluation sets, when there are any.
    pub eval: Option<EvalData>,
    /// The view settings.
    pub view: ViewSpec,
    /// Lines for the user (layout detected, evaluation skipped and why, mode chosen, …).
    pub notes: Vec<String>,
    /// The data folder the sets were opened from ([`open`]'s `root`, absolute); `None` for sets
    /// given in hand. A run records it (`data_root.txt`), so that `eval`, `export` and
    /// `--resume` read the same data without `--data`.
    pub root: Option<PathBuf>,
}

impl TrainData {
    /// Train and evaluation sets already in hand (tests, custom pipelines): the reference is the
    /// training set itself (bank rows `0..N`) and `test` the queries.
    ///
    /// # Errors
    /// [`Error::Config`] naming `data.image_size` when the config cannot say the view size.
    pub fn from_sets(
        config: &TrainConfig,
        train: Arc<dyn Dataset>,
        test: Arc<dyn Dataset>,
    ) -> Result<Self> {
        let view = view_spec(&config.data, &*train)?;
        let eval = (train.labels().is_some() && test.labels().is_some()).then(|| EvalData {
            reference: Arc::clone(&train),
            bank_rows: Some((0..train.len()).collect()),
            queries: test,
        });
        Ok(Self {
            train,
            eval,
            view,
            notes: Vec::new(),
            root: None,
        })
    }

    /// `config` with what was resolved from the data written in (the normalisation computed for
    /// an image folder), as the run's `config.toml` records it.
    pub fn resolve(&self, config: &TrainConfig) -> TrainConfig {
        let mut resolved = config.clone();
        let c = self.view.channels;
        resolved.data.mean = Some(self.view.normalize.mean[..c].to_vec());
        resolved.data.std = Some(self.view.normalize.std[..c].to_vec());
        resolved
    }

    /// Files left out as undecodable (`data.on_bad_image = "skip"`) across the training set
    /// and the evaluation sets, each counted once: sets split from one scan (class folders
    /// with a held-out share; a reference that is the training set) report the same files.
    pub fn skipped_files(&self) -> usize {
        let mut files = std::collections::BTreeSet::new();
        let mut add = |set: &dyn Dataset| {
            files.extend(set.skipped().iter().map(|s| s.path.clone()));
        };
        add(&*self.train);
        if let Some(e) = &self.eval {
            add(&*e.reference);
            add(&*e.queries);
        }
        files.len()
    }
}

/// Opens the data `config` describes; `root` is the folder of the official datasets
/// (`--data`, else `MEMBANK_DATA`, else `~/.cache/membank/data`).
///
/// # Errors
/// Missing or unreadable data, bad images (with `on_bad_image = "error"`), class mismatches
/// between the splits, invalid settings: each names the file, class or field.
pub fn open(config: &DataConfig, root: &Path) -> Result<TrainData> {
    config.validate()?;
    // Absolute paths (links resolved) where they exist: item sources (exports, the dataset
    // cache shared by every run) then name files from anywhere, whoever built the cache.
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let root = &absolute(root);
    let resolved = with_paths_under(config, root);
    let (train, eval, mut notes) = match config.dataset {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::Stl10 => {
            // A folder named by `data.path` must exist, as one named by `--data` must: a
            // mistyped path would otherwise be created and a download started into it.
            let folder = match &resolved.path {
                Some(path) => existing(path, "data.path")?,
                None => root.clone(),
            };
            official::open(config, &folder)?
        }
        DatasetKind::ImageFolder => folder::open(&resolved)?,
    };
    // Another labelled set to evaluate on: required for unlabelled training images, and in
    // place of the training data's own test split otherwise (features recomputed).
    let eval = match &resolved.eval_path {
        Some(path) => {
            let own = if eval.is_some() || train.label(0).is_some() {
                " (instead of the training data's own evaluation sets)"
            } else {
                ""
            };
            let sets = folder::labelled_eval(&resolved, path, &mut notes)?;
            notes.push(format!(
                "evaluation: {} (data.eval_path){own}",
                path.display()
            ));
            Some(sets)
        }
        None => eval,
    };
    let (train, eval) = classes::select(
        train,
        eval,
        config.train_classes.as_deref(),
        config.test_classes.as_deref(),
        &mut notes,
    )?;
    if eval.is_none() {
        notes.push(
            "label-based evaluation skipped: the training images are unlabelled; set \
             data.eval_path to a labelled folder (train/ + test/, or class folders) to evaluate"
                .into(),
        );
    }
    let view = view_spec(config, &*train)?;
    Ok(TrainData {
        train,
        eval,
        view,
        notes,
        root: Some(root.clone()),
    })
}

/// `data.path` and `data.eval_path` when relative and not found from the working folder are
/// taken relative to the data folder (`--data`), so `data.path = "birds"` finds `<data>/birds`;
/// paths that exist are made absolute (links resolved).
fn with_paths_under(config: &DataConfig, root: &Path) -> DataConfig {
    let under = |p: &Option<PathBuf>| {
        p.as_ref().map(|p| {
            let found = if p.is_relative() && !p.exists() && root.join(p).exists() {
                root.join(p)
            } else {
                p.clone()
            };
            std::fs::canonicalize(&found).unwrap_or(found)
        })
    };
    DataConfig {
        path: under(&config.path),
        eval_path: under(&config.eval_path),
        ..config.clone()
    }
}

/// The view settings: sizes from the config, normalisation from the config, the dataset's
/// defaults, or measured on a seeded sample of the training images.
fn view_spec(config: &DataConfig, train: &dyn Dataset) -> Result<ViewSpec> {
    let normalize = match config.known_normalization() {
        Some((mean, std)) => Normalize { mean, std },
        None => bank_data::channel_stats(train, STATS_SAMPLE, 0, config.channels)?,
    };
    Ok(ViewSpec {
        image_size: config.image_size()?,
        eval_resize: config.eval_resize()?,
        channels: config.channels,
        normalize,
    })
}

/// The path of `config.path` or `root`, checked to exist.
pub(crate) fn existing(path: &Path, field: &str) -> Result<PathBuf> {
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        // Where a relative path was looked for (`with_paths_under`).
        let looked = if path.is_relative() {
            let cwd = std::env::current_dir().unwrap_or_default();
            format!(
                " (looked for from the working folder {} and from the data folder)",
                cwd.display()
            )
        } else {
            String::new()
        };
        // A run's data moved since: `eval`, `export` and `train --resume` take its new place.
        let moved = if field.starts_with("data.") {
            format!("; if a run's data has moved, name its new place with --set {field}=NEW")
        } else {
            String::new()
        };
        Err(Error::Config {
            field: field.into(),
            reason: format!("{}: no such file or folder{looked}{moved}", path.display()),
        })
    }
}
