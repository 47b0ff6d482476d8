//! Bulat et al.'s consistency loss (eq. 3).

use bank_core::ViewLayout;
use burn::prelude::*;

use crate::error::{check_layout, positive};
use crate::{BankLogProbs, Error, Result};

/// `λ · (1/B) Σ_i (1/(K(K−1))) Σ_k Σ_{j≠k} KL(p(·|x_i^k) ‖ p(·|x_i^j))` over the bank softmax:
/// the K views of a sample are pulled towards the same distribution over the bank.
///
/// The sum over ordered pairs makes it symmetric. **Gradients flow through both distributions**
/// of every pair (neither is detached as a target), so each view is moved towards the others.
///
/// Computed in O(K·N) per sample instead of O(K²·N), using
/// `Σ_{k,j} KL(p_k‖p_j) = K · Σ_k Σ_n p_k (log p_k − mean_j log p_j)` (the j = k terms are 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsistencyLoss {
    /// The weight λ (≥ 0; 0 switches the loss off).
    pub weight: f64,
}

impl ConsistencyLoss {
    /// A consistency loss of weight `weight` (finite, ≥ 0).
    pub fn new(weight: f64) -> Result<Self> {
        if weight != 0.0 {
            positive("consistency weight", weight)?;
        }
        Ok(Self { weight })
    }

    /// The weighted loss; rows follow [`ViewLayout`]. Needs K ≥ 2 views.
    ///
    /// # Shapes
    /// - `log_probs`: `[B·K, N]`
    /// - output: `[1]`
    pub fn forward<B: Backend>(
        &self,
        log_probs: &BankLogProbs<B>,
        layout: ViewLayout,
    ) -> Result<Tensor<B, 1>> {
        check_layout(log_probs.dims(), layout)?;
        let n = log_probs.dims()[1];
        let k = layout.views;
        if k < 2 {
            return Err(Error::InvalidValue {
                field: "views",
                value: k.to_string(),
                reason: "consistency needs at least 2 views per sample",
            });
        }
        let log_p = log_probs.tensor().reshape([layout.samples, k, n]);
        let p = log_p.clone().exp();
        let mean_log_p = log_p.clone().mean_dim(1); // [B, 1, N]
        let pair_sum = (p * (log_p - mean_log_p)).sum() * k as f64; // Σ over samples and pairs
        let per_pair = pair_sum / (layout.samples * k * (k - 1)) as f64;
        Ok(per_pair * self.weight)
    }
}
