//! A replica's step when the bank is sharded by rows (`method.bank_sharding = "sharded"`), the
//! PartialFC scheme (Deng et al., ICCV-W 2021): the batch's features are gathered on every
//! replica, each computes the `[B·K, N/W]` similarities against its own rows, and the softmax's
//! row maxima and sums are combined with all-reduces ([`CollectiveReduce`]), so the loss is the
//! full softmax over all N rows.

use bank_core::ViewLayout;
use bank_losses::{Positives, ShardReduce, SoftmaxObjective};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::gather_updates;
use super::replica::zero_grads;
use super::sync::{sum, sum_gradients};
use super::{Replica, ShardStep};
use crate::step::backward_from;
use crate::{Error, Result};

/// burn-collective's all-reduce as the combination of a sharded softmax's row statistics. The
/// maximum, which burn-collective lacks, is taken over an all-reduced (summed) zero-filled
/// `[W, M]` block in which each replica fills its own row.
pub(crate) struct CollectiveReduce {
    /// This replica's rank.
    pub rank: usize,
    /// Replicas, W.
    pub world: usize,
}

impl<B: Backend> ShardReduce<B> for CollectiveReduce {
    type Error = Error;

    fn sum<const D: usize>(&mut self, tensor: Tensor<B, D>) -> Result<Tensor<B, D>> {
        sum(
            self.rank,
            tensor,
            "all-reduce of the sharded softmax's sums",
        )
    }

    fn max(&mut self, tensor: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        let m = tensor.dims()[0];
        let block = Tensor::<B, 2>::zeros([self.world, m], &tensor.device())
            .slice_assign([self.rank..self.rank + 1, 0..m], tensor.reshape([1, m]));
        let all = sum(
            self.rank,
            block,
            "all-reduce of the sharded softmax's maxima",
        )?;
        Ok(all.max_dim(0).reshape([m, 1]))
    }

    /// One device holds the whole bank: its sums and maxima are its own (and on flex the
    /// objective runs `bank-losses`' host passes, as a single-device run does).
    fn is_alone(&self) -> bool {
        self.world == 1
    }
}

impl<B: AutodiffBackend> Replica<B> {
    /// The step with a sharded bank: forward its shard of the batch, gather every replica's
    /// features and indices, the closed-form loss and `∂L/∂features` of the whole batch over
    /// the sharded softmax, backward from its own rows of that gradient, gradients summed, SGD,
    /// then the update of its bank rows. Returns
    /// the whole batch's loss, the same on every replica.
    ///
    /// # Errors
    /// Loss and bank errors; [`Error::Collective`] when an all-reduce fails.
    pub(super) fn sharded_step(mut self, job: &ShardStep) -> Result<(Self, f64)> {
        let views = job.shard.layout.views;
        let own = job.shard.layout.rows();
        let dim = self.bank.dim();
        let mut features = None;
        let mut local = None;
        if own > 0 {
            let batch = job.shard.to_device::<B>(&self.device);
            let f = self.model.forward(batch.images);
            local = Some((batch.indices.inner(), f.clone().detach().inner()));
            features = Some(f);
        }
        let (indices, gathered) = gather_updates::<B::InnerBackend>(
            self.rank,
            local,
            (job.offset, job.rows, dim),
            &self.device,
        )?;
        let objective = SoftmaxObjective::new(job.tau)?
            .with_consistency(self.consistency)
            .with_block_rows(self.block_rows);
        let positives = match &self.groups {
            Some(g) => Positives::Groups(g.clone().inner()),
            None => Positives::Own,
        };
        let out = objective.eval_shard(
            (&self.bank.inner(), &self.columns),
            gathered.clone(),
            indices.clone(),
            &positives,
            ViewLayout::new(job.rows / views, views),
            &mut CollectiveReduce {
                rank: self.rank,
                world: job.world,
            },
        )?;
        let grads = match features {
            Some(f) => {
                let mine = out
                    .features_grad
                    .slice([job.offset..job.offset + own, 0..dim]);
                GradientsParams::from_grads(backward_from(f, mine, 1.0), &self.model)
            }
            None => zero_grads(&self.model),
        };
        let grads = sum_gradients(grads, &self.model, self.rank)?;
        self.model = self.optim.step(job.lr, self.model, grads);
        let (indices, gathered) = (Tensor::from_inner(indices), Tensor::from_inner(gathered));
        let first = self.columns.rows.start;
        self.bank.update_shard(indices, gathered, views, first)?;
        Ok((self, out.loss.into_scalar().elem::<f64>()))
    }
}
