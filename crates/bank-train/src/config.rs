//! The run configuration: a TOML file, any field overridable as `section.field=value`.
//!
//! Every field has a default (the small CPU recipe's settings, on all training images:
//! `configs/cifar10_small_cpu.toml` sets `data.train_per_class = 500`), unknown fields are errors, and
//! [`TrainConfig::validate`] names the first field out of range.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::Arch;
use crate::{Error, Result};

/// Everything a run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Run name: results go to `<run.dir>/<name>`.
    pub name: String,
    /// Seed of the model initialisation, the shuffles, the augmentations and the bank.
    pub seed: u64,
    /// The data.
    pub data: DataConfig,
    /// The network.
    pub model: ModelSection,
    /// The optimiser and learning-rate schedule.
    pub optim: OptimConfig,
    /// Batch, views, epochs.
    pub train: TrainSection,
    /// Bank and losses.
    pub method: MethodConfig,
    /// Merging of near-duplicates (hard negative mining).
    pub merge: MergeConfig,
    /// kNN evaluation.
    pub eval: EvalSection,
    /// Checkpoints.
    pub checkpoint: CheckpointConfig,
}

/// Which dataset: the reader and the per-dataset defaults (image size, normalisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// CIFAR-10: the JPEG image-folder archive or the official binaries (32×32, 10 classes).
    Cifar10,
    /// CIFAR-100 official binaries (`cifar-100-binary/`), fine labels (32×32, 100 classes).
    Cifar100,
    /// STL-10 official binaries (`stl10_binary/`), 96×96, 10 classes, 100,000 unlabelled images.
    Stl10,
    /// Any image collection: a folder or `.tar`/`.tar.gz` (see [`FolderLayoutKind`]).
    ImageFolder,
}

impl DatasetKind {
    /// Side of the square views when `data.image_size` is not given (`None`: must be given).
    pub fn default_image_size(self) -> Option<usize> {
        match self {
            Self::Cifar10 | Self::Cifar100 => Some(32),
            Self::Stl10 => Some(96),
            Self::ImageFolder => None,
        }
    }

    /// Per-channel mean and std of the training images (`None`: computed from the data).
    pub fn default_normalization(self) -> Option<([f32; 3], [f32; 3])> {
        match self {
            Self::Cifar10 => Some(([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])),
            Self::Cifar100 => Some(([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])),
            Self::Stl10 => Some(([0.4467, 0.4398, 0.4066], [0.2603, 0.2566, 0.2713])),
            Self::ImageFolder => None,
        }
    }
}

/// How an image folder maps to splits and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FolderLayoutKind {
    /// `split` when `train/` exists, else `classes` when the root holds only folders, else
    /// `unlabeled`.
    Auto,
    /// `train/<class>/…` and (optionally) `test/<class>/…`.
    Split,
    /// `<class>/…` only: `test_fraction` of every class is held out (stratified, seeded).
    Classes,
    /// Images anywhere under the root, no labels: trains; label-based evaluation needs `eval_path`.
    Unlabeled,
}

/// Where decoded images live while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadMode {
    /// `memory` when the decoded training set fits `memory_budget_gib`, else `streaming`.
    Auto,
    /// Decode everything once into memory (fast epochs; optionally cached on disk).
    Memory,
    /// Decode per batch in the loader's threads (memory bounded whatever the dataset size).
    Streaming,
}

/// What to do with a file that is not a decodable image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadImage {
    /// Stop with an error naming the file.
    Error,
    /// Leave it out, log it, and count it in `summary.json`.
    Skip,
}

/// Where the images come from and how they are shown to the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset kind.
    pub dataset: DatasetKind,
    /// The folder or archive of the images (`image_folder`: required); for CIFAR and STL-10 the
    /// folder that holds them (else `--data`, `MEMBANK_DATA`, `~/.cache/membank/data`).
    pub path: Option<std::path::PathBuf>,
    /// Layout of an image folder.
    pub layout: FolderLayoutKind,
    /// Fraction of every class held out as the test split (layout `classes`).
    pub test_fraction: f64,
    /// A labelled folder or archive (`train/` + `test/`, or class folders) to evaluate a run
    /// whose training images are unlabelled.
    pub eval_path: Option<std::path::PathBuf>,
    /// STL-10: train on train + unlabeled (105,000 images); kNN uses the labelled train split.
    pub unlabeled: bool,
    /// Side of the square views the network sees (default: 32 CIFAR, 96 STL-10).
    pub image_size: Option<usize>,
    /// Evaluation: resize the shorter side to this, then centre-crop `image_size`
    /// (default: `image_size`; 256 for 224 is torchvision's ImageNet convention).
    pub eval_resize: Option<usize>,
    /// Input channels: 3 (RGB; grey images replicated) or 1 (luma).
    pub channels: usize,
    /// Per-channel mean for normalisation (default per dataset; image folders: computed on a
    /// sample of the training images and recorded in the run's `config.toml`).
    pub mean: Option<Vec<f32>>,
    /// Per-channel std, as `mean`.
    pub std: Option<Vec<f32>>,
    /// Training images per class (0: all).
    pub train_per_class: usize,
    /// Test images used for kNN (0: all).
    pub test_limit: usize,
    /// Undecodable files: `error` or `skip`.
    pub on_bad_image: BadImage,
    /// In memory, streaming, or chosen by `memory_budget_gib`.
    pub mode: LoadMode,
    /// Most GiB of decoded training images `auto` keeps in memory.
    pub memory_budget_gib: f64,
    /// Keep decoded datasets in an on-disk cache for the next start (memory mode).
    pub cache: bool,
    /// Classes to train on (unseen-categories protocol): names or index ranges such as
    /// `["0..5"]` (end excluded) or `["cat", "dog"]`; default every class.
    pub train_classes: Option<Vec<String>>,
    /// Classes to evaluate on (reference and queries), as `train_classes`; default the training
    /// classes.
    pub test_classes: Option<Vec<String>>,
}

/// The network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Backbone.
    pub arch: Arch,
    /// Embedding dimension D.
    pub dim: usize,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// NPID: multiply by `gamma` at each of `milestones`.
    Step,
    /// Cosine from `lr` to 0 over the run, after `warmup_epochs` of linear warm-up.
    Cosine,
}

/// SGD and the learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Base learning rate.
    pub lr: f64,
    /// SGD momentum (dampening 0, as PyTorch).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Schedule.
    pub schedule: LrSchedule,
    /// Epochs at which the step schedule multiplies the rate by `gamma`.
    pub milestones: Vec<usize>,
    /// Step factor.
    pub gamma: f64,
    /// Linear warm-up epochs (cosine schedule).
    pub warmup_epochs: usize,
}

/// Batch, views, epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Epochs.
    pub epochs: usize,
    /// Samples per batch B.
    pub batch_size: usize,
    /// Views per sample K (1: vanilla NPID).
    pub views: usize,
    /// Loader threads (0: all cores; at most [`MAX_THREADS`]).
    pub threads: usize,
    /// Devices of data-parallel training (`["cpu", "cpu"]`, `["cuda:0", "cuda:1"]`): one replica
    /// per entry, each training on its shard of every batch
    /// ([`parallel`](crate::parallel)). Empty: the one device the backend picks.
    pub devices: Vec<String>,
}

/// The instance loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Full softmax over the bank.
    Softmax,
    /// NPID's NCE approximation.
    Nce,
}

/// Bank and losses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodConfig {
    /// Temperature τ.
    pub temperature: f64,
    /// Bank momentum m (weight of the old row).
    pub bank_momentum: f64,
    /// Softmax or NCE.
    pub loss: LossKind,
    /// NCE noise samples per feature.
    pub nce_noise: usize,
    /// Consistency weight λ (needs K ≥ 2; 0 turns it off).
    pub consistency: f64,
    /// Bank storage precision.
    pub bank_precision: bank_core::Precision,
    /// How data-parallel replicas hold the bank (with one device the choice changes nothing).
    pub bank_sharding: BankSharding,
    /// Bank rows per block of the softmax step's similarities (0: all at once). A device then
    /// holds `[B·K, bank_block_rows]` similarities at a time instead of `[B·K, N]` (sharded:
    /// `N/W`), 4 bytes each, for one (two with consistency) more `[B·K, D] × [D, N]` product
    /// per step. The loss is the same to rounding.
    pub bank_block_rows: usize,
}

/// How the replicas of data-parallel training hold the bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BankSharding {
    /// Every replica holds every row and computes its shard's `[B_r·K, N]` similarities.
    #[default]
    Replicated,
    /// Replica r holds the r-th of W row ranges and computes the `[B·K, N/W]` similarities of
    /// the whole batch against them; the softmax's row maxima and sums are combined across
    /// replicas (PartialFC, Deng et al. 2021), so the loss stays the full softmax. No replica
    /// holds every row: evaluation and merge rounds search the shards on their devices, and
    /// checkpoints gather them into host memory.
    Sharded,
}

/// Gradual merging of near-duplicates: on/off and bank-mining's own schedule type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MergeConfig {
    /// Merge at all.
    pub enabled: bool,
    /// When and how much (`[merge.schedule]`: `start_epoch`, `every_epochs`, `fraction_start`,
    /// `fraction_step`, `fraction_cap`, `min_similarity`, `max_group_size` with 0 = unbounded,
    /// `groups` = `"accumulate"` or `"recompute"`).
    pub schedule: bank_mining::MergeSchedule,
}

/// kNN evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Evaluate against the bank every this many epochs (0: never during training).
    pub every_epochs: usize,
    /// Neighbours k.
    pub k: usize,
    /// At the end, also evaluate against train features recomputed without augmentation.
    pub recompute_at_end: bool,
    /// Images per forward pass when computing features.
    pub batch_size: usize,
    /// Protocols run at the end of training (`knn`, `linear`, `retrieval`, `all`); `knn` alone
    /// keeps the run as cheap as before.
    pub protocols: Vec<crate::protocols::Protocol>,
    /// The linear probe's recipe (`[eval.linear]`).
    pub linear: crate::protocols::LinearProbeConfig,
    /// k-means restarts of the clustering (NMI) protocol; the best inertia is kept.
    pub kmeans_restarts: usize,
}

/// Checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Write one every this many epochs (and always at the end).
    pub every_epochs: usize,
    /// Also write one inside an epoch every this many optimiser steps (0: only at epoch ends).
    pub every_steps: usize,
    /// Also write one inside an epoch when this many minutes have passed since the last one
    /// (0: off).
    pub every_minutes: f64,
    /// Keep the newest this many.
    pub keep: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            seed: 0,
            data: DataConfig::default(),
            model: ModelSection::default(),
            optim: OptimConfig::default(),
            train: TrainSection::default(),
            method: MethodConfig::default(),
            merge: MergeConfig::default(),
            eval: EvalSection::default(),
            checkpoint: CheckpointConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Cifar10,
            path: None,
            layout: FolderLayoutKind::Auto,
            test_fraction: 0.1,
            eval_path: None,
            unlabeled: false,
            image_size: None,
            eval_resize: None,
            channels: 3,
            mean: None,
            std: None,
            train_per_class: 0,
            test_limit: 0,
            on_bad_image: BadImage::Error,
            mode: LoadMode::Auto,
            memory_budget_gib: 8.0,
            cache: true,
            train_classes: None,
            test_classes: None,
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            arch: Arch::SmallCnn,
            dim: 128,
        }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 0.03,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            schedule: LrSchedule::Cosine,
            milestones: vec![],
            gamma: 0.1,
            warmup_epochs: 0,
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 8,
            batch_size: 128,
            views: 1,
            threads: 0,
            devices: Vec::new(),
        }
    }
}

impl Default for MethodConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            bank_momentum: 0.5,
            loss: LossKind::Softmax,
            nce_noise: 4096,
            consistency: 0.0,
            bank_precision: bank_core::Precision::F32,
            bank_sharding: BankSharding::Replicated,
            bank_block_rows: 0,
        }
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            every_epochs: 1,
            k: 200,
            recompute_at_end: true,
            batch_size: 256,
            protocols: vec![crate::protocols::Protocol::Knn],
            linear: crate::protocols::LinearProbeConfig::default(),
            kmeans_restarts: 5,
        }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_epochs: 1,
            every_steps: 0,
            every_minutes: 0.0,
            keep: 2,
        }
    }
}

/// The most loader threads `train.threads` may ask for: each is an OS thread with its own stack,
/// and far beyond the cores there are they only cost memory (100,000 overflowed a stack).
pub const MAX_THREADS: usize = 1024;

/// The largest `data.image_size`: a view of 16,384² pixels is 3 GiB in f32, beyond any GPU's
/// batch; a larger side overflowed the view buffer's size (a panic) where no memory check runs.
pub const MAX_IMAGE_SIZE: usize = 16_384;

impl TrainConfig {
    /// Reads `path` and applies `overrides` (`section.field=value`, value in TOML syntax; a bare
    /// word is taken as a string).
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable file; [`Error::Config`] for malformed TOML, an override
    /// not of the form `section.field=value`, an unknown field or a value of the wrong type
    /// (naming the file, or the first override that brought it in), or a value out of
    /// range (naming the field).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                text.parse().map_err(|e: toml::de::Error| Error::Config {
                    field: p.display().to_string(),
                    reason: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let file = table.clone();
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: Self = Self::deserialize_table(table).map_err(|e| Error::Config {
            field: Self::culprit(path, file, overrides),
            reason: in_words(&e),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn deserialize_table(table: toml::Table) -> std::result::Result<Self, toml::de::Error> {
        toml::Value::Table(table).try_into()
    }

    /// What to name when the file plus `overrides` does not deserialise: the first override after
    /// which it stops doing so (`override eval.every=1`), else the file.
    fn culprit(path: Option<&Path>, mut table: toml::Table, overrides: &[String]) -> String {
        let file = path.map_or_else(|| "overrides".into(), |p| p.display().to_string());
        if Self::deserialize_table(table.clone()).is_err() {
            return file;
        }
        for o in overrides {
            // Applied once already: cannot fail.
            let _ = apply_override(&mut table, o);
            if Self::deserialize_table(table.clone()).is_err() {
                return format!("override {o}");
            }
        }
        file
    }

    /// Parses a configuration written by [`TrainConfig::to_toml`] (a run's `config.toml`, a
    /// checkpoint's state) and validates it.
    ///
    /// # Errors
    /// [`Error::Config`] for unreadable TOML, unknown fields or invalid values.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e: toml::de::Error| Error::Config {
            field: "config".into(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML (what a run directory records).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config serialises")
    }

    /// Checks every value; the error names the first field out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, reason: &str| {
            Err(Error::Config {
                field: field.into(),
                reason: format!("{value}: {reason}"),
            })
        };
        let positive = |field: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                bad(field, v.to_string(), "must be a finite value > 0")
            }
        };
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            return bad("name", self.name.clone(), "must be a plain folder name");
        }
        self.data.validate()?;
        let min_size = self.model.arch.min_image_size();
        if let Ok(size) = self.data.image_size()
            && size < min_size
        {
            return bad(
                "data.image_size",
                size.to_string(),
                &format!(
                    "{:?} needs views of at least {min_size}×{min_size} pixels (its pooling \
                     leaves nothing of smaller ones)",
                    self.model.arch
                ),
            );
        }
        if let Ok(size) = self.data.image_size()
            && size > MAX_IMAGE_SIZE
        {
            return bad(
                "data.image_size",
                size.to_string(),
                &format!(
                    "must be at most {MAX_IMAGE_SIZE} (one view of that side is 3 GiB in f32)"
                ),
            );
        }
        if self.train.threads > MAX_THREADS {
            return bad(
                "train.threads",
                self.train.threads.to_string(),
                &format!("must be at most {MAX_THREADS} (0: one per core)"),
            );
        }
        if self.model.dim == 0 {
            return bad("model.dim", "0".into(), "must be at least 1");
        }
        positive("optim.lr", self.optim.lr)?;
        if !(0.0..1.0).contains(&self.optim.momentum) {
            return bad(
                "optim.momentum",
                self.optim.momentum.to_string(),
                "must be in [0, 1)",
            );
        }
        if !(self.optim.weight_decay >= 0.0 && self.optim.weight_decay.is_finite()) {
            return bad(
                "optim.weight_decay",
                self.optim.weight_decay.to_string(),
                "must be >= 0",
            );
        }
        positive("optim.gamma", self.optim.gamma)?;
        // Counts first: the checks below compare against them.
        for (field, v) in [
            ("train.epochs", self.train.epochs),
            ("train.batch_size", self.train.batch_size),
            ("train.views", self.train.views),
            ("eval.k", self.eval.k),
            ("eval.batch_size", self.eval.batch_size),
            ("eval.kmeans_restarts", self.eval.kmeans_restarts),
            ("eval.linear.epochs", self.eval.linear.epochs),
            ("eval.linear.batch_size", self.eval.linear.batch_size),
            ("checkpoint.every_epochs", self.checkpoint.every_epochs),
            ("checkpoint.keep", self.checkpoint.keep),
        ] {
            if v == 0 {
                return bad(field, "0".into(), "must be at least 1");
            }
        }
        // A setting of the other schedule would be ignored without a word.
        match self.optim.schedule {
            LrSchedule::Step if self.optim.warmup_epochs > 0 => {
                return bad(
                    "optim.warmup_epochs",
                    self.optim.warmup_epochs.to_string(),
                    "applies to optim.schedule = \"cosine\" only; the step schedule has no \
                     warm-up: set it to 0",
                );
            }
            LrSchedule::Cosine if !self.optim.milestones.is_empty() => {
                return bad(
                    "optim.milestones",
                    format!("{:?}", self.optim.milestones),
                    "apply to optim.schedule = \"step\" only; the cosine schedule has none: \
                     leave them out",
                );
            }
            LrSchedule::Cosine if self.optim.warmup_epochs >= self.train.epochs => {
                return bad(
                    "optim.warmup_epochs",
                    self.optim.warmup_epochs.to_string(),
                    &format!(
                        "must be less than train.epochs ({}): the whole run would be warm-up",
                        self.train.epochs
                    ),
                );
            }
            _ => {}
        }
        positive("eval.linear.lr", self.eval.linear.lr)?;
        let minutes = self.checkpoint.every_minutes;
        if !(minutes >= 0.0 && minutes.is_finite()) {
            return bad(
                "checkpoint.every_minutes",
                minutes.to_string(),
                "must be a finite value >= 0 (0: off)",
            );
        }
        positive("method.temperature", self.method.temperature)?;
        if !(0.0..1.0).contains(&self.method.bank_momentum) {
            return bad(
                "method.bank_momentum",
                self.method.bank_momentum.to_string(),
                "must be in [0, 1)",
            );
        }
        if !(self.method.consistency >= 0.0 && self.method.consistency.is_finite()) {
            return bad(
                "method.consistency",
                self.method.consistency.to_string(),
                "must be >= 0",
            );
        }
        if self.method.consistency > 0.0 && self.train.views < 2 {
            return bad(
                "method.consistency",
                self.method.consistency.to_string(),
                "consistency needs train.views >= 2",
            );
        }
        if self.method.loss == LossKind::Nce
            && self.method.bank_sharding == BankSharding::Sharded
            && self.train.devices.len() > 1
        {
            return bad(
                "method.bank_sharding",
                "\"sharded\"".into(),
                "NCE draws its noise rows from the whole bank: it needs method.bank_sharding = \
                 \"replicated\" (or method.loss = \"softmax\")",
            );
        }
        if self.method.loss == LossKind::Nce && self.method.bank_block_rows > 0 {
            return bad(
                "method.bank_block_rows",
                self.method.bank_block_rows.to_string(),
                "blocks split the full softmax's similarities; NCE never forms them: set it to \
                 0 (or method.loss = \"softmax\")",
            );
        }
        if self.method.loss == LossKind::Nce && self.method.nce_noise == 0 {
            return bad("method.nce_noise", "0".into(), "must be at least 1");
        }
        if self.method.loss == LossKind::Nce
            && (self.merge.enabled || self.method.consistency > 0.0)
        {
            return bad(
                "method.loss",
                "nce".into(),
                "consistency and merging need the full softmax",
            );
        }
        // Checked even with merging off: a NaN or out-of-range schedule is refused when written,
        // not at the resume that turns merging on (found by `cargo xtask fuzz`).
        self.merge.schedule.validate().map_err(|e| Error::Config {
            field: "merge.schedule".into(),
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

/// A field-type error of serde/toml in one line and without Rust's type names: "invalid value:
/// integer `-1`, expected usize\nin `train.epochs`\n" becomes "invalid value: integer `-1`,
/// expected a whole number >= 0, in `train.epochs`".
fn in_words(e: &toml::de::Error) -> String {
    let text = e.to_string();
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    [
        ("expected usize", "expected a whole number >= 0"),
        ("expected u64", "expected a whole number >= 0"),
        ("expected u32", "expected a whole number >= 0"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
    ]
    .iter()
    .fold(line, |l, (rust, words)| l.replace(rust, words))
}

/// An override split into its dotted key and its value: TOML syntax, a bare word (e.g.
/// `cosine`) taken as a string.
fn parse_override(assignment: &str) -> Result<(&str, toml::Value)> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| Error::Config {
        field: assignment.into(),
        reason: "an override is `section.field=value`".into(),
    })?;
    let raw = raw.trim();
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed `v = …`"),
        // Meant as a number, an array, a table or a quoted string, but not valid TOML: say why
        // (a number beyond 64 bits was read as the string "9999…" before).
        Err(e) if looks_like_toml(raw) => {
            let integer = raw
                .trim_start_matches(['+', '-'])
                .chars()
                .all(|c| c.is_ascii_digit() || c == '_');
            let why = if integer {
                format!("out of range for an integer (at most {})", i64::MAX)
            } else {
                e.message().trim_end().to_string()
            };
            return Err(Error::Config {
                field: format!("override {assignment}"),
                reason: format!("`{raw}` is not a valid value: {why}"),
            });
        }
        Err(_) => toml::Value::String(raw.to_string()),
    };
    Ok((key.trim(), value))
}

/// Whether an override's value is meant as TOML rather than a bare word: it starts like a
/// number, an array, a table or a quoted string.
fn looks_like_toml(raw: &str) -> bool {
    let digits = raw.trim_start_matches(['+', '-']);
    raw.starts_with(['[', '{', '"', '\''])
        || (digits.starts_with(|c: char| c.is_ascii_digit())
            && digits
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '_' | '.' | 'e' | 'E' | '+' | '-')))
}

/// Refuses overrides from different sources that set one field to two different values, e.g.
/// `--set name=a` with `--name b`, or `--set train.devices=…` with `--devices …`: otherwise the
/// later one would win without a word. Each override comes with its source (an override,
/// `--name`, `--devices`), named in the message. Within one source the later override wins
/// (`a=1 a=2` gives 2, as a script adds to its base overrides); the same value from two sources
/// is accepted.
///
/// # Errors
/// [`Error::Config`] naming the field and both overrides with their sources; an override not of
/// the form `section.field=value`.
pub fn check_override_conflicts(overrides: &[(&str, &str)]) -> Result<()> {
    let mut seen: BTreeMap<&str, (&str, &str, toml::Value)> = BTreeMap::new();
    for &(source, assignment) in overrides {
        let (key, value) = parse_override(assignment)?;
        match seen.get(key) {
            Some((first_source, _, _)) if *first_source == source => {
                seen.insert(key, (source, assignment, value));
            }
            Some((first_source, first, first_value)) if !same_value(first_value, &value) => {
                return Err(Error::Config {
                    field: key.into(),
                    reason: format!(
                        "set to two different values: `{}` ({first_source}) and `{}` \
                         ({source}); give it once",
                        first.trim(),
                        assignment.trim()
                    ),
                });
            }
            Some(_) => {}
            None => {
                seen.insert(key, (source, assignment, value));
            }
        }
    }
    Ok(())
}

/// The overrides as they take effect, one per field, sorted by field: the last of a field's
/// overrides wins (as [`TrainConfig::load`] applies them), a string is written bare, and a
/// `data.path` or `data.eval_path` that exists from the working folder is written absolute
/// (links resolved). Two spellings of one setting (`eval.k=5 eval.k=7` and `eval.k=7`;
/// `data.path=imgs` and `data.path="/home/u/imgs"`) give the same list, so `eval` files their
/// results in one place.
///
/// # Errors
/// [`Error::Config`] for an override not of the form `section.field=value` or with an invalid
/// value.
pub fn effective_overrides(overrides: &[String]) -> Result<Vec<String>> {
    let mut last: BTreeMap<String, toml::Value> = BTreeMap::new();
    for o in overrides {
        let (key, value) = parse_override(o)?;
        last.insert(key.to_string(), value);
    }
    Ok(last
        .into_iter()
        .map(|(key, value)| {
            let shown = match value {
                toml::Value::String(s)
                    if matches!(key.as_str(), "data.path" | "data.eval_path") =>
                {
                    std::fs::canonicalize(&s)
                        .map(|p| p.display().to_string())
                        .unwrap_or(s)
                }
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            format!("{key}={shown}")
        })
        .collect())
}

/// Equal TOML values, a whole number equal to the same float (`0` and `0.0`).
fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    let number = |v: &toml::Value| match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    };
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Sets `a.b.c = value` in `table`.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, value) = parse_override(assignment)?;
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        node = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::Config {
                field: key.into(),
                reason: format!("`{part}` is not a section"),
            })?;
    }
    node.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

impl DataConfig {
    /// Side of the square training views: `image_size`, else the dataset's default.
    ///
    /// # Errors
    /// [`Error::Config`] naming `data.image_size` when an image folder does not give it.
    pub fn image_size(&self) -> Result<usize> {
        self.image_size
            .or(self.dataset.default_image_size())
            .ok_or_else(|| Error::Config {
                field: "data.image_size".into(),
                reason: "required for image_folder: the side of the square views the network \
                         sees (e.g. 32 for small images, 64, 96, or 224 for ImageNet-sized photos)"
                    .into(),
            })
    }

    /// Shorter side before the evaluation centre crop: `eval_resize`, else the image size.
    ///
    /// # Errors
    /// As [`DataConfig::image_size`].
    pub fn eval_resize(&self) -> Result<usize> {
        Ok(self.eval_resize.unwrap_or(self.image_size()?))
    }

    /// Mean and std, when known before reading the data (given, or the dataset's default).
    pub fn known_normalization(&self) -> Option<([f32; 3], [f32; 3])> {
        let widen = |v: &[f32]| -> [f32; 3] {
            match v {
                [a] => [*a; 3],
                [a, b, c] => [*a, *b, *c],
                _ => [f32::NAN; 3],
            }
        };
        match (&self.mean, &self.std) {
            (Some(m), Some(s)) => Some((widen(m), widen(s))),
            _ => self.dataset.default_normalization().map(|(m, s)| {
                if self.channels == 1 {
                    // Grey input: the luma of the RGB statistics (ITU-R 601 weights); the std
                    // is the weighted mean of the channel stds (channels are highly correlated).
                    let luma = |v: [f32; 3]| [0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2]; 3];
                    (luma(m), luma(s))
                } else {
                    (m, s)
                }
            }),
        }
    }

    /// Checks the data section; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, reason: &str| {
            Err(Error::Config {
                field: format!("data.{field}"),
                reason: format!("{value}: {reason}"),
            })
        };
        for (field, path) in [("path", &self.path), ("eval_path", &self.eval_path)] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return bad(
                    field,
                    "\"\"".into(),
                    "empty: name a folder (or leave it out)",
                );
            }
        }
        if self.dataset == DatasetKind::ImageFolder && self.path.is_none() {
            return bad(
                "path",
                "none".into(),
                "image_folder needs the folder or .tar/.tar.gz archive of the images",
            );
        }
        if self.unlabeled && self.dataset != DatasetKind::Stl10 {
            return bad(
                "unlabeled",
                "true".into(),
                "only STL-10 has an unlabeled split (an unlabelled image folder uses layout = \"unlabeled\")",
            );
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return bad(
                "test_fraction",
                self.test_fraction.to_string(),
                "must be in (0, 1)",
            );
        }
        if let Some(0) = self.image_size {
            return bad("image_size", "0".into(), "must be at least 1");
        }
        if let (Some(r), Ok(size)) = (self.eval_resize, self.image_size())
            && r < size
        {
            return bad(
                "eval_resize",
                r.to_string(),
                &format!("must be at least image_size ({size}): the centre crop is taken from it"),
            );
        }
        if !matches!(self.channels, 1 | 3) {
            return bad("channels", self.channels.to_string(), "must be 1 or 3");
        }
        match (&self.mean, &self.std) {
            (None, None) => {}
            (Some(m), Some(s)) => {
                for (field, v) in [("mean", m), ("std", s)] {
                    if v.len() != self.channels && v.len() != 1 {
                        return bad(
                            field,
                            format!("{v:?}"),
                            &format!("needs 1 or `channels` ({}) values", self.channels),
                        );
                    }
                    if v.iter().any(|x| !x.is_finite()) {
                        return bad(field, format!("{v:?}"), "values must be finite");
                    }
                }
                if s.iter().any(|x| *x <= 0.0) {
                    return bad("std", format!("{s:?}"), "values must be > 0");
                }
            }
            (given, _) => {
                // Named by the field that was given: its partner is missing.
                let (field, missing) = if given.is_some() {
                    ("mean", "data.std")
                } else {
                    ("std", "data.mean")
                };
                return bad(
                    field,
                    "given alone".into(),
                    &format!("give {missing} too, or neither"),
                );
            }
        }
        if !(self.memory_budget_gib > 0.0 && self.memory_budget_gib.is_finite()) {
            return bad(
                "memory_budget_gib",
                self.memory_budget_gib.to_string(),
                "must be a finite value > 0",
            );
        }
        Ok(())
    }
}
