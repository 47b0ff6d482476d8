//! The merged-positive loss of hard-negative mining (Bulat et al. §2.3).

use burn::prelude::*;

use crate::error::check_len;
use crate::{BankLogProbs, Error, Result};

/// `−(1/M) Σ_r log Σ_{j∈G(t_r)} p(j | x_r)`: every bank row in the target's group counts as a
/// positive, so merged samples stop being each other's negatives. With singleton groups this is
/// exactly [`crate::instance_loss`].
///
/// `groups[j]` is the group id of bank row j (any u32-range ids; equal ids = same group).
///
/// # Shapes
/// - `log_probs`: `[M, N]`
/// - `targets`: `[M]`, values in `0..N`
/// - `groups`: `[N]`
/// - output: `[1]`
pub fn merged_positive_loss<B: Backend>(
    log_probs: &BankLogProbs<B>,
    targets: Tensor<B, 1, Int>,
    groups: Tensor<B, 1, Int>,
) -> Result<Tensor<B, 1>> {
    let [m, n] = log_probs.dims();
    check_len("targets", targets.dims(), m)?;
    if groups.dims()[0] != n {
        return Err(Error::Shape {
            what: "groups",
            expected: format!("[{n}] (one id per bank row)"),
            actual: groups.dims().to_vec(),
        });
    }
    let target_group = groups.clone().select(0, targets);
    let in_group = groups
        .unsqueeze_dim::<2>(0)
        .expand([m, n])
        .equal(target_group.unsqueeze_dim::<2>(1).expand([m, n]));
    // Log-sum-exp over the group only: other entries are pushed to −1e30 (not −inf, whose
    // differences would be NaN). The target is in its own group, so the maximum is finite.
    // Works on the shifted logits: log Σ_G p = logsumexp_G(shifted) − log-normaliser.
    let masked = log_probs.shifted().mask_fill(in_group.bool_not(), -1e30);
    let max = masked.clone().max_dim(1).detach();
    let log_sum = (masked - max.clone()).exp().sum_dim(1).log() + max - log_probs.log_norm();
    Ok(log_sum.mean().neg())
}
