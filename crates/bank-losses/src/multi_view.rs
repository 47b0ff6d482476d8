//! Bulat et al.'s large mini-batch loss (eq. 2).

use bank_core::ViewLayout;
use burn::prelude::*;

use crate::error::check_layout;
use crate::{BankLogProbs, Result, instance_loss};

/// `−(1/(B·K)) Σ_i Σ_k log p(i | x_i^(k))`: every one of the K views of each of the B samples is
/// classified against the bank with its sample's index as target. Rows follow [`ViewLayout`].
///
/// This is the instance loss over all `B·K` rows; the layout is checked so that a batch built
/// with another K is caught.
///
/// # Shapes
/// - `log_probs`: `[B·K, N]`
/// - `indices`: `[B·K]`, each sample's index repeated K times
/// - output: `[1]`
pub fn multi_view_loss<B: Backend>(
    log_probs: &BankLogProbs<B>,
    indices: Tensor<B, 1, Int>,
    layout: ViewLayout,
) -> Result<Tensor<B, 1>> {
    check_layout(log_probs.dims(), layout)?;
    instance_loss(log_probs, indices)
}
