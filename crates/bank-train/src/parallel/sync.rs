//! The collective operations of data-parallel training, in an order every process agrees on.

use burn::collective::{PeerId, ReduceOperation, all_reduce};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;

use crate::model::EmbeddingNet;
use crate::{Error, Result};
use bank_core::MemoryBank;
use bank_losses::ShardColumns;

/// Σ over the replicas of `tensor` (burn-collective's all-reduce).
///
/// # Errors
/// [`Error::Collective`] naming `op` and the replica.
pub(crate) fn sum<B: Backend, const D: usize>(
    rank: usize,
    tensor: Tensor<B, D>,
    op: &'static str,
) -> Result<Tensor<B, D>> {
    let summed = all_reduce::<B>(
        PeerId::from(rank),
        tensor.into_primitive().tensor(),
        ReduceOperation::Sum,
    )
    .map_err(|e| Error::Collective {
        op,
        rank,
        reason: format!("{e:?}"),
    })?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
}

/// The gradients summed over the replicas, one all-reduce per trained parameter in the model's
/// own order. (burn's `GradientsParams::all_reduce` goes by parameter id; ids are drawn per
/// process, so processes, e.g. machines, would pair different parameters: the module order is
/// the same wherever the architecture is.)
///
/// # Errors
/// [`Error::Collective`] when an all-reduce fails.
pub(crate) fn sum_gradients<B: AutodiffBackend>(
    mut grads: GradientsParams,
    model: &EmbeddingNet<B>,
    rank: usize,
) -> Result<GradientsParams> {
    struct Reduce<'a> {
        grads: &'a mut GradientsParams,
        rank: usize,
        error: Option<Error>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Reduce<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.error.is_some() || !param.is_require_grad() {
                return;
            }
            let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
                return;
            };
            match sum(self.rank, grad, "all-reduce of the gradients") {
                Ok(g) => self.grads.register::<B::InnerBackend, D>(param.id, g),
                Err(e) => self.error = Some(e),
            }
        }
    }
    let mut reduce = Reduce {
        grads: &mut grads,
        rank,
        error: None,
    };
    model.visit(&mut reduce);
    match reduce.error {
        Some(e) => Err(e),
        None => Ok(grads),
    }
}

/// Fails unless every replica starts from the same parameters and bank (a sharded bank's rows
/// are not compared: no replica holds them all): each sends a
/// fingerprint (the sum of its parameters, and the sum of the bank rows it computes
/// similarities against: every row, or its shard's), and each compares the sum of all of them
/// with what it expects from its own: its parameter sum times the replica count, and, when it
/// holds every bank row, the sum over the whole bank (times the replica count when no replica
/// is sharded). Machines resumed from different checkpoints, or started with different configs,
/// are refused before the first step.
///
/// # Errors
/// [`Error::Collective`] when the replicas differ or the all-reduce fails.
pub(crate) fn check_same_start<B: AutodiffBackend>(
    (model, bank, columns): (&EmbeddingNet<B>, &MemoryBank<B>, &ShardColumns),
    (rank, world): (usize, usize),
    device: &B::Device,
) -> Result<()> {
    struct Sums(f64);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Sums {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                self.0 += param.val().sum().into_scalar().elem::<f64>();
            }
        }
    }
    let mut params = Sums(0.0);
    model.visit(&mut params);
    let rows = bank.rows();
    let whole_bank = bank.num_rows() == columns.total;
    let shard = if whole_bank && !columns.is_whole() {
        rows.clone().slice([columns.rows.clone(), 0..bank.dim()])
    } else {
        rows.clone()
    };
    let scalar = |t: Tensor<B, 1>| t.into_scalar().elem::<f64>() as f32;
    let mine = [params.0 as f32, scalar(shard.sum())];
    let all = sum(
        rank,
        Tensor::<B::InnerBackend, 1>::from_floats(mine, device),
        "all-reduce of the start fingerprints",
    )?;
    let all: Vec<f32> = all
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    let close = |got: f32, want: f32, scale: f32| (got - want).abs() <= 1e-5 * scale.max(1.0);
    let mut same = all.len() == 2 && close(all[0], mine[0] * world as f32, mine[0].abs());
    if same && whole_bank {
        same = if columns.is_whole() {
            close(all[1], mine[1] * world as f32, mine[1].abs())
        } else {
            // Sums of the shards against the sum of the whole: equal up to rounding, which
            // grows with the rows' magnitudes (Σ|v|), not with their signed sum.
            let l1 = scalar(rows.clone().abs().sum());
            close(all[1], scalar(rows.sum()), 10.0 * l1)
        };
    }
    if same {
        Ok(())
    } else {
        Err(Error::Collective {
            op: "start",
            rank,
            reason: format!(
                "the replicas start from different parameters or banks (sums {mine:?} here, \
                 {all:?} over {world} replicas): start every node from the same config, seed \
                 and checkpoint"
            ),
        })
    }
}
