//! Settings checked against the dataset before training starts: a setting that cannot work with
//! the images at hand is refused, naming it, instead of failing after an epoch of work.

use crate::config::{BankSharding, TrainConfig};
use crate::data_source::TrainData;
use crate::{Error, Result};

/// Checks `config` against the sizes of `data`.
///
/// - `merge.enabled` needs at least 2 training images (each merge joins an image with its
///   nearest other image);
/// - `eval.k` may not exceed the labelled reference images kNN votes with, when kNN runs;
/// - the training set may not be empty;
/// - a sharded bank (`method.bank_sharding = "sharded"`) needs at least one row per device
///   (`train.devices`): each replica holds a non-empty range of rows.
///
/// A `train.batch_size` larger than the training set is not refused: the loader serves one
/// batch of every image per epoch, which works with every loss and model here.
///
/// # Errors
/// [`Error::Config`] naming the setting, its value and the dataset size it conflicts with.
pub fn check_against_data(config: &TrainConfig, data: &TrainData) -> Result<()> {
    let n = data.train.len();
    let refuse = |field: &str, reason: String| {
        Err(Error::Config {
            field: field.into(),
            reason,
        })
    };
    if n == 0 {
        return refuse("data", "the training set has no images".into());
    }
    if config.merge.enabled && n < 2 {
        return refuse(
            "merge.enabled",
            format!(
                "true: merging joins each image with its nearest other image and needs at least \
                 2 training images; the data has {n}"
            ),
        );
    }
    let devices = config.train.devices.len();
    if config.method.bank_sharding == BankSharding::Sharded && devices > n {
        return refuse(
            "method.bank_sharding",
            format!(
                "\"sharded\" splits the bank's {n} rows (one per training image) across the \
                 {devices} devices of train.devices, and each device needs at least one row: use \
                 at most {n} devices or \"replicated\""
            ),
        );
    }
    let evaluates = config.eval.every_epochs > 0 || config.eval.recompute_at_end;
    if let Some(eval) = data.eval.as_ref().filter(|_| evaluates) {
        let references = eval.reference.len();
        if config.eval.k > references {
            return refuse(
                "eval.k",
                format!(
                    "{}: larger than the {references} labelled reference images kNN votes \
                     with; set eval.k to at most {references}",
                    config.eval.k
                ),
            );
        }
    }
    Ok(())
}

/// Checks a trained bank (`rows × dim`, read from `bank_file`) against the config and the data
/// it is evaluated with: one row per training image and `model.dim` columns. What
/// `bank-train eval` checks before any kNN.
///
/// # Errors
/// [`Error::Checkpoint`] naming `bank_file`, the bank's shape and what the data or config say.
pub fn check_bank_against_data(
    bank_file: &std::path::Path,
    (rows, dim): (usize, usize),
    config: &TrainConfig,
    data: &TrainData,
) -> Result<()> {
    let n = data.train.len();
    if rows != n {
        return Err(Error::checkpoint(
            bank_file,
            format!(
                "the bank has {rows} rows but the data has {n} training images: this is not the \
                 data the run trained on (check --data, data.path and data.train_per_class)"
            ),
        ));
    }
    if dim != config.model.dim {
        return Err(Error::checkpoint(
            bank_file,
            format!(
                "the bank has {dim} columns but the run's model.dim is {}",
                config.model.dim
            ),
        ));
    }
    if let Some(bad) = data
        .eval
        .as_ref()
        .and_then(|e| e.bank_rows.as_ref())
        .and_then(|r| r.iter().find(|&&r| r >= rows))
    {
        return Err(Error::checkpoint(
            bank_file,
            format!("the evaluation needs bank row {bad}, the bank has {rows}"),
        ));
    }
    Ok(())
}

/// A lower bound on the bytes one training step holds (f32): the `train.batch_size ×
/// train.views` input views of `data.image_size` and the backbone's first activation for each
/// ([`Arch::first_activation`](crate::model::Arch::first_activation)), or the same for an
/// evaluation batch (`eval.batch_size` views, centre crops of the same size) when larger. Every layer
/// after the first and the backward pass come on top, so a step needs more than this.
///
/// # Errors
/// [`Error::Config`] naming `data.image_size` when the dataset gives no default.
pub fn step_memory_lower_bound(config: &TrainConfig) -> Result<u64> {
    let per_view = |size: usize| {
        let (c, side) = config.model.arch.first_activation(size);
        (config.data.channels * size * size + c * side * side) as u64 * 4
    };
    let views = (config.train.batch_size * config.train.views).max(config.eval.batch_size);
    Ok(views as u64 * per_view(config.data.image_size()?))
}

/// Refuses a configuration whose step cannot fit in `memory_bytes` (the machine's memory, for a
/// backend that computes in it) by [`step_memory_lower_bound`]: a `data.image_size` of 100,000
/// was killed by the kernel's out-of-memory killer, without a message, after the data
/// had been read.
///
/// # Errors
/// [`Error::Config`] naming `data.image_size`, the bound and the memory.
pub fn check_step_memory(config: &TrainConfig, memory_bytes: u64) -> Result<()> {
    let need = step_memory_lower_bound(config)?;
    if need <= memory_bytes {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(Error::Config {
        field: "data.image_size".into(),
        reason: format!(
            "{}: a step at this size needs more than {:.1} GiB (the views of a batch and {:?}'s \
             first layer for each), and this machine has {:.1} GiB; use smaller views, or a \
             smaller train.batch_size or eval.batch_size",
            config.data.image_size()?,
            gib(need),
            config.model.arch,
            gib(memory_bytes)
        ),
    })
}
