//! The bank softmax, computed once and shared by the softmax losses.

use bank_core::MemoryBank;
use burn::prelude::*;

use crate::Result;
use crate::error::positive;

/// `log p(j|x) = s_j/τ − log Σ_n exp(s_n/τ)`, row by row, with the row maximum subtracted so that
/// no exponential overflows (τ = 0.02 gives logits of ±50; exp(50) is fine, exp(5000) is not).
///
/// Kept in two parts, the shifted logits `[M, N]` and the log-normaliser `[M, 1]`, so that a loss
/// that needs a few entries per row (the instance loss) never materialises the full `[M, N]`
/// log-probabilities, forward or backward.
#[derive(Debug, Clone)]
pub struct BankLogProbs<B: Backend> {
    /// `s/τ − max_n s_n/τ`
    shifted: Tensor<B, 2>,
    /// `log Σ_n exp(shifted)`, `[M, 1]`
    log_norm: Tensor<B, 2>,
    temperature: f64,
}

impl<B: Backend> BankLogProbs<B> {
    /// Log-softmax of `similarities / temperature`; `temperature` must be finite and > 0.
    ///
    /// # Shapes
    /// - `similarities`: `[M, N]`, one row per feature, one column per bank row
    pub fn new(similarities: Tensor<B, 2>, temperature: f64) -> Result<Self> {
        positive("temperature", temperature)?;
        Ok(Self::from_logits(similarities / temperature, temperature))
    }

    /// The same as `new(bank.similarities(features)?, temperature)`, but with 1/τ applied to the
    /// `[M, D]` features instead of the `[M, N]` similarities (one full-size operation less in the
    /// forward and in the backward pass).
    ///
    /// # Shapes
    /// - `features`: `[M, D]`
    pub fn from_features(
        bank: &MemoryBank<B>,
        features: Tensor<B, 2>,
        temperature: f64,
    ) -> Result<Self> {
        positive("temperature", temperature)?;
        let logits = bank.similarities(features / temperature)?;
        Ok(Self::from_logits(logits, temperature))
    }

    fn from_logits(logits: Tensor<B, 2>, temperature: f64) -> Self {
        // The maximum only shifts the logits; it carries no gradient of its own.
        let shifted = logits.clone() - logits.max_dim(1).detach();
        let log_norm = shifted.clone().exp().sum_dim(1).log();
        Self {
            shifted,
            log_norm,
            temperature,
        }
    }

    /// The full log-probabilities.
    ///
    /// # Shapes
    /// - output: `[M, N]`
    pub fn tensor(&self) -> Tensor<B, 2> {
        self.shifted.clone() - self.log_norm.clone()
    }

    /// `log p(t_r | x_r)` for one column per row.
    ///
    /// # Shapes
    /// - `targets`: `[M]`, values in `0..N`
    /// - output: `[M, 1]`
    pub fn pick(&self, targets: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        self.shifted.clone().gather(1, targets.unsqueeze_dim(1)) - self.log_norm.clone()
    }

    /// `s/τ − max_n s_n/τ`, `[M, N]`.
    pub(crate) fn shifted(&self) -> Tensor<B, 2> {
        self.shifted.clone()
    }

    /// `log Σ_n exp(shifted)`, `[M, 1]`.
    pub(crate) fn log_norm(&self) -> Tensor<B, 2> {
        self.log_norm.clone()
    }

    /// The temperature τ they were computed with.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// `[M, N]`.
    pub fn dims(&self) -> [usize; 2] {
        self.shifted.dims()
    }
}
