//! Row normalisation shared by the bank and the models.

use burn::prelude::*;

/// Divides each row of `x` by its L2 norm (norms below 1e-12 are clamped, so a zero row stays zero
/// instead of becoming NaN).
///
/// # Shapes
/// - `x`: `[M, D]` → `[M, D]`
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}
