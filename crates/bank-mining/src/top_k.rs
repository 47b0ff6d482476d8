//! One query's best-so-far neighbours, and the scan that offers it a row of similarities.
//!
//! Both search engines (`device` and `host`) select with it, so they agree on ties and NaNs.

/// Values scanned per chunk: a chunk with nothing above the current k-th best is passed over with
/// a few vector compares instead of a branch per value. Past the first chunks of a row almost
/// every chunk is passed over, which keeps the selection cheap next to the matmul.
const CHUNK: usize = 16;

/// A similarity as ranked: NaN ranks below every number, so it never displaces one.
fn rank(sim: f32) -> f32 {
    if sim.is_nan() { f32::NEG_INFINITY } else { sim }
}

/// One row's best-so-far list, kept sorted by (similarity desc, index asc).
#[derive(Clone)]
pub(crate) struct TopK {
    pub(crate) items: Vec<(f32, u32)>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            items: Vec::with_capacity(k + 1),
        }
    }

    /// Offers one neighbour. Offered in increasing index order among equal similarities, the
    /// lower index wins ties.
    pub(crate) fn offer(&mut self, k: usize, sim: f32, idx: u32) {
        // Columns arrive in increasing index order, so an equal similarity never displaces an
        // earlier (lower) index: ties go to the lower index.
        let key = rank(sim);
        if self.items.len() == k {
            if key <= rank(self.items[k - 1].0) {
                return;
            }
            self.items.pop();
        }
        let pos = self.items.partition_point(|&(s, _)| rank(s) >= key);
        self.items.insert(pos, (sim, idx));
    }

    /// Offers every value of `row` (similarities to columns `col0..`) but column `skip`, in column
    /// order; the same result as offering them one by one.
    pub(crate) fn scan(&mut self, k: usize, row: &[f32], col0: usize, skip: Option<usize>) {
        let (chunks, rest) = row.as_chunks::<CHUNK>();
        for (i, chunk) in chunks.iter().enumerate() {
            if self.items.len() == k {
                let kth = rank(self.items[k - 1].0);
                // `|`, not `any`: no early exit, so this compiles to vector compares. A chunk
                // with no value above the k-th best (NaN included) would offer nothing.
                if !chunk.iter().fold(false, |above, &s| above | (s > kth)) {
                    continue;
                }
            }
            self.offer_each(k, chunk, col0 + i * CHUNK, skip);
        }
        self.offer_each(k, rest, col0 + chunks.len() * CHUNK, skip);
    }

    fn offer_each(&mut self, k: usize, values: &[f32], col0: usize, skip: Option<usize>) {
        for (c, &sim) in values.iter().enumerate() {
            let j = col0 + c;
            if skip != Some(j) {
                self.offer(k, sim, j as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The chunked scan keeps exactly what offering each value in turn keeps: many ties (values
    /// on a coarse grid), NaNs, rows of every length around the chunk width, the skipped column
    /// anywhere.
    #[test]
    fn scan_equals_offering_each_value() {
        let mut rng = StdRng::seed_from_u64(7);
        for trial in 0..2000 {
            let k = rng.random_range(1..12);
            let len = rng.random_range(0..5 * CHUNK);
            let row: Vec<f32> = (0..len)
                .map(|_| match rng.random_range(0..20) {
                    0 => f32::NAN,
                    _ => (rng.random_range(-8..=8) as f32) / 8.0,
                })
                .collect();
            let col0 = rng.random_range(0..100);
            let skip = rng
                .random_bool(0.5)
                .then(|| col0 + rng.random_range(0..len.max(1)));
            // Start some lists part-filled, as from an earlier block.
            let mut seed = TopK::new(k);
            for j in 0..rng.random_range(0..2 * k) {
                seed.offer(k, (rng.random_range(-8..=8) as f32) / 8.0, j as u32);
            }
            let (mut fast, mut slow) = (seed.clone(), seed);
            fast.scan(k, &row, col0 + 50, skip.map(|s| s + 50));
            slow.offer_each(k, &row, col0 + 50, skip.map(|s| s + 50));
            assert_eq!(
                format!("{:?}", fast.items),
                format!("{:?}", slow.items),
                "trial {trial}"
            );
        }
    }
}
