//! The training loop of the method: K views per sample, every view classified against the bank
//! (full softmax or NCE), optional consistency and merged positives, one bank update per sample.
//!
//! [`train`] only orchestrates: the run folder ([`RunFolder`]), the state ([`TrainState`]), the
//! step ([`train_step`]), the merging round, the evaluation and the checkpoint each have their
//! own home.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bank_core::MemoryBank;
use bank_data::{AugmentConfig, Dataset, LoaderConfig, MultiViewLoader, Transform};
use bank_mining::{KnnConfig, nearest_neighbours};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::checkpoint::{self, EpochProgress};
use crate::config::{BankSharding, TrainConfig};
use crate::data_identity;
use crate::data_source::{TrainData, ViewSpec};
use crate::evaluate::KnnEvaluator;
use crate::feasibility::check_against_data;
use crate::knn::KnnAccuracy;
use crate::metrics::{self, EpochMetrics, KnnAccuracyRecord, MergeRecord, Summary};
use crate::parallel::{DataParallel, parse_devices};
use crate::protocols::in_training;
use crate::resume::check_resume;
use crate::run_folder::RunFolder;
use crate::schedule::learning_rate;
use crate::state::{TrainState, bank_shard};
use crate::step::train_step;
use crate::step_checkpoints::StepCheckpoints;
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
    /// An epoch of `steps` steps begins (0-based `epoch`) with `done` of them already taken: 0,
    /// or where the mid-epoch checkpoint a resume starts from left it.
    fn epoch_start(&mut self, _epoch: usize, _steps: usize, _done: usize) {}
    /// A step finished with this loss; `views_per_s` is the epoch's running rate.
    fn step(&mut self, _loss: f64, _views_per_s: f64) {}
    /// An epoch ended (evaluation included).
    fn epoch_end(&mut self, _metrics: &EpochMetrics) {}
    /// A free-form line (evaluation, checkpoint).
    fn note(&mut self, _line: &str) {}
    /// Whether the user asked the run to stop (the binary: Ctrl-C). Asked after every step and
    /// at every epoch's end; when `true` the run writes a checkpoint where it is and ends with
    /// [`Error::Interrupted`], so `--resume` continues from that very step.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// The backend's seed for batch `batch` of `epoch`: the generator is reseeded before every step,
/// so a run resumed at any checkpoint (epoch end or mid-epoch) draws the same NCE noise as an
/// uninterrupted one.
fn step_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    let mix = |x: u64| {
        // splitmix64's finaliser: neighbouring (epoch, batch) give unrelated seeds.
        let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    };
    mix(seed ^ mix((epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ mix(batch as u64)))
}

/// The training-view transform of `view`.
fn augment(view: &ViewSpec) -> Transform {
    Transform::Augment(
        AugmentConfig::new(view.image_size)
            .with_channels(view.channels)
            .with_normalize(view.normalize),
    )
}

/// The loader of the training views of a run: `config`'s batch size, K, seed and threads, the
/// NPID augmentation at `data`'s view size.
///
/// # Errors
/// Invalid loader settings.
pub fn training_loader(
    config: &TrainConfig,
    data: &TrainData,
) -> Result<MultiViewLoader<dyn Dataset>> {
    Ok(MultiViewLoader::new(
        Arc::clone(&data.train),
        LoaderConfig::new(config.train.batch_size, config.train.views)
            .with_seed(config.seed)
            .with_threads(config.train.threads),
        augment(&data.view),
    )?)
}

/// Trains `config` on `data`; writes the run folder and returns the summary. Generic over the
/// backend: the same loop runs on ndarray, flex, wgpu and cuda.
///
/// The run seeds the backend's generator at its start and before every step. burn keeps one
/// generator per backend for the whole process, so the run is reproducible only while nothing
/// else in the process draws from the same backend (another training, `Tensor::random`, a model's
/// initialisation): train one run per backend at a time in a process.
///
/// # Errors
/// Invalid settings, an existing run folder without `resume`, unreadable data or checkpoints,
/// and a non-finite loss ([`Error::NonFiniteLoss`]).
pub fn train<B: AutodiffBackend>(
    config: &TrainConfig,
    data: &TrainData,
    options: &RunOptions,
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<Summary> {
    let config = &data.resolve(config);
    config.validate()?;
    check_against_data(config, data)?;
    let devices = parse_devices::<B>(&config.train.devices, device)?;
    let device = &devices[0];
    let (mut folder, resume_from) = RunFolder::open(&options.run_dir, options.resume)?;
    if let Some(ckpt) = &resume_from {
        let run_config = checkpoint::read_state(ckpt)?.config;
        let run_config = TrainConfig::from_toml(&run_config)
            .map_err(|e| Error::checkpoint(ckpt.join("state.json"), e.to_string()))?;
        check_resume(&run_config, config)?;
        let paths = (run_config.data.path.as_deref(), config.data.path.as_deref());
        data_identity::check_moved(folder.dir(), paths.0, paths.1)?;
        data_identity::check(folder.dir(), &*data.train)?;
    }
    let evaluator = data
        .eval
        .as_ref()
        .map(|e| KnnEvaluator::new(e, &data.view, config))
        .transpose()?;
    let mut state = TrainState::<B>::new(config, data.train.len(), device)?;
    if let Some(ckpt) = &resume_from {
        state = state.restore(ckpt, device)?;
        if state.epochs_done > config.train.epochs {
            // Nothing to train, and the folder would record fewer epochs than its metrics hold.
            return Err(Error::Config {
                field: "train.epochs".into(),
                reason: format!(
                    "{}: the run has done {} epochs ({}); a resume may add epochs, not remove \
                     them",
                    config.train.epochs,
                    state.epochs_done,
                    ckpt.display()
                ),
            });
        }
        progress.note(&format!(
            "resumed from {} ({} epochs and {} batches done, step {})",
            ckpt.display(),
            state.epochs_done,
            state.progress.batches,
            state.step
        ));
    } else if options.resume {
        // Named: a mistyped --name resumes nothing and starts a new run elsewhere.
        let dir = options.run_dir.display();
        progress.note(&if options.run_dir.exists() {
            format!("{dir}: no checkpoint to resume from; starting from scratch")
        } else {
            format!("{dir} does not exist: nothing to resume; starting a new run there")
        });
    }
    if resume_from.is_some() && state.epochs_done == config.train.epochs {
        // Nothing left to train: `config.toml` keeps describing the training that was done (an
        // override given now, say `optim.lr`, was never used); the folder is locked already.
        progress.note(&format!(
            "all {} epochs done: nothing to train; evaluating again (config.toml kept)",
            state.epochs_done
        ));
    } else {
        folder.create(config, data)?;
    }
    let mut parallel = start_parallel(&mut state, config, &devices, resume_from.as_deref())?;
    if let Some(p) = &parallel {
        progress.note(&format!(
            "data-parallel: {} replicas ({:?}){}",
            p.world(),
            config.train.devices,
            if p.is_sharded() {
                ", the bank split by rows"
            } else {
                ""
            }
        ));
    }
    for line in &data.notes {
        progress.note(line);
    }
    let mut history = metrics::read_and_truncate(&folder.metrics(), state.epochs_done)?;
    let loader = training_loader(config, data)?;
    let train_labels = data.train.labels();
    let mut step_checkpoints = StepCheckpoints::new(&config.checkpoint);
    for epoch in state.epochs_done..config.train.epochs {
        let (next, mut m) = run_epoch(
            state,
            config,
            &loader,
            epoch,
            (&folder, &mut step_checkpoints),
            (device, parallel.as_mut()),
            progress,
        )?;
        state = next;
        let labels = train_labels.as_deref();
        m.merge = merge_round(
            &mut state,
            (config, epoch),
            labels,
            parallel.as_ref(),
            device,
        )?;
        if m.merge.is_some() {
            if let Some(p) = &parallel {
                p.share_groups(&state)?;
            }
            in_training::merges_picture(folder.dir(), &*data.train, state.merger.as_mut());
        }
        if should_evaluate(config, epoch)
            && let Some(e) = &evaluator
        {
            // Against the bank only where the reference images are bank rows: reported as
            // "bank", a kNN against recomputed features would be mislabelled.
            if e.has_bank_rows() {
                m.knn_bank = Some(knn_against_bank(e, &state, parallel.as_ref(), device)?.into());
            } else {
                let model = state.model.valid();
                m.knn_recomputed = Some(e.against_recomputed(&model, device)?.into());
            }
        }
        metrics::append(&folder.metrics(), &m)?;
        history.push(m.clone());
        plot::draw(&folder.plot(), &history);
        progress.epoch_end(&m);
        state.epochs_done = epoch + 1;
        state.progress = EpochProgress::default();
        let every = config.checkpoint.every_epochs;
        let stop = progress.stop_requested();
        if stop || (epoch + 1) % every == 0 || epoch + 1 == config.train.epochs {
            let path = save_checkpoint(&mut state, (&folder, config), parallel.as_ref())?;
            step_checkpoints.saved();
            progress.note(&format!("checkpoint {}", path.display()));
            if stop {
                return Err(Error::Interrupted { checkpoint: path });
            }
        }
    }
    stop_if_requested(&folder, progress)?;
    let knn_recomputed = match &evaluator {
        Some(e) if config.eval.recompute_at_end => {
            progress.note("kNN against recomputed reference features");
            Some(e.against_recomputed(&state.model.valid(), device)?.into())
        }
        _ => None,
    };
    let knn_bank = history.iter().rev().find_map(|m| m.knn_bank);
    let knn = (knn_bank, knn_recomputed);
    in_training::end_of_run(config, data, &state, (folder.dir(), knn), device, progress)?;
    stop_if_requested(&folder, progress)?;
    let summary = summarise::<B>(config, data, &history, knn_recomputed, device);
    metrics::write_summary(&folder.summary(), &summary)?;
    Ok(summary)
}

/// After the last epoch (its checkpoint written): [`Error::Interrupted`] when a stop was asked
/// for, so the evaluations at the end are not run, or their summary not written, after it.
fn stop_if_requested(folder: &RunFolder, progress: &dyn Progress) -> Result<()> {
    if !progress.stop_requested() {
        return Ok(());
    }
    match checkpoint::latest(&folder.checkpoints())? {
        Some(checkpoint) => Err(Error::Interrupted { checkpoint }),
        None => Ok(()),
    }
}

/// Whether `epoch` (from 0) ends with an evaluation.
fn should_evaluate(config: &TrainConfig, epoch: usize) -> bool {
    let every = config.eval.every_epochs;
    every > 0 && ((epoch + 1).is_multiple_of(every) || epoch + 1 == config.train.epochs)
}

/// One pass over the training set, from the batch `state.progress` says (0, or where a
/// mid-epoch checkpoint left it), with checkpoints inside the epoch when they are due; the
/// metrics come back without evaluation or merging. Steps run on `device`, or on every replica
/// of `parallel` when training is data-parallel.
fn run_epoch<B: AutodiffBackend>(
    mut state: TrainState<B>,
    config: &TrainConfig,
    loader: &MultiViewLoader<dyn Dataset>,
    epoch: usize,
    (folder, step_checkpoints): (&RunFolder, &mut StepCheckpoints),
    (device, mut parallel): (&B::Device, Option<&mut DataParallel<B>>),
    progress: &mut dyn Progress,
) -> Result<(TrainState<B>, EpochMetrics)> {
    let steps = loader.batches_per_epoch();
    let start = state.progress.clone();
    progress.epoch_start(epoch, steps, start.batches);
    let started = Instant::now();
    for (i, host) in (start.batches..).zip(loader.epoch_from(epoch as u64, start.batches)) {
        B::seed(device, step_seed(config.seed, epoch, i));
        let position = epoch as f64 + i as f64 / steps as f64;
        let lr = learning_rate(&config.optim, config.train.epochs, position);
        let host = host?;
        let rows = host.layout.rows();
        let tau = config.method.temperature;
        let value;
        (state, value) = match parallel.as_deref_mut() {
            Some(p) => p.step(state, &host, lr, tau)?,
            None => train_step(state, host.into_device::<B>(device), lr, tau, device)?,
        };
        if !value.is_finite() {
            return Err(Error::NonFiniteLoss {
                epoch: epoch + 1,
                step: state.step,
                value,
            });
        }
        let p = &mut state.progress;
        p.batches = i + 1;
        p.loss_sum += value;
        p.views += rows;
        p.seconds = start.seconds + started.elapsed().as_secs_f64();
        p.lr = lr;
        progress.step(value, p.views as f64 / p.seconds);
        let stop = progress.stop_requested();
        if i + 1 < steps && (stop || step_checkpoints.due(state.step)) {
            let path = save_checkpoint(&mut state, (folder, config), parallel.as_deref())?;
            step_checkpoints.saved();
            progress.note(&format!("checkpoint {}", path.display()));
            if stop {
                return Err(Error::Interrupted { checkpoint: path });
            }
        }
    }
    let p = &state.progress;
    let metrics = EpochMetrics {
        epoch: epoch + 1,
        step: state.step,
        loss: p.loss_sum / steps.max(1) as f64,
        lr: p.lr,
        views_per_s: p.views as f64 / p.seconds,
        images_per_s: p.views as f64 / p.seconds / config.train.views as f64,
        train_seconds: p.seconds,
        knn_bank: None,
        knn_recomputed: None,
        merge: None,
    };
    Ok((state, metrics))
}

/// Starts data-parallel training when `devices` has more than one device: replicas of `state`
/// (whose model is drawn now, right after seeding the generator as the first step does: it is
/// shared by every thread of the process, so no other draw may come between). A sharded bank's
/// other rows come from checkpoint `resumed`, or are drawn as a fresh run draws them.
fn start_parallel<B: AutodiffBackend>(
    state: &mut TrainState<B>,
    config: &TrainConfig,
    devices: &[B::Device],
    resumed: Option<&Path>,
) -> Result<Option<DataParallel<B>>> {
    if devices.len() < 2 {
        return Ok(None);
    }
    let (epoch, batch) = (state.epochs_done, state.progress.batches);
    B::seed(&devices[0], step_seed(config.seed, epoch, batch));
    let n = state.bank_rows.total;
    let sharding = config.method.bank_sharding;
    // Read once: every replica's rows are cut from it.
    let saved = match resumed {
        Some(ckpt) if sharding == BankSharding::Sharded => Some(checkpoint::load_host_bank(ckpt)?),
        _ => None,
    };
    let rows_of = |rows, device: &B::Device| bank_shard((config, n), saved.as_ref(), rows, device);
    DataParallel::start(state, devices, sharding, &rows_of).map(Some)
}

/// Writes a checkpoint of `state` in the run folder; a sharded bank is gathered from the
/// replicas into host memory first.
fn save_checkpoint<B: AutodiffBackend>(
    state: &mut TrainState<B>,
    (folder, config): (&RunFolder, &TrainConfig),
    parallel: Option<&DataParallel<B>>,
) -> Result<PathBuf> {
    match parallel.filter(|p| p.is_sharded()) {
        Some(p) => {
            let bank = p.gather_bank(state)?;
            state.save_with_bank(&folder.checkpoints(), config, &bank)
        }
        None => state.save(&folder.checkpoints(), config),
    }
}

/// kNN of the evaluation queries against the bank rows: one device's bank, or the shards of a
/// sharded bank searched on their devices.
fn knn_against_bank<B: AutodiffBackend>(
    evaluator: &KnnEvaluator,
    state: &TrainState<B>,
    parallel: Option<&DataParallel<B>>,
    device: &B::Device,
) -> Result<KnnAccuracy> {
    let model = state.model.valid();
    match parallel.filter(|p| p.is_sharded()) {
        Some(p) => {
            let search = |queries: Tensor<B::InnerBackend, 2>, k| {
                p.query_neighbours(state, queries.into_data(), k)
            };
            let rows_of = |rows: &[usize]| Ok(p.gather_bank(state)?.select(rows)?);
            evaluator.against_bank_with(&model, (state.bank_rows.total, search, rows_of), device)
        }
        None => evaluator.against_bank(&model, &state.bank.inner(), device),
    }
}

/// The merging round that ends `epoch`, when the schedule has one.
fn merge_round<B: AutodiffBackend>(
    state: &mut TrainState<B>,
    (config, epoch): (&TrainConfig, usize),
    labels: Option<&[u32]>,
    parallel: Option<&DataParallel<B>>,
    device: &B::Device,
) -> Result<Option<MergeRecord>> {
    if state.merger.is_none() || !config.merge.schedule.is_round(epoch) {
        return Ok(None);
    }
    let neighbours = match parallel.filter(|p| p.is_sharded()) {
        Some(p) => p.nearest_neighbours(state, 1)?,
        None => nearest_neighbours(&state.bank.inner(), &KnnConfig::new(1))?,
    };
    let Some(merger) = state.merger.as_mut() else {
        return Ok(None);
    };
    let report = merger.round(&neighbours, labels)?;
    state.groups = Some(merger.group_tensor::<B>(device));
    Ok(Some(MergeRecord::from(&report)))
}

/// The mean of `values`, 0 when there are none.
fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// The run's summary from its history: the throughput is the mean over every epoch of the run,
/// those of earlier processes included (a resumed run, or a finished one resumed only to be
/// evaluated again).
fn summarise<B: AutodiffBackend>(
    config: &TrainConfig,
    data: &TrainData,
    history: &[EpochMetrics],
    knn_recomputed: Option<KnnAccuracyRecord>,
    device: &B::Device,
) -> Summary {
    let rates: Vec<f64> = history.iter().map(EpochMetrics::views_rate).collect();
    Summary {
        name: config.name.clone(),
        backend: B::name(device),
        epochs: config.train.epochs,
        train_images: data.train.len(),
        test_images: data.eval.as_ref().map_or(0, |e| e.queries.len()),
        final_loss: history.last().map_or(f64::NAN, |m| m.loss),
        knn_bank: history.iter().rev().find_map(|m| m.knn_bank),
        knn_recomputed,
        views_per_s: mean(&rates),
        images_per_s: mean(&rates) / config.train.views as f64,
        skipped_images: data.skipped_files(),
    }
}

/// The run folder for `config` under `runs_root`.
pub fn run_dir(runs_root: &Path, config: &TrainConfig) -> PathBuf {
    runs_root.join(&config.name)
}

/// Reads the bank of the newest checkpoint of a run (for `bank-train eval`).
///
/// # Errors
/// No checkpoint, or an unreadable bank file.
pub fn latest_bank<B: Backend>(run_dir: &Path, device: &B::Device) -> Result<MemoryBank<B>> {
    let dir = run_dir.join("checkpoints");
    let ckpt =
        checkpoint::latest(&dir)?.ok_or_else(|| Error::checkpoint(&dir, "no checkpoint found"))?;
    Ok(MemoryBank::load(ckpt.join("bank.safetensors"), device)?)
}
