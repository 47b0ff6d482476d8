//! What a resume may change: the requested configuration is compared with the one the run's
//! checkpoint was written under, field by field. Fields that only steer how long the run goes,
//! how often it evaluates or checkpoints, the learning rate from here on, or how the same images
//! are fed, or where the same images are now may change; any other change is refused, naming
//! the field with its old and new value, before anything in the run folder is written. That the
//! images are the same is checked by [`crate::data_identity`], not here.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::TrainConfig;
use crate::{Error, Result};

/// Fields (dotted paths) a resume may change; every other difference is refused.
pub const CHANGEABLE_ON_RESUME: &[&str] = &[
    "name",
    "train.epochs",
    "train.threads",
    "train.devices",
    "method.bank_sharding",
    "method.bank_block_rows",
    "optim.lr",
    "eval.every_epochs",
    "eval.k",
    "eval.recompute_at_end",
    "eval.batch_size",
    "eval.protocols",
    "eval.kmeans_restarts",
    "eval.linear.epochs",
    "eval.linear.batch_size",
    "eval.linear.lr",
    "eval.linear.weight_decay",
    "eval.linear.seed",
    "checkpoint.every_epochs",
    "checkpoint.every_steps",
    "checkpoint.every_minutes",
    "checkpoint.keep",
    "data.path",
    "data.eval_path",
    "data.test_limit",
    "data.mode",
    "data.memory_budget_gib",
    "data.cache",
    "data.on_bad_image",
];

/// Fields `eval` and `export` may set (`--set`): where the data is now, and how to evaluate.
/// `data.path` may point elsewhere (a moved folder) because the run's record of its training
/// images ([`crate::data_identity`]) refuses other images. Each is also in
/// [`CHANGEABLE_ON_RESUME`]: the checkpoint read is checked against the config with those.
pub const CHANGEABLE_ON_EVAL: &[&str] = &[
    "data.path",
    "data.eval_path",
    "data.test_limit",
    "data.mode",
    "data.memory_budget_gib",
    "data.cache",
    "data.on_bad_image",
    "method.bank_block_rows",
    "eval.k",
    "eval.batch_size",
    "eval.kmeans_restarts",
    "eval.linear.epochs",
    "eval.linear.batch_size",
    "eval.linear.lr",
    "eval.linear.weight_decay",
    "eval.linear.seed",
];

/// One field that differs between the run's configuration and the requested one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// Dotted path, e.g. `model.dim`.
    pub field: String,
    /// The run's value (`unset` when absent).
    pub old: String,
    /// The requested value (`unset` when absent).
    pub new: String,
}

impl fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` was {}, now {}", self.field, self.old, self.new)
    }
}

/// Every field whose value differs between `old` and `new`, in path order.
pub fn config_changes(old: &TrainConfig, new: &TrainConfig) -> Vec<ConfigChange> {
    let (a, b) = (flatten(old), flatten(new));
    let mut fields: Vec<&String> = a.keys().chain(b.keys()).collect();
    fields.sort();
    fields.dedup();
    let unset = || "unset".to_string();
    fields
        .into_iter()
        .filter(|f| a.get(*f) != b.get(*f))
        .map(|f| ConfigChange {
            field: f.clone(),
            old: a.get(f).cloned().unwrap_or_else(unset),
            new: b.get(f).cloned().unwrap_or_else(unset),
        })
        .collect()
}

/// Whether `field` may change on a resume.
pub fn changeable(field: &str) -> bool {
    CHANGEABLE_ON_RESUME.contains(&field)
}

/// The changes from `old` to `new` in fields outside [`CHANGEABLE_ON_RESUME`]: those that make
/// `new` another run than `old`.
pub fn refused_changes(old: &TrainConfig, new: &TrainConfig) -> Vec<ConfigChange> {
    config_changes(old, new)
        .into_iter()
        .filter(|c| !changeable(&c.field))
        .collect()
}

/// Refuses a resume of a run made with `old` under `new` when a field outside
/// [`CHANGEABLE_ON_RESUME`] differs.
///
/// # Errors
/// [`Error::ResumeMismatch`] listing every refused field with its old and new value.
pub fn check_resume(old: &TrainConfig, new: &TrainConfig) -> Result<()> {
    let refused = refused_changes(old, new);
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Error::ResumeMismatch { changes: refused })
    }
}

/// The configuration as `path → value` (TOML syntax), one entry per leaf field.
fn flatten(config: &TrainConfig) -> BTreeMap<String, String> {
    fields(config)
        .into_iter()
        .map(|(path, value)| (path, value.to_string()))
        .collect()
}

/// Every leaf field of `config` set (an unset optional field is absent) by its dotted path
/// (`merge.schedule.groups`), with its value.
pub fn fields(config: &TrainConfig) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    let value = toml::Value::try_from(config).expect("the config serialises");
    walk("", &value, &mut out);
    out
}

fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&path, v, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `load_run` compares the checkpoint's config with the run's plus `--set` by
    /// [`refused_changes`]: a field settable on eval but not on resume would make every such
    /// `eval --set` a "checkpoint of another run".
    #[test]
    fn every_field_eval_may_set_a_resume_may_change() {
        for field in CHANGEABLE_ON_EVAL {
            assert!(changeable(field), "{field}");
        }
    }
}
