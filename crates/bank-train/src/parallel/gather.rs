//! The all-gather that burn-collective lacks, for the bank update: an all-reduce (sum) of a
//! zero-filled block in which each replica fills its own rows.

use burn::prelude::*;

use super::sync::sum;
use crate::Result;

/// Bank indices travel as two f32 columns, `index / SPLIT` and `index % SPLIT`, each exact in
/// f32 (< 2^24), so indices up to 2^36 survive the float all-reduce bit for bit.
const SPLIT: i64 = 4096;

/// Every replica's bank update rows, in rank order, on every replica.
///
/// `local` is this replica's `(indices [M_r], features [M_r, D])` (`None` for an empty shard);
/// its rows land at `offset..offset + M_r` of the `[rows, D]` result. Adding zeros is exact,
/// so every replica receives the same bits the owner sent.
///
/// # Errors
/// [`Error::Collective`] when the all-reduce fails.
pub fn gather_updates<B: Backend>(
    rank: usize,
    local: Option<(Tensor<B, 1, Int>, Tensor<B, 2>)>,
    (offset, rows, dim): (usize, usize, usize),
    device: &B::Device,
) -> Result<(Tensor<B, 1, Int>, Tensor<B, 2>)> {
    let mut block = Tensor::<B, 2>::zeros([rows, dim + 2], device);
    if let Some((indices, features)) = local {
        let m = indices.dims()[0];
        let high = indices.clone().div_scalar(SPLIT).float().reshape([m, 1]);
        let low = indices.remainder_scalar(SPLIT).float().reshape([m, 1]);
        let mine = Tensor::cat(vec![features, high, low], 1);
        block = block.slice_assign([offset..offset + m, 0..dim + 2], mine);
    }
    let block = sum(rank, block, "all-reduce of the bank update")?;
    let features = block.clone().slice([0..rows, 0..dim]);
    let high = block.clone().slice([0..rows, dim..dim + 1]).int();
    let low = block.slice([0..rows, dim + 1..dim + 2]).int();
    let indices = (high.mul_scalar(SPLIT) + low).reshape([rows]);
    Ok((indices, features))
}
