//! The training loop of the method: K views per sample, every view classified against the bank
//! (full softmax or NCE), optional consistency and merged positives, one bank update per sample.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bank_core::{MemoryBank, MemoryBankConfig, Precision};
use bank_data::{AugmentConfig, Dataset, ImageDataset, LoaderConfig, MultiViewLoader, Transform};
use bank_losses::{
    BankLogProbs, ConsistencyLoss, NceConfig, NceLoss, merged_positive_loss, multi_view_loss,
    nce_similarities,
};
use bank_mining::{KnnConfig, Merger, nearest_neighbours};
use burn::module::AutodiffModule;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig, decay::WeightDecayConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::checkpoint::{self, RunState};
use crate::config::{BankPrecision, LossKind, TrainConfig};
use crate::evaluate::KnnEvaluator;
use crate::metrics::{self, EpochMetrics, KnnAccuracyRecord, MergeRecord, Summary};
use crate::model::{EmbeddingNet, ModelConfig};
use crate::schedule::learning_rate;
use crate::{Error, Result, plot};

/// Where a run lives and how it starts.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder (`runs/<name>`).
    pub run_dir: PathBuf,
    /// Continue from the newest checkpoint in `run_dir`.
    pub resume: bool,
}

/// Receives progress; the binary draws progress bars, tests use [`NoProgress`].
pub trait Progress {
    /// An epoch of `steps` steps begins.
    fn epoch_start(&mut self, _epoch: usize, _steps: usize) {}
    /// A step finished with this loss; `images_per_s` is the epoch's running rate.
    fn step(&mut self, _loss: f64, _images_per_s: f64) {}
    /// An epoch ended (evaluation included).
    fn epoch_end(&mut self, _metrics: &EpochMetrics) {}
    /// A free-form line (evaluation, checkpoint).
    fn note(&mut self, _line: &str) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// The SGD optimiser of the run (PyTorch semantics: dampening 0, coupled weight decay).
pub fn optimizer<B: AutodiffBackend>(config: &TrainConfig) -> impl Optimizer<EmbeddingNet<B>, B> {
    let o = &config.optim;
    SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(o.momentum)
                .with_dampening(0.0)
                .with_nesterov(o.nesterov),
        ))
        .with_weight_decay(
            (o.weight_decay > 0.0).then(|| WeightDecayConfig::new(o.weight_decay as f32)),
        )
        .init::<B, EmbeddingNet<B>>()
}

/// Mixes the run seed with the epoch (the backend's generator is reseeded every epoch, so a
/// resumed run draws the same NCE noise as an uninterrupted one).
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Trains `config` on `train`, evaluating on `test`; writes the run folder and returns the
/// summary. Generic over the backend: the same loop runs on ndarray, flex, wgpu and cuda.
pub fn train<B: AutodiffBackend>(
    config: &TrainConfig,
    train: ImageDataset,
    test: ImageDataset,
    options: &RunOptions,
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<Summary> {
    config.validate()?;
    let run_dir = &options.run_dir;
    let ckpt_dir = run_dir.join("checkpoints");
    let resume_from = if options.resume {
        checkpoint::latest(&ckpt_dir)?
    } else if run_dir.exists() {
        return Err(Error::RunExists {
            path: run_dir.clone(),
        });
    } else {
        None
    };
    fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    bank_core::write_atomic(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;

    let n = train.len();
    let train_labels: Vec<u32> = train.labels().map(<[u32]>::to_vec).unwrap_or_default();
    let side = train.image(0).height;
    let train = Arc::new(train);
    let test = Arc::new(test);
    let evaluator = KnnEvaluator::new(&train, &test, config);
    let (epochs, views) = (config.train.epochs, config.train.views);
    let tau = config.method.temperature;

    B::seed(device, config.seed);
    let mut model = ModelConfig::new(config.model.arch, config.model.dim).init::<B>(device);
    let mut optim = optimizer::<B>(config);
    let precision = match config.method.bank_precision {
        BankPrecision::F32 => Precision::F32,
        BankPrecision::F16 => Precision::F16,
    };
    let mut bank = MemoryBankConfig::new(n, config.model.dim)
        .with_momentum(config.method.bank_momentum)
        .with_precision(precision)
        .with_seed(config.seed)
        .init::<B>(device)?;
    let schedule = config.merge.schedule();
    let mut merger = config
        .merge
        .enabled
        .then(|| Merger::new(n, schedule.clone()))
        .transpose()?;
    let mut nce: Option<NceLoss<B>> = (config.method.loss == LossKind::Nce)
        .then(|| {
            NceConfig::new(n)
                .with_noise(config.method.nce_noise)
                .with_temperature(tau)
                .init::<B>()
        })
        .transpose()?;
    let consistency = (config.method.consistency > 0.0)
        .then(|| ConsistencyLoss::new(config.method.consistency))
        .transpose()?;

    let (mut start_epoch, mut step) = (0, 0);
    if let Some(ckpt) = &resume_from {
        let state = checkpoint::read_state(ckpt)?;
        let (m, o, b, attachments) = checkpoint::load(ckpt, model, optim, device)?;
        (model, optim, bank) = (m, o, b);
        if bank.num_rows() != n {
            return Err(Error::checkpoint(
                ckpt,
                format!(
                    "bank has {} rows but the dataset {n} images",
                    bank.num_rows()
                ),
            ));
        }
        if merger.is_some() {
            merger = Some(Merger::from_attachments(n, schedule.clone(), &attachments)?);
        }
        if let (Some(nce), Some(z)) = (nce.as_mut(), state.nce_z) {
            nce.set_z(z, device)?;
        }
        (start_epoch, step) = (state.epochs_done, state.step);
        progress.note(&format!(
            "resumed from {} (epoch {start_epoch}, step {step})",
            ckpt.display()
        ));
    } else if options.resume {
        progress.note("no checkpoint to resume from; starting from scratch");
    }
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut history = metrics::read_and_truncate(&metrics_path, start_epoch)?;

    let augment = Transform::Augment(AugmentConfig::new(side));
    let loader = MultiViewLoader::new(
        Arc::clone(&train),
        LoaderConfig::new(config.train.batch_size, views)
            .with_seed(config.seed)
            .with_threads(config.train.threads),
        augment,
    )?;
    let steps_per_epoch = loader.batches_per_epoch();
    let mut groups = merger.as_mut().map(|m| m.group_tensor::<B>(device));
    let mut rates = Vec::new();

    for epoch in start_epoch..epochs {
        B::seed(device, epoch_seed(config.seed, epoch));
        progress.epoch_start(epoch, steps_per_epoch);
        let started = Instant::now();
        let (mut loss_sum, mut seen, mut lr) = (0.0, 0usize, config.optim.lr);
        for (i, host) in loader.epoch(epoch as u64).enumerate() {
            lr = learning_rate(
                &config.optim,
                epochs,
                epoch as f64 + i as f64 / steps_per_epoch as f64,
            );
            let batch = host.into_device::<B>(device);
            let features = model.forward(batch.images);
            let loss = match nce.as_mut() {
                Some(nce) => {
                    let noise = nce.sample_noise(batch.layout.rows(), device);
                    let (pos, neg) =
                        nce_similarities(&bank, features.clone(), batch.indices.clone(), noise)?;
                    nce.forward(pos, neg)?
                }
                None => {
                    let lp = BankLogProbs::from_features(&bank, features.clone(), tau)?;
                    let mut loss = match &groups {
                        Some(g) => merged_positive_loss(&lp, batch.indices.clone(), g.clone())?,
                        None => multi_view_loss(&lp, batch.indices.clone(), batch.layout)?,
                    };
                    if let Some(c) = &consistency {
                        loss = loss + c.forward(&lp, batch.layout)?;
                    }
                    loss
                }
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            bank.update(batch.indices, features.detach(), views)?;
            // The one host read per step: the scalar loss, for logging and the NaN check.
            let value = loss.into_scalar().elem::<f64>();
            step += 1;
            if !value.is_finite() {
                return Err(Error::NonFiniteLoss { epoch, step, value });
            }
            loss_sum += value;
            seen += batch.layout.rows();
            progress.step(value, seen as f64 / started.elapsed().as_secs_f64());
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let images_per_s = seen as f64 / train_seconds;
        rates.push(images_per_s);

        let merge = match merger.as_mut() {
            Some(m) if schedule.is_round(epoch) => {
                let neighbours = nearest_neighbours(&bank.inner(), &KnnConfig::new(1))?;
                let labels = (!train_labels.is_empty()).then_some(train_labels.as_slice());
                let report = m.round(&neighbours, labels)?;
                groups = Some(m.group_tensor::<B>(device));
                Some(MergeRecord::from(&report))
            }
            _ => None,
        };

        let evaluate = config.eval.every_epochs > 0
            && ((epoch + 1) % config.eval.every_epochs == 0 || epoch + 1 == epochs);
        let knn_bank = match &evaluator {
            Some(e) if evaluate => Some(KnnAccuracyRecord::from(e.against_bank(
                &model.valid(),
                &bank.inner(),
                device,
            )?)),
            _ => None,
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            step,
            loss: loss_sum / steps_per_epoch.max(1) as f64,
            lr,
            images_per_s,
            train_seconds,
            knn_bank,
            merge,
        };
        metrics::append(&metrics_path, &m)?;
        history.push(m.clone());
        if knn_bank.is_some() {
            plot::draw(&run_dir.join("training.png"), &history);
        }
        progress.epoch_end(&m);

        if (epoch + 1) % config.checkpoint.every_epochs == 0 || epoch + 1 == epochs {
            let attachments = merger.as_mut().map(|m| m.attachments()).unwrap_or_default();
            let state = RunState {
                epochs_done: epoch + 1,
                step,
                seed: config.seed,
                nce_z: nce.as_ref().and_then(|n| n.z()),
                config: config.to_toml(),
            };
            let path = checkpoint::save(
                &ckpt_dir,
                &model,
                &optim,
                &bank,
                &attachments,
                &state,
                config.checkpoint.keep,
            )?;
            progress.note(&format!("checkpoint {}", path.display()));
        }
    }

    let knn_recomputed = match &evaluator {
        Some(e) if config.eval.recompute_at_end => {
            progress.note("kNN against recomputed train features");
            Some(KnnAccuracyRecord::from(
                e.against_recomputed(&model.valid(), device)?,
            ))
        }
        _ => None,
    };
    let last = history.last();
    let summary = Summary {
        name: config.name.clone(),
        backend: B::name(device),
        epochs,
        train_images: n,
        test_images: test.len(),
        final_loss: last.map_or(f64::NAN, |m| m.loss),
        knn_bank: history.iter().rev().find_map(|m| m.knn_bank),
        knn_recomputed,
        images_per_s: if rates.is_empty() {
            0.0
        } else {
            rates.iter().sum::<f64>() / rates.len() as f64
        },
    };
    metrics::write_summary(&run_dir.join("summary.json"), &summary)?;
    Ok(summary)
}

/// The run folder for `config` under `runs_root`.
pub fn run_dir(runs_root: &Path, config: &TrainConfig) -> PathBuf {
    runs_root.join(&config.name)
}

/// Reads the bank of the newest checkpoint of a run (for `bank-train eval`).
pub fn latest_bank<B: Backend>(run_dir: &Path, device: &B::Device) -> Result<MemoryBank<B>> {
    let dir = run_dir.join("checkpoints");
    let ckpt =
        checkpoint::latest(&dir)?.ok_or_else(|| Error::checkpoint(&dir, "no checkpoint found"))?;
    Ok(MemoryBank::load(ckpt.join("bank.safetensors"), device)?)
}
