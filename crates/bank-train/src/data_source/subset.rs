//! Which items a run uses: the first few per class, or an even spread of the test set.

/// Indices of the first `per_class` items of every class; `per_class = 0` keeps everything
/// (bank-data's [`bank_data::first_per_class`] otherwise).
pub fn first_per_class(labels: Option<&[u32]>, len: usize, per_class: usize) -> Vec<usize> {
    if per_class == 0 {
        return (0..len).collect();
    }
    bank_data::first_per_class(labels, len, per_class)
}

/// `limit` indices spread evenly over `0..len` (so a class-sorted set keeps every class);
/// `limit = 0` or `limit >= len` keeps everything.
pub fn spread(len: usize, limit: usize) -> Vec<usize> {
    if limit == 0 || limit >= len {
        return (0..len).collect();
    }
    let step = len as f64 / limit as f64;
    (0..limit).map(|i| (i as f64 * step) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_per_class_counts_each_class() {
        let labels = [0, 1, 0, 2, 1, 0, 2, 2];
        assert_eq!(first_per_class(Some(&labels), 8, 2), [0, 1, 2, 3, 4, 6]);
        assert_eq!(first_per_class(None, 8, 3), [0, 1, 2]);
        assert_eq!(first_per_class(Some(&labels), 8, 0).len(), 8);
    }

    #[test]
    fn spread_is_even() {
        assert_eq!(spread(10, 5), [0, 2, 4, 6, 8]);
        assert_eq!(spread(3, 5), [0, 1, 2]);
    }
}
