//! The run configuration: a TOML file, any field overridable as `section.field=value`.
//!
//! Every field has a default (the small CPU recipe), unknown fields are errors, and
//! [`TrainConfig::validate`] names the first field out of range.

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

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset: `cifar10` (the JPEG archive or the official binaries under the data folder).
    pub dataset: String,
    /// Training images per class (0: all).
    pub train_per_class: usize,
    /// Test images used for kNN (0: all).
    pub test_limit: usize,
    /// Keep decoded datasets in an on-disk cache for the next start.
    pub cache: bool,
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
    /// Loader threads (0: all cores).
    pub threads: usize,
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

/// Bank precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BankPrecision {
    /// f32 rows.
    F32,
    /// f16 rows (f32 arithmetic).
    F16,
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
    pub bank_precision: BankPrecision,
}

/// Gradual merging of near-duplicates (bank-mining's schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeConfig {
    /// Merge at all.
    pub enabled: bool,
    /// First epoch (from 0) that ends with a merging round.
    pub start_epoch: usize,
    /// Epochs between rounds.
    pub every_epochs: usize,
    /// Fraction of mutual-NN candidates merged in the first round.
    pub fraction_start: f64,
    /// Added per round.
    pub fraction_step: f64,
    /// Largest fraction.
    pub fraction_cap: f64,
    /// Pairs below this cosine similarity are never merged.
    pub min_similarity: f32,
    /// Largest group (0: unbounded).
    pub max_group_size: usize,
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
}

/// Checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Write one every this many epochs (and always at the end).
    pub every_epochs: usize,
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
            dataset: "cifar10".into(),
            train_per_class: 0,
            test_limit: 0,
            cache: true,
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
            bank_precision: BankPrecision::F32,
        }
    }
}

impl Default for MergeConfig {
    fn default() -> Self {
        let s = bank_mining::MergeSchedule::default();
        Self {
            enabled: false,
            start_epoch: s.start_epoch,
            every_epochs: s.every_epochs,
            fraction_start: s.fraction_start,
            fraction_step: s.fraction_step,
            fraction_cap: s.fraction_cap,
            min_similarity: s.min_similarity,
            max_group_size: s.max_group_size.unwrap_or(0),
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
        }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_epochs: 1,
            keep: 2,
        }
    }
}

impl MergeConfig {
    /// The bank-mining schedule.
    pub fn schedule(&self) -> bank_mining::MergeSchedule {
        bank_mining::MergeSchedule {
            start_epoch: self.start_epoch,
            every_epochs: self.every_epochs,
            fraction_start: self.fraction_start,
            fraction_step: self.fraction_step,
            fraction_cap: self.fraction_cap,
            min_similarity: self.min_similarity,
            max_group_size: (self.max_group_size > 0).then_some(self.max_group_size),
        }
    }
}

impl TrainConfig {
    /// Reads `path` and applies `overrides` (`section.field=value`, value in TOML syntax; a bare
    /// word is taken as a string).
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
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config {
                field: path.map_or("overrides".into(), |p| p.display().to_string()),
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
        if self.data.dataset != "cifar10" {
            return bad(
                "data.dataset",
                self.data.dataset.clone(),
                "supported: cifar10",
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
        for (field, v) in [
            ("train.epochs", self.train.epochs),
            ("train.batch_size", self.train.batch_size),
            ("train.views", self.train.views),
            ("eval.k", self.eval.k),
            ("eval.batch_size", self.eval.batch_size),
            ("checkpoint.every_epochs", self.checkpoint.every_epochs),
            ("checkpoint.keep", self.checkpoint.keep),
        ] {
            if v == 0 {
                return bad(field, "0".into(), "must be at least 1");
            }
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
        if self.merge.enabled {
            self.merge
                .schedule()
                .validate()
                .map_err(|e| Error::Config {
                    field: "merge".into(),
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }
}

/// Sets `a.b.c = value` in `table`.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| Error::Config {
        field: assignment.into(),
        reason: "an override is `section.field=value`".into(),
    })?;
    let key = key.trim();
    let raw = raw.trim();
    // Parse the value as TOML; a bare word (e.g. `cosine`) is a string.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
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
