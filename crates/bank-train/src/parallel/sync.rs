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

/// Fails unless every replica starts from the same parameters and bank: each sends a
/// fingerprint (the sums of its parameters and bank rows), and each compares the sum of all
/// of them with its own times the replica count. Machines resumed from different checkpoints,
/// or started with different configs, are refused before the first step.
///
/// # Errors
/// [`Error::Collective`] when the replicas differ or the all-reduce fails.
pub(crate) fn check_same_start<B: AutodiffBackend>(
    (model, bank): (&EmbeddingNet<B>, &MemoryBank<B>),
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
    let bank = bank.rows().sum().into_scalar().elem::<f64>();
    let mine = [params.0 as f32, bank as f32];
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
    let same = all.len() == 2
        && mine.iter().zip(&all).all(|(m, a)| {
            let want = m * world as f32;
            (a - want).abs() <= 1e-5 * want.abs().max(1.0)
        });
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
