//! Settings checked against the dataset before training starts: a setting that cannot work with
//! the images at hand is refused, naming it, instead of failing after an epoch of work.

use crate::config::{BankSharding, LossKind, TrainConfig};
use crate::data_source::TrainData;
use crate::protocols::Protocol;
use crate::{Error, Result};

/// Checks `config` against the sizes of `data`.
///
/// - `merge.enabled` needs at least 2 training images (each merge joins an image with its
///   nearest other image);
/// - `eval.k` may not exceed the labelled reference images kNN votes with, when kNN runs;
/// - the training set may not be empty;
/// - NCE (`method.loss = "nce"`) may not draw more noise rows (`method.nce_noise`) than the bank
///   has;
/// - the retrieval protocol at the end (`eval.protocols`) needs at least 2 test images;
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
    if config.method.loss == LossKind::Nce && config.method.nce_noise > n {
        return refuse(
            "method.nce_noise",
            format!(
                "{}: more noise rows per view than the bank's {n} rows (one per training image); \
                 NPID draws 4,096 of 1.28 million; use at most {n}",
                config.method.nce_noise
            ),
        );
    }
    if let Some(eval) = data.eval.as_ref()
        && Protocol::Retrieval.wanted(&config.eval.protocols)
        && eval.queries.len() < 2
    {
        return refuse(
            "eval.protocols",
            format!(
                "retrieval ranks each test image's neighbours among the other test images and \
                 needs at least 2; the data has {} (raise data.test_limit, or leave retrieval out)",
                eval.queries.len()
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

/// A lower bound on the bytes one training step holds (f32), as its two parts: the views and the
/// embedding head.
///
/// - views: the `train.batch_size × train.views` input views of `data.image_size` and the
///   backbone's first activation for each ([`Arch::first_activation`](crate::model::Arch::first_activation)),
///   or the same for an evaluation batch (`eval.batch_size` views, centre crops of the same
///   size) when larger;
/// - head: the linear projection from the backbone's features to `model.dim`, its weights, their
///   gradient and SGD's momentum.
///
/// Every other layer, the bank and the backward pass come on top, so a step needs more than
/// this. Sizes beyond 64 bits saturate at `u64::MAX`.
///
/// # Errors
/// [`Error::Config`] naming `data.image_size` when the dataset gives no default.
pub fn step_memory_parts(config: &TrainConfig) -> Result<(u64, u64)> {
    let size = config.data.image_size()? as u128;
    let (c, side) = config
        .model
        .arch
        .first_activation(config.data.image_size()?);
    let per_view = (config.data.channels as u128)
        .saturating_mul(size.saturating_mul(size))
        .saturating_add((c as u128).saturating_mul((side as u128).saturating_mul(side as u128)))
        .saturating_mul(4);
    let views = (config.train.batch_size as u128)
        .saturating_mul(config.train.views as u128)
        .max(config.eval.batch_size as u128);
    let head = (config.model.arch.features() as u128)
        .saturating_mul(config.model.dim as u128)
        .saturating_mul(3 * 4);
    let narrow = |b: u128| u64::try_from(b).unwrap_or(u64::MAX);
    Ok((narrow(views.saturating_mul(per_view)), narrow(head)))
}

/// The sum of [`step_memory_parts`].
///
/// # Errors
/// As [`step_memory_parts`].
pub fn step_memory_lower_bound(config: &TrainConfig) -> Result<u64> {
    let (views, head) = step_memory_parts(config)?;
    Ok(views.saturating_add(head))
}

/// Refuses a configuration whose step cannot fit in `memory_bytes` (the machine's memory, for a
/// backend that computes in it) by [`step_memory_lower_bound`]: a `data.image_size` of 100,000
/// was killed by the kernel's out-of-memory killer, without a message, after the data
/// had been read, and a `model.dim` of 10⁸ grew past 11 GiB.
///
/// # Errors
/// [`Error::Config`] naming `data.image_size` (or `model.dim`, when the head is the larger
/// part), the bound and the memory.
pub fn check_step_memory(config: &TrainConfig, memory_bytes: u64) -> Result<()> {
    let (views, head) = step_memory_parts(config)?;
    let need = views.saturating_add(head);
    if need <= memory_bytes {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let (field, value, what, smaller) = if head > views {
        (
            "model.dim",
            config.model.dim,
            format!(
                "the embedding head alone ({} × {} weights, their gradient and momentum)",
                config.model.arch.features(),
                config.model.dim
            ),
            "a smaller model.dim (128 in the papers)",
        )
    } else {
        (
            "data.image_size",
            config.data.image_size()?,
            format!(
                "the views of a batch and {:?}'s first layer for each",
                config.model.arch
            ),
            "smaller views, or a smaller train.batch_size or eval.batch_size",
        )
    };
    Err(Error::Config {
        field: field.into(),
        reason: format!(
            "{value}: a step needs more than {:.1} GiB ({what}), and this machine has {:.1} GiB; \
             use {smaller}",
            gib(need),
            gib(memory_bytes)
        ),
    })
}
