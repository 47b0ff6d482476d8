//! One device's share of data-parallel training.

use bank_core::MemoryBank;
use bank_data::HostBatch;
use bank_losses::{ConsistencyLoss, NceLoss, ShardColumns, nce_similarities};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::gather_updates;
use super::sync::{sum, sum_gradients};
use crate::Result;
use crate::model::EmbeddingNet;
use crate::state::Sgd;
use crate::step::{SoftmaxTarget, softmax_grads};

/// A replica: the model, optimiser and bank of one device. Every replica starts from the same
/// state and applies the same summed gradients and the same gathered bank update, so models,
/// optimiser states and banks stay identical (BatchNorm running statistics excepted: they
/// follow each replica's own shards).
pub struct Replica<B: AutodiffBackend> {
    /// Rank (0 = the thread that owns the run state); the collective peer id.
    pub rank: usize,
    /// The replica's device.
    pub device: B::Device,
    /// The network.
    pub model: EmbeddingNet<B>,
    /// Its optimiser.
    pub optim: Sgd<B>,
    /// The bank: every row, or (sharded, ranks > 0) the rows `columns.rows` only.
    pub bank: MemoryBank<B>,
    /// The bank rows whose similarities this replica computes: every row when the bank is
    /// replicated, its range of the split when sharded.
    pub columns: ShardColumns,
    /// Merge groups of the bank rows, once merging is on.
    pub groups: Option<Tensor<B, 1, Int>>,
    /// λ·consistency, when on.
    pub consistency: Option<ConsistencyLoss>,
    /// Bank rows per block of the similarities (0: all at once).
    pub block_rows: usize,
    /// NCE with its normaliser Z, when the loss is NCE.
    pub nce: Option<NceLoss<B>>,
}

/// A copy of `model` on `device` whose BatchNorm running statistics are its own.
///
/// burn's `clone` and `fork` keep a `RunningState`'s shared cell (an `Arc`): a replica made
/// that way would share replica 0's running statistics, burn would average every thread's
/// updates into them in whatever order the threads reach them, and `fork` would move the
/// shared tensor to the last replica's device. Going through the inner (non-autodiff) module
/// gives every running statistic a new cell; the trained parameters keep their ids (the
/// optimiser's state is keyed by them) and their `require_grad`.
pub fn replica_model<B: AutodiffBackend>(
    model: &EmbeddingNet<B>,
    device: &B::Device,
) -> EmbeddingNet<B> {
    use burn::module::AutodiffModule;
    EmbeddingNet::from_inner(model.valid()).fork(device)
}

/// One replica's part of a step.
#[derive(Debug, Clone)]
pub struct ShardStep {
    /// Its samples of the batch, all views of each ([`HostBatch::shard`]).
    pub shard: HostBatch,
    /// Its share of the batch's samples, `B_r / B`: the gradient weight.
    pub share: f64,
    /// Its first row in the gathered bank update (rows of lower ranks before it).
    pub offset: usize,
    /// Rows of the whole batch, `B·K`.
    pub rows: usize,
    /// Replicas, W.
    pub world: usize,
    /// Learning rate.
    pub lr: f64,
    /// Temperature τ.
    pub tau: f64,
    /// With NCE: the noise indices of its rows, `[rows, m]` row-major (drawn once for the
    /// whole batch).
    pub noise: Option<Vec<i64>>,
}

impl<B: AutodiffBackend> Replica<B> {
    /// Trains on the shard (with a sharded bank, the PartialFC step of `sharded.rs`): closed-form softmax gradient (scaled by the share), gradients
    /// summed over the replicas, SGD, then the bank update of the whole batch. Returns the
    /// whole batch's mean loss (the shards' losses weighted by their shares, summed over the
    /// replicas).
    ///
    /// Every replica must call this for the same batch: the all-reduces wait for all of them.
    ///
    /// # Errors
    /// Loss and bank errors; [`Error::Collective`] when an all-reduce fails.
    pub fn step(self, job: &ShardStep) -> Result<(Self, f64)> {
        if !self.columns.is_whole() {
            return self.sharded_step(job);
        }
        if self.nce.is_some() {
            return self.nce_step(job);
        }
        let (grads, loss, local) = if job.shard.layout.samples == 0 {
            let zero = Tensor::zeros([1], &self.device);
            (zero_grads(&self.model), zero, None)
        } else {
            let batch = job.shard.to_device::<B>(&self.device);
            let features = self.model.forward(batch.images.clone());
            let target = SoftmaxTarget {
                bank: &self.bank,
                groups: self.groups.as_ref(),
                consistency: self.consistency,
                block_rows: self.block_rows,
            };
            let (grads, loss) =
                softmax_grads(target, &batch, features.clone(), job.tau, job.share)?;
            let grads = GradientsParams::from_grads(grads, &self.model);
            let local = (batch.indices.inner(), features.detach().inner());
            (grads, loss.mul_scalar(job.share), Some(local))
        };
        self.finish(job, grads, (loss, local))
    }

    /// The step with NCE: its rows' loss against the noise rows drawn for them, Z estimated from
    /// the whole batch (its noise sums all-reduced, so every replica's Z stays the same), the
    /// gradient scaled by its share, then as the softmax step.
    fn nce_step(mut self, job: &ShardStep) -> Result<(Self, f64)> {
        let mut nce = self.nce.take().expect("an NCE replica");
        let rank = self.rank;
        let combine = |t: Tensor<B, 1>| -> Result<Tensor<B, 1>> {
            let total = sum(rank, t.inner(), "all-reduce of NCE's noise sums")?;
            Ok(Tensor::from_inner(total))
        };
        let (grads, loss, local) = match (&job.noise, job.shard.layout.samples) {
            (Some(noise), samples) if samples > 0 => {
                let batch = job.shard.to_device::<B>(&self.device);
                let features = self.model.forward(batch.images.clone());
                let rows = batch.layout.rows();
                let m = noise.len() / rows;
                let noise = TensorData::new(noise.clone(), [rows, m]);
                let noise = Tensor::<B, 2, Int>::from_data(noise, &self.device);
                let indices = batch.indices.clone();
                let sims = nce_similarities(&self.bank, features.clone(), indices, noise)?;
                let loss = nce.forward_shared(Some(sims), &self.device, combine)?;
                let loss = loss.expect("a loss for its rows");
                let grads = loss.clone().mul_scalar(job.share).backward();
                let grads = GradientsParams::from_grads(grads, &self.model);
                let local = (batch.indices.inner(), features.detach().inner());
                (grads, loss.inner().mul_scalar(job.share), Some(local))
            }
            _ => {
                nce.forward_shared(None, &self.device, combine)?;
                let zero = Tensor::zeros([1], &self.device);
                (zero_grads(&self.model), zero, None)
            }
        };
        self.nce = Some(nce);
        self.finish(job, grads, (loss, local))
    }

    /// The end of every replicated step: gradients summed over the replicas, SGD, the bank
    /// update gathered from every replica, the batch loss summed from the shares.
    fn finish(
        mut self,
        job: &ShardStep,
        grads: GradientsParams,
        (loss, local): (Tensor<B::InnerBackend, 1>, Option<Update<B>>),
    ) -> Result<(Self, f64)> {
        let views = job.shard.layout.views;
        let grads = sum_gradients(grads, &self.model, self.rank)?;
        self.model = self.optim.step(job.lr, self.model, grads);
        let dim = self.bank.dim();
        let (indices, features) = gather_updates::<B::InnerBackend>(
            self.rank,
            local,
            (job.offset, job.rows, dim),
            &self.device,
        )?;
        self.bank.update(
            Tensor::from_inner(indices),
            Tensor::from_inner(features),
            views,
        )?;
        // The shares' weighted losses summed over the replicas: the step's one host read.
        let loss = sum(self.rank, loss, "all-reduce of the loss")?;
        Ok((self, loss.into_scalar().elem::<f64>()))
    }
}

/// A replica's rows for the bank update: bank indices `[M_r]` and detached features `[M_r, D]`.
type Update<B> = (
    Tensor<<B as AutodiffBackend>::InnerBackend, 1, Int>,
    Tensor<<B as AutodiffBackend>::InnerBackend, 2>,
);

/// Zero gradients for every float parameter of `model`: an empty shard's contribution, so that
/// its replica still takes part in the all-reduce with the same parameters as the others.
pub(super) fn zero_grads<B: AutodiffBackend>(model: &EmbeddingNet<B>) -> GradientsParams {
    struct Zeros(GradientsParams);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Zeros {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            // Running statistics are visited too, as parameters without gradients.
            if !param.is_require_grad() {
                return;
            }
            let zeros = param.val().inner().zeros_like();
            self.0.register::<B::InnerBackend, D>(param.id, zeros);
        }
    }
    let mut zeros = Zeros(GradientsParams::new());
    model.visit(&mut zeros);
    zeros.0
}
