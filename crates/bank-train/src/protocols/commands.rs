//! What `bank-train eval` and `bank-train export` do with a run folder: load a checkpoint, and
//! export the features of a split (or the bank) with [`export`](super::export).

use std::path::{Path, PathBuf};

use bank_core::{Attachment, HostBank};
use bank_data::Dataset;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use super::export::{self, Array, Export, Named};
use super::features::compute_features;
use crate::config::TrainConfig;
use crate::data_source::TrainData;
use crate::model::EmbeddingNet;
use crate::resume::{CHANGEABLE_ON_EVAL, config_changes};
use crate::{Error, Result, checkpoint};

/// Which rows an export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The training images (one per bank row), features recomputed without augmentation.
    Train,
    /// The test images (the evaluation queries).
    Test,
    /// The bank rows themselves (no pooled features), with the merge groups when there are any.
    Bank,
}

/// A run's configuration and one of its checkpoints, loaded for inference.
pub struct LoadedRun<B: AutodiffBackend> {
    /// The run's `config.toml`.
    pub config: TrainConfig,
    /// The checkpoint folder read.
    pub checkpoint: PathBuf,
    /// The network, inference copy.
    pub model: EmbeddingNet<B::InnerBackend>,
    /// The bank, in host memory (no device holds it whole).
    pub bank: HostBank,
    /// The bank's attachments (merge groups and rounds).
    pub attachments: Vec<Attachment>,
}

/// Loads `run`'s config with `overrides` (`section.field=value`, only fields of
/// [`CHANGEABLE_ON_EVAL`]) and `checkpoint` (default: the newest under `run/checkpoints`), after
/// checking that the checkpoint was written under that config (as a resume would accept it): a
/// checkpoint of another run is refused.
///
/// # Errors
/// No such run folder, no checkpoint, a `checkpoint` outside `run/checkpoints/`, an unreadable
/// config or checkpoint; [`Error::Config`] naming an override outside [`CHANGEABLE_ON_EVAL`];
/// [`Error::CheckpointOfAnotherRun`] naming both when the checkpoint's config differs from the
/// run's in a field a resume may not change.
pub fn load_run<B: AutodiffBackend>(
    run: &Path,
    checkpoint: Option<&Path>,
    overrides: &[String],
    device: &B::Device,
) -> Result<LoadedRun<B>> {
    if !run.is_dir() {
        let why = if run.exists() {
            "not a folder"
        } else {
            "no such run folder"
        };
        return Err(Error::checkpoint(run, why));
    }
    if !run.join("config.toml").is_file() {
        let inside = match run.file_name().and_then(|n| n.to_str()) {
            Some("checkpoints") => " (a run's checkpoints folder: name the run, its parent)",
            _ if run.join("state.json").exists() && run.join("bank.safetensors").exists() => {
                " (a checkpoint: name its run with --run and it with --checkpoint)"
            }
            _ => "",
        };
        return Err(Error::checkpoint(
            run,
            format!("not a run folder: it holds no config.toml{inside}"),
        ));
    }
    let config = run_config(run, overrides)?;
    let ckpt = match checkpoint {
        Some(p) => {
            // A bare name (`epoch-0003`) is looked up among the run's checkpoints.
            let inside = run.join("checkpoints").join(p);
            let p = if !p.exists() && p.is_relative() && inside.is_dir() {
                inside.as_path()
            } else {
                p
            };
            check_checkpoint_of(run, p)?;
            p.to_path_buf()
        }
        None => checkpoint::latest(&run.join("checkpoints"))?
            .ok_or_else(|| Error::checkpoint(run, "no checkpoint to read"))?,
    };
    let ckpt_config = TrainConfig::from_toml(&checkpoint::read_state(&ckpt)?.config)
        .map_err(|e| Error::checkpoint(&ckpt, format!("its config: {e}")))?;
    let refused: Vec<String> = crate::resume::refused_changes(&ckpt_config, &config)
        .into_iter()
        .map(|c| {
            format!(
                "`{}` is {} in the checkpoint, {} in the run",
                c.field, c.old, c.new
            )
        })
        .collect();
    if !refused.is_empty() {
        return Err(Error::CheckpointOfAnotherRun {
            config: run.join("config.toml"),
            checkpoint: ckpt,
            reason: refused.join("; "),
        });
    }
    let model = crate::state::model_config(&config).init::<B>(device);
    let (model, _, bank, attachments) =
        checkpoint::load_host(&ckpt, model, crate::optimizer::<B>(&config), device)?;
    Ok(LoadedRun {
        config,
        checkpoint: ckpt,
        model: model.valid(),
        bank,
        attachments,
    })
}

/// `run`'s `config.toml` with `overrides`, each of which must set a field of
/// [`CHANGEABLE_ON_EVAL`].
fn run_config(run: &Path, overrides: &[String]) -> Result<TrainConfig> {
    let file = run.join("config.toml");
    let config = TrainConfig::load(Some(&file), overrides)?;
    if overrides.is_empty() {
        return Ok(config);
    }
    let recorded = TrainConfig::load(Some(&file), &[])?;
    crate::data_identity::check_moved(
        run,
        recorded.data.path.as_deref(),
        config.data.path.as_deref(),
    )?;
    match config_changes(&recorded, &config)
        .into_iter()
        .find(|c| !CHANGEABLE_ON_EVAL.contains(&c.field.as_str()))
    {
        None => Ok(config),
        Some(c) => Err(Error::Config {
            field: c.field.clone(),
            reason: format!(
                "{c}: eval and export may set only {} (the others describe the training)",
                CHANGEABLE_ON_EVAL.join(", ")
            ),
        }),
    }
}

/// Refuses a `--checkpoint` that is not one of `run`'s (in `run/checkpoints/`): its results
/// would be filed under a run that never had it.
fn check_checkpoint_of(run: &Path, checkpoint: &Path) -> Result<()> {
    if !checkpoint.is_dir() {
        return Err(Error::checkpoint(checkpoint, "no such checkpoint folder"));
    }
    let own = run.join("checkpoints").canonicalize().ok();
    let canonical = checkpoint.canonicalize().ok();
    if own.is_some() && canonical == own {
        return Err(Error::checkpoint(
            checkpoint,
            "the run's folder of checkpoints: name one of them (e.g. epoch-0001) or leave \
             --checkpoint out for the newest",
        ));
    }
    let parent = canonical.and_then(|c| c.parent().map(Path::to_path_buf));
    if own.is_some() && own == parent {
        return Ok(());
    }
    Err(Error::checkpoint(
        checkpoint,
        format!(
            "not a checkpoint of run {} (whose checkpoints are in {}); give --run the run folder \
             it belongs to",
            run.display(),
            run.join("checkpoints").display()
        ),
    ))
}

/// Labels of every item (−1 when unlabelled) and the sources of `dataset`.
fn labels_and_sources(dataset: &dyn Dataset) -> (Vec<i64>, Vec<String>) {
    (0..dataset.len())
        .map(|i| {
            (
                dataset.label(i).map_or(-1, i64::from),
                dataset.item_source(i),
            )
        })
        .unzip()
}

/// Writes the `split` features of `run` to `out` (see [`export`](super::export) for the
/// files); returns the files written.
///
/// # Errors
/// A split the data does not have (`test` without labelled evaluation images), a bank that does
/// not match the training set, unreadable images, unwritable files, an earlier export at `out`
/// (never overwritten).
pub fn export_run<B: AutodiffBackend>(
    run: &LoadedRun<B>,
    data: &TrainData,
    split: Split,
    out: &Path,
    device: &B::Device,
) -> Result<Vec<PathBuf>> {
    export::check_free(out)?;
    let dataset = match split {
        Split::Train | Split::Bank => &data.train,
        Split::Test => {
            &data
                .eval
                .as_ref()
                .ok_or_else(|| Error::Config {
                    field: "data".into(),
                    reason: "no test split: the run's data has no labelled evaluation images \
                             (name a labelled folder: --set data.eval_path=FOLDER)"
                        .into(),
                })?
                .queries
        }
    };
    let (labels, item_sources) = labels_and_sources(&**dataset);
    let n = dataset.len();
    let mut arrays = Vec::new();
    if split == Split::Bank {
        let (rows_n, d) = (run.bank.num_rows(), run.bank.dim());
        if rows_n != n {
            return Err(Error::checkpoint(
                &run.checkpoint,
                format!("the bank has {rows_n} rows but the training set {n} images"),
            ));
        }
        arrays.push(named(
            "embedding",
            vec![n, d],
            Array::F32(run.bank.rows_f32()),
        ));
        if let Some(groups) = run.attachments.iter().find(|a| a.name == "groups") {
            let g = groups.values.iter().map(|&v| i64::from(v)).collect();
            arrays.push(named("merge_groups", vec![n], Array::I64(g)));
        }
    } else {
        let batch = run.config.eval.batch_size;
        let f = compute_features(&run.model, dataset, &data.view, batch, device)?;
        arrays.push(named("embedding", vec![n, f.dim], Array::F32(f.embedding)));
        arrays.push(named(
            "pooled_features",
            vec![n, f.pooled_dim],
            Array::F32(f.pooled),
        ));
    }
    arrays.push(named("labels", vec![n], Array::I64(labels)));
    export::write(
        out,
        &Export {
            arrays,
            class_names: dataset.class_names().to_vec(),
            item_sources,
        },
    )
}

fn named(name: &str, shape: Vec<usize>, values: Array) -> Named {
    Named {
        name: name.into(),
        shape,
        values,
    }
}
