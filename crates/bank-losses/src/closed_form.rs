//! The bank-softmax losses with their gradient in closed form.
//!
//! Autodiff through [`BankLogProbs`] and the losses built on it records about fifteen `[M, N]`
//! element-wise operations and replays each backward; at N = 50,000 that costs several times the
//! two matrix products the step needs. The gradient of a softmax cross-entropy with respect to
//! its logits is known, `softmax − target`, so this module computes the loss value and
//! `∂L/∂features` directly: one product `f·Vᵀ/τ`, a few passes over the `[M, N]` probabilities,
//! and one product `∂L/∂logits · V / τ`. The autodiff losses of this crate stay as the reference
//! implementation the tests compare against.
//!
//! With `z = f·Vᵀ/τ`, `p = softmax(z)` row by row and `ℓ = log p`:
//! - instance (NPID; Bulat eq. 2 over `B·K` rows): `L = −(1/M) Σ_r ℓ_{r,t_r}`,
//!   `∂L/∂z_r = (p_r − e_{t_r}) / M`, whose one-hot part enters `∂L/∂f` as the target's bank
//!   row `V_{t_r} / M` directly (no `[M, N]` scatter);
//! - merged positives (Bulat §2.3): `L = −(1/M) Σ_r log Σ_{j∈G(t_r)} p_rj`,
//!   `∂L/∂z_r = (p_r − q_r) / M` with `q_r` the softmax of `z_r` restricted to the group;
//! - consistency (Bulat eq. 3): `L = λ/(B(K−1)) Σ_i Σ_k s_ik`, `s_ik = Σ_n p_ikn (ℓ_ikn − m_in)`,
//!   `m_i = (1/K) Σ_j ℓ_ij`, and `∂L/∂z_ik = λ/(B(K−1)) · (p_ik ⊙ (ℓ_ik + 1 − m_i − s_ik) − P_i/K)`
//!   with `P_i = Σ_j p_ij`;
//! - and for the features, `∂L/∂f = (∂L/∂z) · V / τ` (the bank is a constant).
//!
//! The products and the passes over `[M, N]` are burn's operations on every backend but
//! burn-flex. There, with the whole bank on one device ([`ShardReduce::is_alone`]), `host_step`
//! runs the whole step on host memory (both products by the `gemm` crate, the logits in a buffer
//! kept from step to step, and `host_objective`'s passes over them); a shard among several
//! keeps burn's products, with `host_softmax`'s softmax rows. Both use rayon's threads.

use bank_core::{MemoryBank, ViewLayout};
use burn::prelude::*;

use crate::blocked::BlockedEval;
use crate::error::{check_layout, check_len, positive};
use crate::host_softmax::{self, flex};
use crate::shards::{ShardColumns, ShardReduce, WholeBank};
use crate::{ConsistencyLoss, Error, Result};
use crate::{host_objective, host_step};

/// Which bank rows count as a row's positives.
#[derive(Debug, Clone)]
pub enum Positives<B: Backend> {
    /// Only its own bank row (the instance / multi-view loss).
    Own,
    /// Every bank row of its target's group (merged positives); `[N]` group ids, equal ids =
    /// same group.
    Groups(Tensor<B, 1, Int>),
}

/// A softmax loss over the bank and its gradient with respect to the features.
#[derive(Debug, Clone)]
pub struct LossAndGrad<B: Backend> {
    /// The loss value, `[1]`: the same quantity the autodiff losses compute.
    pub loss: Tensor<B, 1>,
    /// `∂loss/∂features`, `[M, D]`.
    pub features_grad: Tensor<B, 2>,
}

/// The softmax losses of one training step over the bank, in closed form.
///
/// `SoftmaxObjective::new(τ).with_consistency(c)` is the objective; [`SoftmaxObjective::eval`]
/// gives its value and gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftmaxObjective {
    temperature: f64,
    consistency: Option<ConsistencyLoss>,
    block_rows: usize,
}

impl SoftmaxObjective {
    /// The instance (or merged-positive) loss at temperature τ (finite, > 0).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] for a temperature that is not finite and > 0.
    pub fn new(temperature: f64) -> Result<Self> {
        positive("temperature", temperature)?;
        Ok(Self {
            temperature,
            consistency: None,
            block_rows: 0,
        })
    }

    /// Adds λ·consistency (needs K ≥ 2 views; a weight of 0 adds nothing).
    pub fn with_consistency(mut self, consistency: Option<ConsistencyLoss>) -> Self {
        self.consistency = consistency.filter(|c| c.weight != 0.0);
        self
    }

    /// Reads the bank in blocks of `rows` rows (0: all at once, the default), so that no more
    /// than `[M, rows]` similarities exist at once instead of `[M, N]`. Costs one (with
    /// consistency two) more `[M, D] × [D, N]` product per step (`blocked.rs`); the result is
    /// the same to rounding. With a sharded bank every shard must use the same setting.
    pub fn with_block_rows(mut self, rows: usize) -> Self {
        self.block_rows = rows;
        self
    }

    /// Temperature τ.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The consistency term, when on.
    pub fn consistency(&self) -> Option<ConsistencyLoss> {
        self.consistency
    }

    /// The loss of `features` against `bank` (rows follow [`ViewLayout`], targets are each row's
    /// bank index) and its gradient with respect to `features`.
    ///
    /// # Shapes
    /// - `features`: `[M, D]` with `M = B·K`
    /// - `targets`: `[M]`, values in `0..N`
    ///
    /// # Errors
    /// Shape errors (features against the bank, targets, layout, group ids), and fewer than 2
    /// views with consistency on.
    pub fn eval<B: Backend>(
        &self,
        bank: &MemoryBank<B>,
        features: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
        positives: &Positives<B>,
        layout: ViewLayout,
    ) -> Result<LossAndGrad<B>> {
        let columns = ShardColumns::whole(bank.num_rows());
        self.eval_shard(
            (bank, &columns),
            features,
            targets,
            positives,
            layout,
            &mut WholeBank,
        )
    }

    /// [`SoftmaxObjective::eval`] on one shard of a bank split by rows (PartialFC): `bank`
    /// holds the bank rows `columns.rows` of the whole bank, `features` and `targets` the whole
    /// batch's (the same on every shard). The row statistics are combined with `reduce`, so
    /// every shard returns the same loss and the same `∂L/∂features` (the sum of the shards'
    /// `∂L/∂z · V_shard / τ`) as one device holding the whole bank would, to rounding.
    ///
    /// # Shapes
    /// - `bank`: `[N_s, D]`, `N_s = columns.rows.len()`
    /// - `features`: `[M, D]`, `targets`: `[M]` (indices of the whole bank); groups `[N]`
    ///
    /// # Errors
    /// As [`SoftmaxObjective::eval`], and `reduce`'s errors.
    pub fn eval_shard<B: Backend, R: ShardReduce<B>>(
        &self,
        (bank, columns): (&MemoryBank<B>, &ShardColumns),
        features: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
        positives: &Positives<B>,
        layout: ViewLayout,
        reduce: &mut R,
    ) -> std::result::Result<LossAndGrad<B>, R::Error> {
        if self.block_rows > 0 {
            let blocked = BlockedEval {
                objective: self,
                bank,
                columns,
                block: self.block_rows,
            };
            return blocked.eval(features, targets, positives, layout, reduce);
        }
        let tau = self.temperature;
        check_shard([bank.num_rows(), bank.dim()], &features, columns)?;
        let rows = bank.rows();
        let m = features.dims()[0];
        check_layout([m, bank.num_rows()], layout)?;
        check_len("targets", targets.dims(), m)?;
        if columns.is_whole() && reduce.is_alone() {
            let host = self.on_host((&rows, &features), &targets, positives, layout)?;
            if let Some(done) = host {
                return Ok(done);
            }
        }
        let logits = (features / tau).matmul(rows.clone().transpose());
        let PositivesTerm {
            soft,
            mut loss,
            against,
        } = self.positives_term((logits, &rows), targets, positives, columns, reduce)?;
        let consistency = match &self.consistency {
            Some(c) => Some(soft.consistency(c.weight, layout, reduce)?),
            None => None,
        };
        let mut dz = soft.into_probs(1.0 / m as f64);
        let mut target_rows = None;
        match against {
            Against::Dense(q) => dz = dz - q,
            Against::Rows(v_t) => target_rows = Some(v_t),
        }
        if let Some((lc, dzc)) = consistency {
            loss = loss + lc;
            dz = dz + dzc;
        }
        let mut grad = dz.matmul(rows);
        if let Some(target_rows) = target_rows {
            grad = grad - target_rows;
        }
        let features_grad = reduce.sum(grad)? / tau;
        Ok(LossAndGrad {
            loss,
            features_grad,
        })
    }

    /// The whole step by [`host_step`] where it applies: the whole bank on one burn-flex device
    /// (no other shard waits for this one's row statistics), `f32`. `Ok(None)` elsewhere, and
    /// for targets outside the bank, which the burn path reports.
    ///
    /// # Shapes
    /// - `bank`: `[N, D]`, `features`: `[M, D]`, `targets`: `[M]`
    ///
    /// # Errors
    /// Group ids that are not one per bank row; consistency with fewer than 2 views.
    fn on_host<B: Backend>(
        &self,
        (bank, features): (&Tensor<B, 2>, &Tensor<B, 2>),
        targets: &Tensor<B, 1, Int>,
        positives: &Positives<B>,
        layout: ViewLayout,
    ) -> Result<Option<LossAndGrad<B>>> {
        if !(flex::is_host(bank) && flex::is_host(features)) {
            return Ok(None);
        }
        let [n, dim] = bank.dims();
        let groups = match positives {
            Positives::Groups(groups) => {
                check_groups(groups.dims(), n)?;
                Some(groups.to_data().iter::<i64>().collect::<Vec<_>>())
            }
            Positives::Own => None,
        };
        if self.consistency.is_some() {
            check_consistency_views(layout)?;
        }
        let targets: Option<Vec<usize>> = targets
            .to_data()
            .iter::<i64>()
            .map(|t| usize::try_from(t).ok().filter(|&t| t < n))
            .collect();
        let Some(targets) = targets else {
            return Ok(None);
        };
        let terms = host_objective::Terms {
            targets: &targets,
            groups: groups.as_deref(),
            consistency: self.consistency.map(|c| c.weight),
            layout,
        };
        let tau = self.temperature as f32;
        let step = flex::with_values(features, |features| {
            flex::with_values(bank, |bank| {
                host_step::loss_and_features_grad(features, bank, dim, tau, &terms)
            })
        });
        let Some(Some((grad, loss))) = step else {
            return Ok(None);
        };
        let device = features.device();
        let features_grad = TensorData::new(grad, [layout.rows(), dim]);
        Ok(Some(LossAndGrad {
            loss: Tensor::from_floats([loss as f32], &device),
            features_grad: Tensor::from_data(features_grad, &device),
        }))
    }

    /// The softmax of `logits` (`[M, N]`), the positives' loss and what it subtracts from `p/M`.
    /// The shifted logits are kept past the exponential only when a term reads them again;
    /// otherwise the exponential overwrites them (one `[M, N]` buffer fewer).
    fn positives_term<B: Backend, R: ShardReduce<B>>(
        &self,
        (logits, rows): (Tensor<B, 2>, &Tensor<B, 2>),
        targets: Tensor<B, 1, Int>,
        positives: &Positives<B>,
        columns: &ShardColumns,
        reduce: &mut R,
    ) -> std::result::Result<PositivesTerm<B>, R::Error> {
        match positives {
            Positives::Own => {
                let (column, inside) = columns.local(targets);
                let picked = logits.clone().gather(1, column.clone());
                let keep_shifted = self.consistency.is_some();
                let (soft, max) = Softmax::new(logits, keep_shifted, columns, reduce)?;
                let picked = picked - max;
                let (loss, target_rows) = soft.instance(picked, (column, inside), rows, reduce)?;
                Ok(PositivesTerm {
                    soft,
                    loss,
                    against: Against::Rows(target_rows),
                })
            }
            Positives::Groups(groups) => {
                let (soft, _) = Softmax::new(logits, true, columns, reduce)?;
                let (loss, q) = soft.merged(targets, groups.clone(), columns, reduce)?;
                Ok(PositivesTerm {
                    soft,
                    loss,
                    against: Against::Dense(q),
                })
            }
        }
    }
}

/// Fails unless bank rows of shape `[n, d]` are `columns`' rows and `features` have their
/// dimension.
pub(crate) fn check_shard<B: Backend>(
    [n, d]: [usize; 2],
    features: &Tensor<B, 2>,
    columns: &ShardColumns,
) -> Result<()> {
    if n != columns.rows.len() || columns.rows.end > columns.total {
        return Err(Error::Shape {
            what: "bank rows",
            expected: format!(
                "[{}, D] (rows {:?} of {})",
                columns.rows.len(),
                columns.rows,
                columns.total
            ),
            actual: vec![n, d],
        });
    }
    let [m, fd] = features.dims();
    if fd != d {
        return Err(Error::Shape {
            what: "features",
            expected: format!("[M, {d}]"),
            actual: vec![m, fd],
        });
    }
    Ok(())
}

/// Fails unless there is one group id per bank row.
fn check_groups(dims: [usize; 1], total: usize) -> Result<()> {
    if dims[0] == total {
        return Ok(());
    }
    Err(Error::Shape {
        what: "groups",
        expected: format!("[{total}] (one id per bank row)"),
        actual: dims.to_vec(),
    })
}

/// Fails unless `layout` has the 2 views per sample the consistency loss compares.
fn check_consistency_views(layout: ViewLayout) -> Result<()> {
    if layout.views >= 2 {
        return Ok(());
    }
    Err(Error::InvalidValue {
        field: "views",
        value: layout.views.to_string(),
        reason: "consistency needs at least 2 views per sample",
    })
}

/// The softmax of a step's logits with its positives' loss and what they subtract from `p/M`.
struct PositivesTerm<B: Backend> {
    soft: Softmax<B>,
    loss: Tensor<B, 1>,
    against: Against<B>,
}

/// What a positive term subtracts from the softmax's `p / M` in `∂L/∂z`: a dense `[M, N]`
/// distribution (merged groups), or, for one-hot targets, its product with the bank rows
/// directly, `[M, D]` (`e_t · V = V_t`: no `[M, N]` scatter, which copies the whole matrix).
enum Against<B: Backend> {
    /// `q / M`, `[M, N]`.
    Dense(Tensor<B, 2>),
    /// `V_t / M`, `[M, D]` (zero for targets outside the shard).
    Rows(Tensor<B, 2>),
}

/// A row-wise softmax kept as its exponentials and the normaliser (and the shifted logits when
/// a term needs them again); the probabilities are formed once, in place, at the end.
struct Softmax<B: Backend> {
    /// `z − max_n z`, `[M, N]`, when kept.
    shifted: Option<Tensor<B, 2>>,
    /// `exp(shifted)`, `[M, N]`
    exp: Tensor<B, 2>,
    /// `Σ_n exp(shifted)`, `[M, 1]`
    norm: Tensor<B, 2>,
}

impl<B: Backend> Softmax<B> {
    /// The softmax of `logits` (`[M, N]`) and the row maxima it shifted them by (`[M, 1]`, the
    /// maximum over every shard); `keep_shifted` keeps the shifted logits for
    /// [`Softmax::shifted`], otherwise the exponential overwrites them. On burn-flex the row
    /// passes are `host_softmax`'s.
    fn new<R: ShardReduce<B>>(
        logits: Tensor<B, 2>,
        keep_shifted: bool,
        columns: &ShardColumns,
        reduce: &mut R,
    ) -> Result<(Self, Tensor<B, 2>), R::Error> {
        let logits = if keep_shifted {
            logits
        } else {
            match host_softmax::exp_shifted(logits) {
                Ok(local) => return Self::from_local(local, columns, reduce),
                Err(logits) => logits,
            }
        };
        let max = reduce.max(logits.clone().max_dim(1))?;
        let shifted = logits - max.clone();
        let (shifted, (exp, sum)) = if keep_shifted {
            let exp_sum = host_softmax::exp_with_row_sums(&shifted)
                .unwrap_or_else(|| Self::exp_and_sum(shifted.clone()));
            (Some(shifted), exp_sum)
        } else {
            (None, Self::exp_and_sum(shifted))
        };
        let norm = reduce.sum(sum)?;
        Ok((Self { shifted, exp, norm }, max))
    }

    /// `exp(shifted)` and its row sums with burn's operations.
    fn exp_and_sum(shifted: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let exp = shifted.exp();
        let sum = exp.clone().sum_dim(1);
        (exp, sum)
    }

    /// The softmax from exponentials shifted by each shard's own row maxima: the shards'
    /// maxima and sums are combined (`exp(max_s − max)` rescales a shard's terms), and the
    /// exponentials rescaled when the bank is split.
    fn from_local<R: ShardReduce<B>>(
        local: host_softmax::RowExp<B>,
        columns: &ShardColumns,
        reduce: &mut R,
    ) -> Result<(Self, Tensor<B, 2>), R::Error> {
        let max = reduce.max(local.max.clone())?;
        let (exp, norm) = if columns.is_whole() {
            (local.exp, reduce.sum(local.sum)?)
        } else {
            let rescale = (local.max - max.clone()).exp();
            let norm = reduce.sum(local.sum * rescale.clone())?;
            (host_softmax::scale_rows(local.exp, rescale), norm)
        };
        let shifted = None;
        Ok((Self { shifted, exp, norm }, max))
    }

    /// The shifted logits; only called by terms that asked [`Softmax::new`] to keep them.
    fn shifted(&self) -> Tensor<B, 2> {
        self.shifted
            .clone()
            .expect("the softmax was built with keep_shifted")
    }

    fn rows(&self) -> usize {
        self.exp.dims()[0]
    }

    /// `p · scale`, `[M, N]`.
    fn probs(&self, scale: f64) -> Tensor<B, 2> {
        self.exp.clone() * (self.norm.clone().recip() * scale)
    }

    /// `p · scale`, `[M, N]`, formed in the exponentials' buffer.
    fn into_probs(self, scale: f64) -> Tensor<B, 2> {
        host_softmax::scale_rows(self.exp, self.norm.recip() * scale)
    }

    /// `log Σ_n exp(shifted)`, `[M, 1]`.
    fn log_norm(&self) -> Tensor<B, 2> {
        self.norm.clone().log()
    }

    /// `(−mean ℓ_{r,t_r}, V_t / M)`: the loss and the one-hot part of `∂L/∂z · V`
    /// (`∂L/∂z = (p − onehot(t)) / M`). `picked` are the rows' shifted logits at `column`;
    /// each target's logit and row come from the shard that holds its row (`inside`).
    ///
    /// # Shapes
    /// - `picked`, `column`, `inside`: `[M, 1]`; `rows`: `[N_s, D]`; output `[1]`, `[M, D]`
    fn instance<R: ShardReduce<B>>(
        &self,
        picked: Tensor<B, 2>,
        (column, inside): (Tensor<B, 2, Int>, Option<Tensor<B, 2>>),
        rows: &Tensor<B, 2>,
        reduce: &mut R,
    ) -> Result<(Tensor<B, 1>, Tensor<B, 2>), R::Error> {
        let m = self.rows();
        let target_rows = rows.clone().select(0, column.reshape([m])) / m as f64;
        let (picked, target_rows) = match inside {
            None => (picked, target_rows),
            Some(inside) => (reduce.sum(picked * inside.clone())?, target_rows * inside),
        };
        let picked = picked - self.log_norm();
        Ok((picked.mean().neg(), target_rows))
    }

    /// `(−mean log Σ_G p, q / M)`, `q` the softmax restricted to the target's group (the term
    /// `∂L/∂z = (p − q) / M` subtracts);
    /// `groups` holds every row's group id of the whole bank.
    fn merged<R: ShardReduce<B>>(
        &self,
        targets: Tensor<B, 1, Int>,
        groups: Tensor<B, 1, Int>,
        columns: &ShardColumns,
        reduce: &mut R,
    ) -> Result<(Tensor<B, 1>, Tensor<B, 2>), R::Error> {
        let [m, n] = self.exp.dims();
        check_groups(groups.dims(), columns.total)?;
        let target_group = groups.clone().select(0, targets).unsqueeze_dim::<2>(1);
        let own = if columns.is_whole() {
            groups
        } else {
            groups.slice(columns.rows.clone())
        };
        let outside = own
            .unsqueeze_dim::<2>(0)
            .expand([m, n])
            .not_equal(target_group.expand([m, n]));
        // −1e30, not −inf: the target is in its group, so each row's maximum is finite (a
        // shard without any of the group's rows contributes exp(−1e30 − max) = 0).
        let masked = self.shifted().mask_fill(outside, -1e30);
        let max = reduce.max(masked.clone().max_dim(1))?;
        let e = (masked - max.clone()).exp();
        let sum = reduce.sum(e.clone().sum_dim(1))?;
        let q = e * (sum.clone().recip() / m as f64);
        let log_group = sum.log() + max - self.log_norm();
        Ok((log_group.mean().neg(), q))
    }

    /// λ·consistency and its gradient with respect to the logits (module docs).
    fn consistency<R: ShardReduce<B>>(
        &self,
        weight: f64,
        layout: ViewLayout,
        reduce: &mut R,
    ) -> Result<(Tensor<B, 1>, Tensor<B, 2>), R::Error> {
        let [m, n] = self.exp.dims();
        let (b, k) = (layout.samples, layout.views);
        check_consistency_views(layout)?;
        let log_p = (self.shifted() - self.log_norm()).reshape([b, k, n]);
        let p = self.probs(1.0).reshape([b, k, n]);
        let mean_log_p = log_p.clone().mean_dim(1); // [B, 1, N]
        let centred = log_p - mean_log_p; // ℓ − m
        let s = reduce.sum((p.clone() * centred.clone()).sum_dim(2))?; // [B, K, 1]
        let scale = weight / (b * (k - 1)) as f64;
        let loss = s.clone().sum() * scale;
        let p_sum = p.clone().sum_dim(1) / k as f64; // P/K, [B, 1, N]
        let dz = (p * (centred + 1.0 - s)) - p_sum;
        Ok((loss, (dz * scale).reshape([m, n])))
    }
}
