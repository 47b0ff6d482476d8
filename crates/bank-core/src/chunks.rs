//! Column-blocked similarities.

use burn::prelude::*;

/// Iterator over blocks of `features · Vᵀ`, at most `max_columns` bank rows per block.
/// Made by [`crate::MemoryBank::similarity_chunks`].
#[derive(Debug)]
pub struct SimilarityChunks<'a, B: Backend> {
    rows: &'a Tensor<B, 2>,
    features: Tensor<B, 2>,
    max_columns: usize,
    next: usize,
}

impl<'a, B: Backend> SimilarityChunks<'a, B> {
    pub(crate) fn new(rows: &'a Tensor<B, 2>, features: Tensor<B, 2>, max_columns: usize) -> Self {
        Self {
            rows,
            features,
            max_columns,
            next: 0,
        }
    }
}

impl<B: Backend> Iterator for SimilarityChunks<'_, B> {
    /// `(index of the first bank row of the block, [M, c] similarities)`.
    type Item = (usize, Tensor<B, 2>);

    fn next(&mut self) -> Option<Self::Item> {
        let [n, d] = self.rows.dims();
        if self.next >= n {
            return None;
        }
        let start = self.next;
        let end = (start + self.max_columns).min(n);
        self.next = end;
        let block = self
            .rows
            .clone()
            .slice([start..end, 0..d])
            .cast(crate::bank::compute_dtype::<B>());
        Some((start, self.features.clone().matmul(block.transpose())))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rows.dims()[0];
        let left = n.saturating_sub(self.next).div_ceil(self.max_columns);
        (left, Some(left))
    }
}

impl<B: Backend> ExactSizeIterator for SimilarityChunks<'_, B> {}
