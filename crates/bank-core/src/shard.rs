//! Indices of the whole bank seen from a shard that holds a range of its rows (a bank split by
//! rows across devices).

use std::ops::Range;

use burn::prelude::*;

/// The position of each index of the whole bank inside the shard that holds the bank rows
/// `rows` (clamped into the shard, so it is always a valid row of it), and a weight: 1 for the
/// indices the shard holds, 0 for the others. Multiply what an index contributes by the weight
/// to drop the contributions of rows held elsewhere.
///
/// `rows` must not be empty.
///
/// # Shapes
/// - `indices`: `[R]`, indices of the whole bank
/// - output: `([R], [R])`
pub fn shard_positions<B: Backend>(
    indices: Tensor<B, 1, Int>,
    rows: Range<usize>,
) -> (Tensor<B, 1, Int>, Tensor<B, 1>) {
    let last = rows.len() as i64 - 1;
    let local = indices.sub_scalar(rows.start as i64);
    let inside =
        local.clone().greater_equal_elem(0).float() * local.clone().lower_equal_elem(last).float();
    (local.clamp(0, last), inside)
}
