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
//!   `∂L/∂z_r = (p_r − e_{t_r}) / M`;
//! - merged positives (Bulat §2.3): `L = −(1/M) Σ_r log Σ_{j∈G(t_r)} p_rj`,
//!   `∂L/∂z_r = (p_r − q_r) / M` with `q_r` the softmax of `z_r` restricted to the group;
//! - consistency (Bulat eq. 3): `L = λ/(B(K−1)) Σ_i Σ_k s_ik`, `s_ik = Σ_n p_ikn (ℓ_ikn − m_in)`,
//!   `m_i = (1/K) Σ_j ℓ_ij`, and `∂L/∂z_ik = λ/(B(K−1)) · (p_ik ⊙ (ℓ_ik + 1 − m_i − s_ik) − P_i/K)`
//!   with `P_i = Σ_j p_ij`;
//! - and for the features, `∂L/∂f = (∂L/∂z) · V / τ` (the bank is a constant).

use bank_core::{MemoryBank, ViewLayout};
use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

use crate::error::{check_layout, check_len, positive};
use crate::{ConsistencyLoss, Error, Result};

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
        })
    }

    /// Adds λ·consistency (needs K ≥ 2 views; a weight of 0 adds nothing).
    pub fn with_consistency(mut self, consistency: Option<ConsistencyLoss>) -> Self {
        self.consistency = consistency.filter(|c| c.weight != 0.0);
        self
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
        let tau = self.temperature;
        let logits = bank.similarities(features / tau)?;
        let [m, n] = logits.dims();
        check_layout([m, n], layout)?;
        check_len("targets", targets.dims(), m)?;
        let soft = Softmax::new(logits);
        let (mut loss, mut dz) = match positives {
            Positives::Own => soft.instance(targets),
            Positives::Groups(groups) => soft.merged(targets, groups.clone())?,
        };
        if let Some(c) = &self.consistency {
            let (lc, dzc) = soft.consistency(c.weight, layout)?;
            loss = loss + lc;
            dz = dz + dzc;
        }
        let features_grad = dz.matmul(bank.rows()) / tau;
        Ok(LossAndGrad {
            loss,
            features_grad,
        })
    }
}

/// A row-wise softmax kept as shifted logits, their exponentials and the normaliser; the
/// probabilities are formed only where a loss needs them (one `[M, N]` pass fewer for the
/// instance loss, whose `(p − e_t)/M` scales the exponentials once).
struct Softmax<B: Backend> {
    /// `z − max_n z`, `[M, N]`
    shifted: Tensor<B, 2>,
    /// `exp(shifted)`, `[M, N]`
    exp: Tensor<B, 2>,
    /// `Σ_n exp(shifted)`, `[M, 1]`
    norm: Tensor<B, 2>,
}

impl<B: Backend> Softmax<B> {
    fn new(logits: Tensor<B, 2>) -> Self {
        let shifted = logits.clone() - logits.max_dim(1);
        let exp = shifted.clone().exp();
        let norm = exp.clone().sum_dim(1);
        Self { shifted, exp, norm }
    }

    fn rows(&self) -> usize {
        self.exp.dims()[0]
    }

    /// `p · scale`, `[M, N]`.
    fn probs(&self, scale: f64) -> Tensor<B, 2> {
        self.exp.clone() * (self.norm.clone().recip() * scale)
    }

    /// `log Σ_n exp(shifted)`, `[M, 1]`.
    fn log_norm(&self) -> Tensor<B, 2> {
        self.norm.clone().log()
    }

    /// `(−mean ℓ_{r,t_r}, (p − onehot(t)) / M)`.
    fn instance(&self, targets: Tensor<B, 1, Int>) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let m = self.rows();
        let column = targets.unsqueeze_dim::<2>(1);
        let picked = self.shifted.clone().gather(1, column.clone()) - self.log_norm();
        let minus = Tensor::<B, 2>::full([m, 1], -1.0 / m as f64, &self.exp.device());
        let dz = self
            .probs(1.0 / m as f64)
            .scatter(1, column, minus, IndexingUpdateOp::Add);
        (picked.mean().neg(), dz)
    }

    /// `(−mean log Σ_G p, (p − q) / M)`, `q` the softmax restricted to the target's group.
    fn merged(
        &self,
        targets: Tensor<B, 1, Int>,
        groups: Tensor<B, 1, Int>,
    ) -> Result<(Tensor<B, 1>, Tensor<B, 2>)> {
        let [m, n] = self.exp.dims();
        if groups.dims()[0] != n {
            return Err(Error::Shape {
                what: "groups",
                expected: format!("[{n}] (one id per bank row)"),
                actual: groups.dims().to_vec(),
            });
        }
        let target_group = groups.clone().select(0, targets).unsqueeze_dim::<2>(1);
        let outside = groups
            .unsqueeze_dim::<2>(0)
            .expand([m, n])
            .not_equal(target_group.expand([m, n]));
        // −1e30, not −inf: the target is in its group, so each row's maximum is finite.
        let masked = self.shifted.clone().mask_fill(outside, -1e30);
        let max = masked.clone().max_dim(1);
        let e = (masked - max.clone()).exp();
        let sum = e.clone().sum_dim(1);
        let q = e * (sum.clone().recip() / m as f64);
        let log_group = sum.log() + max - self.log_norm();
        Ok((log_group.mean().neg(), self.probs(1.0 / m as f64) - q))
    }

    /// λ·consistency and its gradient with respect to the logits (module docs).
    fn consistency(&self, weight: f64, layout: ViewLayout) -> Result<(Tensor<B, 1>, Tensor<B, 2>)> {
        let [m, n] = self.exp.dims();
        let (b, k) = (layout.samples, layout.views);
        if k < 2 {
            return Err(Error::InvalidValue {
                field: "views",
                value: k.to_string(),
                reason: "consistency needs at least 2 views per sample",
            });
        }
        let log_p = (self.shifted.clone() - self.log_norm()).reshape([b, k, n]);
        let p = self.probs(1.0).reshape([b, k, n]);
        let mean_log_p = log_p.clone().mean_dim(1); // [B, 1, N]
        let centred = log_p - mean_log_p; // ℓ − m
        let s = (p.clone() * centred.clone()).sum_dim(2); // [B, K, 1]
        let scale = weight / (b * (k - 1)) as f64;
        let loss = s.clone().sum() * scale;
        let p_sum = p.clone().sum_dim(1) / k as f64; // P/K, [B, 1, N]
        let dz = (p * (centred + 1.0 - s)) - p_sum;
        Ok((loss, (dz * scale).reshape([m, n])))
    }
}
