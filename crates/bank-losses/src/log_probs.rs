//! The bank softmax, computed once and shared by the softmax losses.

use burn::prelude::*;

use crate::Result;
use crate::error::positive;

/// `log p(j|x) = s_j/τ − log Σ_n exp(s_n/τ)`, row by row, computed with the row maximum subtracted
/// so that no exponential overflows (τ = 0.02 gives logits of ±50; exp(50) is fine, exp(5000) is not).
#[derive(Debug, Clone)]
pub struct BankLogProbs<B: Backend> {
    log_probs: Tensor<B, 2>,
    temperature: f64,
}

impl<B: Backend> BankLogProbs<B> {
    /// Log-softmax of `similarities / temperature`; `temperature` must be finite and > 0.
    ///
    /// # Shapes
    /// - `similarities`: `[M, N]`, one row per feature, one column per bank row
    pub fn new(similarities: Tensor<B, 2>, temperature: f64) -> Result<Self> {
        positive("temperature", temperature)?;
        let logits = similarities / temperature;
        // The maximum only shifts the logits; it carries no gradient of its own.
        let shifted = logits.clone() - logits.max_dim(1).detach();
        let log_norm = shifted.clone().exp().sum_dim(1).log();
        Ok(Self {
            log_probs: shifted - log_norm,
            temperature,
        })
    }

    /// The log-probabilities.
    ///
    /// # Shapes
    /// - output: `[M, N]`
    pub fn tensor(&self) -> &Tensor<B, 2> {
        &self.log_probs
    }

    /// The temperature τ they were computed with.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// `[M, N]`.
    pub fn dims(&self) -> [usize; 2] {
        self.log_probs.dims()
    }
}
