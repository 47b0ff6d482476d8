//! Exact top-k neighbours against the bank, computed block by block within a memory budget.

use bank_core::MemoryBank;
use burn::prelude::*;
use rayon::prelude::*;

use crate::error::invalid;
use crate::{Error, Result};

/// How a neighbour search runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnnConfig {
    /// Neighbours per query.
    pub k: usize,
    /// Most bytes of similarities alive at once (the device block plus its host copy).
    /// Default 256 MiB: enough for N = 1,281,167 (ImageNet) in blocks on a CPU.
    pub memory_budget: usize,
}

impl KnnConfig {
    /// Top-`k` with the default 256 MiB budget.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            memory_budget: 256 << 20,
        }
    }

    /// Sets the memory budget in bytes.
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// `(query rows, bank columns)` per block, so that `rows × cols × 4 bytes × 2 ≤ budget`.
    pub fn block(&self, queries: usize, n: usize) -> Result<(usize, usize)> {
        let elements = self.memory_budget / 8;
        if elements < 1024 {
            return Err(invalid(
                "memory_budget",
                self.memory_budget,
                "must be at least 8 KiB",
            ));
        }
        let rows = queries.clamp(1, 1024).min(elements / 64);
        let cols = (elements / rows).clamp(1, n);
        Ok((rows, cols))
    }
}

/// The k nearest bank rows of each query, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    /// Neighbours per query.
    pub k: usize,
    /// Bank row indices, `[queries × k]` row-major.
    pub indices: Vec<u32>,
    /// Their similarities, same layout.
    pub similarities: Vec<f32>,
}

impl Neighbours {
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.indices.len() / self.k.max(1)
    }

    /// Whether there are no queries.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Indices and similarities of query `q`'s neighbours, best first.
    pub fn of(&self, q: usize) -> (&[u32], &[f32]) {
        let r = q * self.k..(q + 1) * self.k;
        (&self.indices[r.clone()], &self.similarities[r])
    }
}

/// Top-`k` neighbours of every bank row among all the other rows (itself excluded).
/// Ties are broken by the lower index, so the result is deterministic.
pub fn nearest_neighbours<B: Backend>(
    bank: &MemoryBank<B>,
    config: &KnnConfig,
) -> Result<Neighbours> {
    let n = bank.num_rows();
    if config.k == 0 || config.k >= n {
        return Err(invalid(
            "k",
            config.k,
            "must be in 1..N (the row itself is excluded)",
        ));
    }
    let rows = bank.rows();
    let d = bank.dim();
    search(bank, n, config, true, |start, end| {
        rows.clone().slice([start..end, 0..d])
    })
}

/// Top-`k` bank rows of each query feature (for evaluation). Ties go to the lower index.
///
/// # Shapes
/// - `queries`: `[M, D]`
pub fn query_neighbours<B: Backend>(
    bank: &MemoryBank<B>,
    queries: Tensor<B, 2>,
    config: &KnnConfig,
) -> Result<Neighbours> {
    let [m, d] = queries.dims();
    if config.k == 0 || config.k > bank.num_rows() {
        return Err(invalid("k", config.k, "must be in 1..=N"));
    }
    if d != bank.dim() {
        return Err(bank_core::Error::Shape {
            what: "queries",
            expected: format!("[M, {}]", bank.dim()),
            actual: vec![m, d],
        }
        .into());
    }
    search(bank, m, config, false, |start, end| {
        queries.clone().slice([start..end, 0..d])
    })
}

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
struct Best {
    items: Vec<(f32, u32)>,
}

impl Best {
    fn new(k: usize) -> Self {
        Self {
            items: Vec::with_capacity(k + 1),
        }
    }

    fn offer(&mut self, k: usize, sim: f32, idx: u32) {
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
    fn scan(&mut self, k: usize, row: &[f32], col0: usize, skip: Option<usize>) {
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

fn search<B: Backend>(
    bank: &MemoryBank<B>,
    queries: usize,
    config: &KnnConfig,
    exclude_self: bool,
    query_block: impl Fn(usize, usize) -> Tensor<B, 2>,
) -> Result<Neighbours> {
    let k = config.k;
    let n = bank.num_rows();
    let (block_rows, block_cols) = config.block(queries, n)?;
    let mut indices = Vec::with_capacity(queries * k);
    let mut similarities = Vec::with_capacity(queries * k);
    let mut start = 0;
    while start < queries {
        let end = (start + block_rows).min(queries);
        let mut best = vec![Best::new(k); end - start];
        for (col0, block) in bank.similarity_chunks(query_block(start, end), block_cols)? {
            let cols = block.dims()[1];
            let values = block
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| Error::Read(format!("{e:?}")))?;
            best.par_iter_mut()
                .zip(values.par_chunks_exact(cols))
                .enumerate()
                .for_each(|(r, (best, row))| {
                    let skip = exclude_self.then_some(start + r);
                    best.scan(k, row, col0, skip);
                });
        }
        for b in best {
            for (s, j) in b.items {
                indices.push(j);
                similarities.push(s);
            }
        }
        start = end;
    }
    tracing::debug!(queries, k, block_rows, block_cols, "neighbour search done");
    Ok(Neighbours {
        k,
        indices,
        similarities,
    })
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
            let mut seed = Best::new(k);
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
