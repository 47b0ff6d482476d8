//! Everything a run changes as it trains, built from the config or restored from a checkpoint.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bank_core::{HostBank, MemoryBank, MemoryBankConfig};
use bank_losses::{ConsistencyLoss, NceConfig, NceLoss, ShardColumns};
use bank_mining::Merger;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{SgdConfig, decay::WeightDecayConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::checkpoint::{self, EpochProgress, RunState};
use crate::config::{BankSharding, LossKind, TrainConfig};
use crate::finite::non_finite_part;
use crate::model::{EmbeddingNet, ModelConfig};
use crate::{Error, Result};

/// The optimiser of every run: SGD with PyTorch semantics.
pub type Sgd<B> =
    OptimizerAdaptor<burn::optim::Sgd<<B as AutodiffBackend>::InnerBackend>, EmbeddingNet<B>, B>;

/// The SGD optimiser of the run (PyTorch semantics: dampening 0, coupled weight decay).
pub fn optimizer<B: AutodiffBackend>(config: &TrainConfig) -> Sgd<B> {
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

/// The network of `config` for `channels` input channels.
pub fn model_config(config: &TrainConfig) -> ModelConfig {
    ModelConfig::new(config.model.arch, config.model.dim).with_channels(config.data.channels)
}

/// How the bank of `n` rows is made: size, dimension, momentum, precision and seed of the run.
pub fn bank_config(config: &TrainConfig, n: usize) -> MemoryBankConfig {
    MemoryBankConfig::new(n, config.model.dim)
        .with_momentum(config.method.bank_momentum)
        .with_precision(config.method.bank_precision)
        .with_seed(config.seed)
}

/// The rows of a bank of `n` rows that the run's own device (replica 0) holds: every row, or its
/// shard when the bank is split across the devices of `train.devices`
/// (`method.bank_sharding = "sharded"`).
pub fn own_bank_rows(config: &TrainConfig, n: usize) -> ShardColumns {
    let world = config.train.devices.len();
    if config.method.bank_sharding == BankSharding::Sharded && world > 1 {
        ShardColumns::split(n, world, 0)
    } else {
        ShardColumns::whole(n)
    }
}

/// The bank rows `rows` of the run on `device`: from the bank `saved` (a checkpoint's, in host
/// memory), or as the fresh run draws them. A data-parallel replica's shard, made without the
/// other rows reaching its device.
///
/// # Errors
/// Invalid bank settings, or rows beyond the saved bank.
pub fn bank_shard<B: Backend>(
    (config, n): (&TrainConfig, usize),
    saved: Option<&HostBank>,
    rows: Range<usize>,
    device: &B::Device,
) -> Result<MemoryBank<B>> {
    match saved {
        Some(bank) => Ok(bank.rows_range(rows)?.to_device(device)?),
        None => Ok(bank_config(config, n).init_rows(rows, device)?),
    }
}

/// Model, optimiser, bank, merge groups, NCE normaliser and counters.
pub struct TrainState<B: AutodiffBackend> {
    /// The network.
    pub model: EmbeddingNet<B>,
    /// Its optimiser.
    pub optim: Sgd<B>,
    /// One unit row per training image: all of them, or, with the bank split across
    /// data-parallel devices, this device's rows [`TrainState::bank_rows`].
    pub bank: MemoryBank<B>,
    /// Which rows of the whole bank `bank` holds (`rows`) out of how many (`total`, one per
    /// training image).
    pub bank_rows: ShardColumns,
    /// Merge groups, when merging is on.
    pub merger: Option<Merger>,
    /// The group id of every bank row on the device, when merging is on.
    pub groups: Option<Tensor<B, 1, Int>>,
    /// NCE (with its running Z), when the loss is NCE.
    pub nce: Option<NceLoss<B>>,
    /// The consistency term, when λ > 0.
    pub consistency: Option<ConsistencyLoss>,
    /// Bank rows per block of the softmax's similarities (`method.bank_block_rows`; 0: all).
    pub block_rows: usize,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimiser steps taken.
    pub step: usize,
    /// Progress inside epoch `epochs_done` (from 0): batches done and running statistics.
    pub progress: EpochProgress,
}

impl<B: AutodiffBackend> TrainState<B> {
    /// A fresh state for `n` training images (the backend is seeded with the run's seed first).
    /// With the bank sharded across several devices it holds the first device's rows only
    /// ([`own_bank_rows`]).
    ///
    /// # Errors
    /// Invalid bank, NCE, merging or consistency settings.
    pub fn new(config: &TrainConfig, n: usize, device: &B::Device) -> Result<Self> {
        B::seed(device, config.seed);
        let method = &config.method;
        let model = model_config(config).init::<B>(device);
        let bank_rows = own_bank_rows(config, n);
        let bank = bank_config(config, n).init_rows(bank_rows.rows.clone(), device)?;
        let mut merger = config
            .merge
            .enabled
            .then(|| Merger::new(n, config.merge.schedule.clone()))
            .transpose()?;
        let groups = merger.as_mut().map(|m| m.group_tensor::<B>(device));
        let nce = (method.loss == LossKind::Nce)
            .then(|| {
                NceConfig::new(n)
                    .with_noise(method.nce_noise)
                    .with_temperature(method.temperature)
                    .init::<B>()
            })
            .transpose()?;
        let consistency = (method.consistency > 0.0)
            .then(|| ConsistencyLoss::new(method.consistency))
            .transpose()?;
        Ok(Self {
            model,
            optim: optimizer::<B>(config),
            bank,
            bank_rows,
            merger,
            groups,
            nce,
            consistency,
            block_rows: method.bank_block_rows,
            epochs_done: 0,
            step: 0,
            progress: EpochProgress::default(),
        })
    }

    /// Loads checkpoint `ckpt` into this (fresh) state: tensors, counters and the position
    /// inside the epoch.
    ///
    /// # Errors
    /// Missing, damaged or unreadable checkpoint files (naming the file), or a bank whose shape
    /// is not the dataset's and the config's.
    pub fn restore(self, ckpt: &Path, device: &B::Device) -> Result<Self> {
        let (n, dim) = (self.bank_rows.total, self.bank.dim());
        let state = checkpoint::read_state(ckpt)?;
        let (model, optim, host, attachments) =
            checkpoint::load_host(ckpt, self.model, self.optim, device)?;
        let bank_file = ckpt.join("bank.safetensors");
        if (host.num_rows(), host.dim()) != (n, dim) {
            return Err(Error::checkpoint(
                bank_file,
                format!(
                    "the bank is {}×{} but the dataset has {n} images and model.dim is {dim}",
                    host.num_rows(),
                    host.dim()
                ),
            ));
        }
        let bank = if self.bank_rows.is_whole() {
            host.to_device(device)?
        } else {
            host.rows_range(self.bank_rows.rows.clone())?
                .to_device(device)?
        };
        let mut merger = match self.merger {
            Some(m) => Some(Merger::from_attachments(
                n,
                m.schedule().clone(),
                &attachments,
            )?),
            None => None,
        };
        let groups = merger.as_mut().map(|m| m.group_tensor::<B>(device));
        let mut nce = self.nce;
        if let (Some(nce), Some(z)) = (nce.as_mut(), state.nce_z) {
            nce.set_z(z, device)?;
        }
        Ok(Self {
            model,
            optim,
            bank,
            bank_rows: self.bank_rows,
            merger,
            groups,
            nce,
            consistency: self.consistency,
            block_rows: self.block_rows,
            epochs_done: state.epochs_done,
            step: state.step,
            progress: state.progress,
        })
    }

    /// Which part of the state is not finite (`None`: all of it is): the model's parameters and
    /// running statistics, the bank rows, NCE's normaliser. One device read.
    pub fn non_finite_part(&self) -> Option<&'static str> {
        if self
            .nce
            .as_ref()
            .and_then(|n| n.z())
            .is_some_and(|z| !z.is_finite())
        {
            return Some("NCE normaliser Z");
        }
        non_finite_part(&self.model.valid(), &self.bank.inner())
    }

    /// Writes a checkpoint of this state (at its position: an epoch end, or `progress.batches`
    /// into the next epoch) under `dir`, keeping the newest `config.checkpoint.keep`. Only a
    /// finite state is written.
    ///
    /// # Errors
    /// [`Error::NonFiniteState`] (nothing written) when a parameter, running statistic or bank
    /// value is NaN or infinite; IO errors naming the path.
    pub fn save(&mut self, dir: &Path, config: &TrainConfig) -> Result<PathBuf> {
        self.holds_whole_bank()?;
        let bank = self.bank.to_host();
        self.save_with_bank(dir, config, &bank)
    }

    /// `Ok` when `bank` holds every row; an error naming `method.bank_sharding` when it holds one
    /// device's shard (a sharded data-parallel state, which only `DataParallel` steps and
    /// [`TrainState::save_with_bank`] saves).
    ///
    /// # Errors
    /// [`Error::Config`] for a shard.
    pub fn holds_whole_bank(&self) -> Result<()> {
        if self.bank_rows.is_whole() {
            return Ok(());
        }
        Err(Error::Config {
            field: "method.bank_sharding".into(),
            reason: format!(
                "this state holds bank rows {:?} of {}: a sharded bank trains with its replicas \
                 (DataParallel) and is saved gathered",
                self.bank_rows.rows, self.bank_rows.total
            ),
        })
    }

    /// [`TrainState::save`] with the whole bank given in host memory: the shards of a bank split
    /// across data-parallel devices, gathered.
    ///
    /// # Errors
    /// As [`TrainState::save`].
    pub fn save_with_bank(
        &mut self,
        dir: &Path,
        config: &TrainConfig,
        bank: &HostBank,
    ) -> Result<PathBuf> {
        let part = match self.non_finite_part() {
            None if !bank.is_finite() => Some("bank rows"),
            found => found,
        };
        if let Some(part) = part {
            // At an epoch end `epochs_done` already counts the epoch just trained.
            let epoch = self.epochs_done + usize::from(self.progress.batches > 0);
            return Err(Error::NonFiniteState {
                epoch,
                step: self.step,
                part,
            });
        }
        let attachments = self
            .merger
            .as_mut()
            .map(|m| m.attachments())
            .unwrap_or_default();
        let state = RunState {
            epochs_done: self.epochs_done,
            step: self.step,
            progress: self.progress.clone(),
            seed: config.seed,
            nce_z: self.nce.as_ref().and_then(|n| n.z()),
            config: config.to_toml(),
        };
        checkpoint::save(
            dir,
            &self.model,
            &self.optim,
            bank,
            &attachments,
            &state,
            config.checkpoint.keep,
        )
    }
}
