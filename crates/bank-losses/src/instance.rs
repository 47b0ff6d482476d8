//! NPID's instance loss over the full bank softmax.

use burn::prelude::*;

use crate::error::check_len;
use crate::{BankLogProbs, Result};

/// `−(1/M) Σ_r log p(t_r | x_r)`: each feature classified against the whole bank, its own bank
/// index `t_r` as target.
///
/// # Shapes
/// - `log_probs`: `[M, N]`
/// - `targets`: `[M]`, values in `0..N`
/// - output: `[1]`
pub fn instance_loss<B: Backend>(
    log_probs: &BankLogProbs<B>,
    targets: Tensor<B, 1, Int>,
) -> Result<Tensor<B, 1>> {
    let [m, _] = log_probs.dims();
    check_len("targets", targets.dims(), m)?;
    Ok(log_probs.pick(targets).mean().neg())
}
