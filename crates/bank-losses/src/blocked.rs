//! [`SoftmaxObjective`]'s losses and gradient with the bank read in blocks of rows, so that no
//! more than `[M, block]` similarities exist at once.
//!
//! The one-shot evaluation of `closed_form.rs` holds the `[M, N]` (or, sharded, `[M, N/W]`)
//! logits and a few buffers of that size; at M = B·K = 512 that is 2 KB per bank row, which
//! bounds N per device long before the rows do (0.25–0.5 KB each). Here the same quantities are
//! accumulated block by block (an online log-sum-exp, as in FlashAttention, Dao et al. 2022):
//!
//! 1. every block's logits `z_b = f·V_bᵀ/τ` update each row's running maximum and sum of
//!    exponentials (and, with merged positives, the same restricted to the target's group);
//!    the shards' statistics are then combined ([`ShardReduce`]) into `lse = log Σ_n exp z_n`;
//! 2. with consistency, a second pass sums `s_ik = Σ_n p_ikn (ℓ_ikn − m_in)` (module docs of
//!    `closed_form.rs`);
//! 3. a last pass forms each block's `∂L/∂z_b` from `lse` (and `s`) and adds `∂L/∂z_b · V_b`
//!    to the gradient.
//!
//! Each block's logits are computed two or three times (one product `f·V_bᵀ` per pass), so a
//! step costs three (four with consistency) `[M, D] × [D, N]` products instead of two: blocks
//! trade time for memory, and are off unless asked for.

use std::ops::Range;

use bank_core::{MemoryBank, ViewLayout};
use burn::prelude::*;

use crate::closed_form::{LossAndGrad, Positives, check_shard};
use crate::error::{check_layout, check_len};
use crate::shards::{ShardColumns, ShardReduce};
use crate::{Error, SoftmaxObjective};

/// A logit that no row's maximum can be: the masked entries of a group restriction.
const MASKED: f64 = -1e30;

/// One evaluation over a bank (or shard) read block by block.
pub(crate) struct BlockedEval<'a, B: Backend> {
    /// The objective (temperature, consistency).
    pub objective: &'a SoftmaxObjective,
    /// The rows this device holds.
    pub bank: &'a MemoryBank<B>,
    /// Which rows of the whole bank they are.
    pub columns: &'a ShardColumns,
    /// Bank rows per block (> 0).
    pub block: usize,
}

/// A row-wise log-sum-exp accumulated over column blocks: the running maximum and the sum of
/// `exp(z − max)`, both `[M, 1]`.
struct RowLse<B: Backend> {
    max: Tensor<B, 2>,
    sum: Tensor<B, 2>,
}

impl<B: Backend> RowLse<B> {
    /// The statistics of one block of logits `[M, C]`.
    fn of(z: Tensor<B, 2>) -> Self {
        let max = z.clone().max_dim(1);
        let sum = (z - max.clone()).exp().sum_dim(1);
        Self { max, sum }
    }

    /// `acc` with the block `z` added.
    fn push(acc: Option<Self>, z: Tensor<B, 2>) -> Self {
        let block = Self::of(z);
        let Some(acc) = acc else { return block };
        let max = acc.max.clone().max_pair(block.max.clone());
        let sum =
            acc.sum * (acc.max - max.clone()).exp() + block.sum * (block.max - max.clone()).exp();
        Self { max, sum }
    }

    /// `log Σ exp` over every block of every shard, `[M, 1]`.
    fn finish<R: ShardReduce<B>>(self, reduce: &mut R) -> Result<Tensor<B, 2>, R::Error> {
        let max = reduce.max(self.max.clone())?;
        let sum = reduce.sum(self.sum * (self.max - max.clone()).exp())?;
        Ok(sum.log() + max)
    }
}

/// Each row's target group and every bank row's group id (merged positives).
struct GroupMask<B: Backend> {
    /// `[M, 1]`
    target: Tensor<B, 2, Int>,
    /// `[N]`, ids of the whole bank.
    groups: Tensor<B, 1, Int>,
}

impl<B: Backend> GroupMask<B> {
    /// `z` (`[M, C]`, the columns `rows` of the whole bank) with the columns outside each row's
    /// target group set to [`MASKED`].
    fn restrict(&self, z: Tensor<B, 2>, rows: Range<usize>) -> Tensor<B, 2> {
        let [m, c] = z.dims();
        let outside = self
            .groups
            .clone()
            .slice(rows)
            .unsqueeze_dim::<2>(0)
            .expand([m, c])
            .not_equal(self.target.clone().expand([m, c]));
        z.mask_fill(outside, MASKED)
    }
}

/// The row statistics of pass 1, combined over the shards.
struct Normalisers<B: Backend> {
    /// `log Σ_n exp z_n`, `[M, 1]`.
    all: Tensor<B, 2>,
    /// The same over the target's group, `[M, 1]` (merged positives).
    group: Option<Tensor<B, 2>>,
}

impl<B: Backend> BlockedEval<'_, B> {
    /// [`SoftmaxObjective::eval_shard`], block by block.
    pub(crate) fn eval<R: ShardReduce<B>>(
        &self,
        features: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
        positives: &Positives<B>,
        layout: ViewLayout,
        reduce: &mut R,
    ) -> Result<LossAndGrad<B>, R::Error> {
        let tau = self.objective.temperature();
        check_shard(
            [self.bank.num_rows(), self.bank.dim()],
            &features,
            self.columns,
        )?;
        let m = features.dims()[0];
        check_layout([m, self.columns.total], layout)?;
        check_len("targets", targets.dims(), m)?;
        self.check_inputs(layout)?;
        let mask = self.group_mask(targets.clone(), positives)?;
        let scaled = features / tau;
        let norm = self.normalisers(&scaled, mask.as_ref(), reduce)?;
        let (mut loss, target_rows) = match &norm.group {
            Some(group) => ((group.clone() - norm.all.clone()).mean().neg(), None),
            None => {
                let (picked, rows) = self.own_targets(&scaled, targets, reduce)?;
                ((picked - norm.all.clone()).mean().neg(), Some(rows))
            }
        };
        let consistency = match self.objective.consistency() {
            Some(c) => {
                let weight = c.weight / (layout.samples * (layout.views - 1)) as f64;
                let s = self.consistency_sums(&scaled, &norm.all, layout, reduce)?;
                loss = loss + s.clone().sum() * weight;
                Some((weight, s))
            }
            None => None,
        };
        let mut grad =
            self.logit_grad_times_rows(&scaled, &norm, mask.as_ref(), layout, consistency)?;
        if let Some(rows) = target_rows {
            grad = grad - rows;
        }
        Ok(LossAndGrad {
            loss,
            features_grad: reduce.sum(grad)? / tau,
        })
    }

    /// What the passes assume, checked before any of them (and before any combination across
    /// shards, so that a refusal cannot leave the other shards waiting): rows to read, and at
    /// least 2 views with consistency on.
    fn check_inputs(&self, layout: ViewLayout) -> crate::Result<()> {
        if self.columns.rows.is_empty() {
            return Err(Error::Shape {
                what: "bank rows",
                expected: "at least one row".into(),
                actual: vec![0, self.bank.dim()],
            });
        }
        if self.objective.consistency().is_some() && layout.views < 2 {
            return Err(Error::InvalidValue {
                field: "views",
                value: layout.views.to_string(),
                reason: "consistency needs at least 2 views per sample",
            });
        }
        Ok(())
    }

    /// The blocks' row ranges, local to this device's rows.
    fn blocks(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let n = self.columns.rows.len();
        (0..n)
            .step_by(self.block)
            .map(move |s| s..(s + self.block).min(n))
    }

    /// The rows of local block `rows` (f32, `[C, D]`) and their logits against `scaled`
    /// (`f/τ`, `[M, D]`), `[M, C]`.
    fn logits(
        &self,
        scaled: &Tensor<B, 2>,
        rows: Range<usize>,
    ) -> crate::Result<(Tensor<B, 2>, Tensor<B, 2>)> {
        let v = self.bank.rows_range(rows)?.rows();
        Ok((scaled.clone().matmul(v.clone().transpose()), v))
    }

    /// The whole-bank columns of local block `rows`.
    fn whole(&self, rows: Range<usize>) -> Range<usize> {
        let first = self.columns.rows.start;
        first + rows.start..first + rows.end
    }

    fn group_mask(
        &self,
        targets: Tensor<B, 1, Int>,
        positives: &Positives<B>,
    ) -> crate::Result<Option<GroupMask<B>>> {
        let Positives::Groups(groups) = positives else {
            return Ok(None);
        };
        if groups.dims()[0] != self.columns.total {
            return Err(Error::Shape {
                what: "groups",
                expected: format!("[{}] (one id per bank row)", self.columns.total),
                actual: groups.dims().to_vec(),
            });
        }
        let target = groups.clone().select(0, targets).unsqueeze_dim(1);
        Ok(Some(GroupMask {
            target,
            groups: groups.clone(),
        }))
    }

    /// Pass 1: `log Σ exp z` over every column, and over the target's group.
    fn normalisers<R: ShardReduce<B>>(
        &self,
        scaled: &Tensor<B, 2>,
        mask: Option<&GroupMask<B>>,
        reduce: &mut R,
    ) -> Result<Normalisers<B>, R::Error> {
        let (mut all, mut group) = (None, None);
        for rows in self.blocks() {
            let (z, _) = self.logits(scaled, rows.clone())?;
            if let Some(mask) = mask {
                group = Some(RowLse::push(
                    group,
                    mask.restrict(z.clone(), self.whole(rows)),
                ));
            }
            all = Some(RowLse::push(all, z));
        }
        let all = all
            .expect("a shard holds at least one row")
            .finish(reduce)?;
        let group = match group {
            Some(g) => Some(g.finish(reduce)?),
            None => None,
        };
        Ok(Normalisers { all, group })
    }

    /// Each row's logit at its own bank row, `[M, 1]`, and that row `/ M`, `[M, D]` (zero for
    /// targets outside this shard), the one-hot part of `∂L/∂z · V`.
    fn own_targets<R: ShardReduce<B>>(
        &self,
        scaled: &Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
        reduce: &mut R,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>), R::Error> {
        let m = targets.dims()[0];
        let (column, inside) = self.columns.local(targets);
        let rows = self.bank.select(column.reshape([m]));
        let picked = (scaled.clone() * rows.clone()).sum_dim(1);
        let rows = rows / m as f64;
        Ok(match inside {
            None => (picked, rows),
            Some(inside) => (reduce.sum(picked * inside.clone())?, rows * inside),
        })
    }

    /// Pass 2 (consistency): `s_ik = Σ_n p_ikn (ℓ_ikn − m_in)` over every shard, `[B, K, 1]`.
    fn consistency_sums<R: ShardReduce<B>>(
        &self,
        scaled: &Tensor<B, 2>,
        lse: &Tensor<B, 2>,
        layout: ViewLayout,
        reduce: &mut R,
    ) -> Result<Tensor<B, 3>, R::Error> {
        let (b, k) = (layout.samples, layout.views);
        let mut s: Option<Tensor<B, 3>> = None;
        for rows in self.blocks() {
            let (z, _) = self.logits(scaled, rows)?;
            let (log_p, centred) = view_terms(z, lse, b, k);
            let part = (log_p.exp() * centred).sum_dim(2);
            s = Some(match s {
                Some(s) => s + part,
                None => part,
            });
        }
        reduce.sum(s.expect("check_inputs: at least one row"))
    }

    /// Pass 3: `Σ_blocks ∂L/∂z_b · V_b`, `[M, D]`, without the one-hot targets' part.
    fn logit_grad_times_rows(
        &self,
        scaled: &Tensor<B, 2>,
        norm: &Normalisers<B>,
        mask: Option<&GroupMask<B>>,
        layout: ViewLayout,
        consistency: Option<(f64, Tensor<B, 3>)>,
    ) -> crate::Result<Tensor<B, 2>> {
        let [m, d] = scaled.dims();
        let (b, k) = (layout.samples, layout.views);
        let mut grad = Tensor::<B, 2>::zeros([m, d], &scaled.device());
        for rows in self.blocks() {
            let (z, v) = self.logits(scaled, rows.clone())?;
            let c = z.dims()[1];
            let mut dz = (z.clone() - norm.all.clone()).exp() / m as f64;
            if let (Some(mask), Some(lse_g)) = (mask, &norm.group) {
                let q = (mask.restrict(z.clone(), self.whole(rows)) - lse_g.clone()).exp();
                dz = dz - q / m as f64;
            }
            if let Some((weight, s)) = &consistency {
                let (log_p, centred) = view_terms(z, &norm.all, b, k);
                let p = log_p.exp();
                let p_mean = p.clone().mean_dim(1);
                let dzc = (p * (centred + 1.0 - s.clone()) - p_mean) * *weight;
                dz = dz + dzc.reshape([m, c]);
            }
            grad = grad + dz.matmul(v);
        }
        Ok(grad)
    }
}

/// `ℓ = z − lse` as `[B, K, C]` and `ℓ − mean_k ℓ` (the consistency's centred log-probabilities).
fn view_terms<B: Backend>(
    z: Tensor<B, 2>,
    lse: &Tensor<B, 2>,
    b: usize,
    k: usize,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let c = z.dims()[1];
    let log_p = (z - lse.clone()).reshape([b, k, c]);
    let centred = log_p.clone() - log_p.clone().mean_dim(1);
    (log_p, centred)
}
