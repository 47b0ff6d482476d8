//! The row layout of a multi-view batch, defined once for every crate.

/// Layout of a batch of `samples` images, each augmented `views` times (Bulat et al.'s large
/// mini-batch): the batch has `samples · views` rows, **sample-major**, so the `views` rows of one
/// sample are contiguous.
///
/// Row `r` holds view `r % views` of sample `r / views`:
///
/// ```text
/// row:    0     1    ..  K-1    K     K+1  ..
///         s0v0  s0v1 ..  s0vK-1 s1v0  s1v1 ..
/// ```
///
/// A `[samples · views, X]` tensor therefore reshapes to `[samples, views, X]` without copying, and
/// the index tensor of such a batch repeats each sample's bank index `views` times in a row.
/// The data loader produces this layout and the losses and bank update consume it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewLayout {
    /// Distinct samples in the batch (B).
    pub samples: usize,
    /// Augmented views per sample (K).
    pub views: usize,
}

impl ViewLayout {
    /// A layout of `samples` samples with `views` views each.
    pub fn new(samples: usize, views: usize) -> Self {
        Self { samples, views }
    }

    /// The layout of a batch of `rows` rows with `views` views per sample, or `None` when `rows` is
    /// not a positive multiple of `views`.
    pub fn from_rows(rows: usize, views: usize) -> Option<Self> {
        (views > 0 && rows > 0 && rows.is_multiple_of(views))
            .then(|| Self::new(rows / views, views))
    }

    /// Total rows, `samples · views`.
    pub fn rows(&self) -> usize {
        self.samples * self.views
    }

    /// The row holding view `view` of sample `sample`.
    pub fn row(&self, sample: usize, view: usize) -> usize {
        debug_assert!(sample < self.samples && view < self.views);
        sample * self.views + view
    }

    /// `(sample, view)` of row `row`.
    pub fn position(&self, row: usize) -> (usize, usize) {
        (row / self.views, row % self.views)
    }

    /// Expands per-sample values into per-row values in this layout (each repeated `views` times).
    pub fn expand<T: Clone>(&self, per_sample: &[T]) -> Vec<T> {
        per_sample
            .iter()
            .flat_map(|v| std::iter::repeat_n(v.clone(), self.views))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_positions_are_inverse() {
        let l = ViewLayout::new(3, 4);
        for r in 0..l.rows() {
            let (s, v) = l.position(r);
            assert_eq!(l.row(s, v), r);
        }
        assert_eq!(l.position(5), (1, 1));
        assert_eq!(l.expand(&[7, 8]), vec![7, 7, 7, 7, 8, 8, 8, 8]);
        assert_eq!(ViewLayout::from_rows(12, 4), Some(l));
        assert_eq!(ViewLayout::from_rows(10, 4), None);
        assert_eq!(ViewLayout::from_rows(10, 0), None);
    }
}
