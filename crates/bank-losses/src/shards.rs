//! A bank split by rows across devices, seen from one shard: which columns of the `[M, N]`
//! similarities it holds, and how the softmax's row statistics are combined across the shards.
//!
//! The scheme is PartialFC's (Deng et al., "Partial FC: Training 10 Million Identities on a
//! Single Machine", ICCV-W 2021): every shard computes the logits of all `M` features against
//! its own rows; the row maxima, the sums of exponentials (and the consistency term's row sums)
//! are combined across the shards, so the full softmax stays exact while no device holds more
//! than its `[M, N/W]` block.

use std::ops::Range;

use bank_core::shard_positions;
use burn::prelude::*;

use crate::Error;

/// Combines row statistics computed on one shard's columns with those of every other shard.
///
/// Every shard must call the same methods in the same order (an implementation over
/// collective operations waits for all of them).
pub trait ShardReduce<B: Backend> {
    /// The error of a failed combination; the losses' own errors convert into it.
    type Error: From<Error>;

    /// The element-wise sum over the shards.
    ///
    /// # Errors
    /// When the combination fails (e.g. a collective operation).
    fn sum<const D: usize>(&mut self, tensor: Tensor<B, D>) -> Result<Tensor<B, D>, Self::Error>;

    /// The element-wise maximum over the shards.
    ///
    /// # Shapes
    /// - `tensor`: `[M, 1]`, and the output
    ///
    /// # Errors
    /// When the combination fails.
    fn max(&mut self, tensor: Tensor<B, 2>) -> Result<Tensor<B, 2>, Self::Error>;

    /// Whether this is the only shard, so that every combination is the identity and a shard
    /// may compute without calling [`ShardReduce::sum`] and [`ShardReduce::max`] (no other
    /// shard waits for them). `false` unless an implementation knows it.
    fn is_alone(&self) -> bool {
        false
    }
}

/// One shard that holds every column: nothing to combine (the single-device case).
#[derive(Debug, Clone, Copy, Default)]
pub struct WholeBank;

impl<B: Backend> ShardReduce<B> for WholeBank {
    type Error = Error;

    fn sum<const D: usize>(&mut self, tensor: Tensor<B, D>) -> Result<Tensor<B, D>, Error> {
        Ok(tensor)
    }

    fn max(&mut self, tensor: Tensor<B, 2>) -> Result<Tensor<B, 2>, Error> {
        Ok(tensor)
    }

    fn is_alone(&self) -> bool {
        true
    }
}

/// The columns of the whole bank one shard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardColumns {
    /// Its bank rows, `first..end` of the whole bank.
    pub rows: Range<usize>,
    /// Rows of the whole bank, N.
    pub total: usize,
}

impl ShardColumns {
    /// Every row of a bank of `total` rows.
    pub fn whole(total: usize) -> Self {
        Self {
            rows: 0..total,
            total,
        }
    }

    /// Rank `rank`'s rows when `total` rows are split over `world` shards as evenly as they go
    /// (the first `total % world` shards hold one row more).
    ///
    /// # Panics
    /// Never for `rank < world`; `world` must be > 0.
    pub fn split(total: usize, world: usize, rank: usize) -> Self {
        let (base, extra) = (total / world, total % world);
        let first = rank * base + rank.min(extra);
        let len = base + usize::from(rank < extra);
        Self {
            rows: first..first + len,
            total,
        }
    }

    /// Whether this shard holds every row.
    pub fn is_whole(&self) -> bool {
        self.rows.start == 0 && self.rows.end == self.total
    }

    /// The column of each target inside this shard (clamped into it) and, unless the shard is
    /// whole, a `[M, 1]` weight: 1 for targets inside, 0 for the others.
    pub(crate) fn local<B: Backend>(
        &self,
        targets: Tensor<B, 1, Int>,
    ) -> (Tensor<B, 2, Int>, Option<Tensor<B, 2>>) {
        if self.is_whole() {
            return (targets.unsqueeze_dim(1), None);
        }
        let (local, inside) = shard_positions(targets, self.rows.clone());
        (local.unsqueeze_dim(1), Some(inside.unsqueeze_dim(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::ShardColumns;

    #[test]
    fn splits_cover_every_row_once_and_differ_by_at_most_one() {
        for (total, world) in [(10, 3), (50, 4), (7, 7), (3, 2), (1000, 1)] {
            let parts: Vec<_> = (0..world)
                .map(|r| ShardColumns::split(total, world, r).rows)
                .collect();
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts[world - 1].end, total);
            for pair in parts.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert!(pair[0].len() == pair[1].len() || pair[0].len() == pair[1].len() + 1);
            }
        }
        assert_eq!(ShardColumns::split(10, 3, 0).rows, 0..4);
        assert_eq!(ShardColumns::split(10, 3, 2).rows, 7..10);
        assert!(ShardColumns::split(10, 1, 0).is_whole());
    }
}
