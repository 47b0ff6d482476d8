//! The search on the host: the bank and the queries as f32 in host memory, one cache-sized GEMM
//! per task (the `gemm` crate, the one burn-flex multiplies with) and the top-k selection of
//! that block right after it, so the `[M, N]` similarity matrix is never written out.
//!
//! Query rows are split into blocks of at most [`ROWS`], one rayon task each; a task walks the
//! bank [`COLUMNS`] rows at a time, multiplies into a buffer of `ROWS × COLUMNS` f32 (4 MiB) and
//! scans it while it is still in cache. On the 2-core machine of `docs/results.md` this is what
//! brought the all-rows search level with FAISS `IndexFlatIP`: the device path writes every
//! similarity to memory, copies it to the host and reads it again.

use bank_core::host_gemm::{self, MatRef};
use rayon::prelude::*;

use crate::Result;
use crate::knn::{KnnConfig, Neighbours};
use crate::top_k::TopK;

/// Most query rows per task.
pub(crate) const ROWS: usize = 256;
/// Most bank rows per multiplication.
pub(crate) const COLUMNS: usize = 4096;

/// Top-`config.k` rows of `bank` (`[N, d]` row-major) for each row of `queries` (`[M, d]`
/// row-major). With `exclude_self`, query `q` skips bank row `q` (the queries are the bank).
pub(crate) fn search(
    bank: &[f32],
    queries: &[f32],
    d: usize,
    config: &KnnConfig,
    exclude_self: bool,
) -> Result<Neighbours> {
    let (n, m) = (bank.len() / d, queries.len() / d);
    let (rows, cols) = config.host_block(m, n, rayon::current_num_threads())?;
    let lists: Vec<Vec<TopK>> = queries
        .par_chunks(rows * d)
        .enumerate()
        .map(|(b, block)| {
            block_top_k(
                bank,
                block,
                d,
                cols,
                config.k,
                exclude_self.then_some(b * rows),
            )
        })
        .collect();
    tracing::debug!(
        queries = m,
        k = config.k,
        rows,
        cols,
        "host neighbour search done"
    );
    Ok(Neighbours::from_lists(
        config.k,
        lists.into_iter().flatten().collect(),
    ))
}

/// The top-k lists of one block of queries against the whole bank, `cols` bank rows at a time.
/// `first_self` is the bank row of the block's first query when a query skips its own row.
fn block_top_k(
    bank: &[f32],
    queries: &[f32],
    d: usize,
    cols: usize,
    k: usize,
    first_self: Option<usize>,
) -> Vec<TopK> {
    let m = queries.len() / d;
    let mut lists = vec![TopK::new(k); m];
    let mut buffer = vec![0f32; m * cols];
    for (c, columns) in bank.chunks(cols * d).enumerate() {
        let width = columns.len() / d;
        let sims = &mut buffer[..m * width];
        dot_transposed(queries, columns, d, sims);
        for (r, (list, row)) in lists.iter_mut().zip(sims.chunks_exact(width)).enumerate() {
            list.scan(k, row, c * cols, first_self.map(|q0| q0 + r));
        }
    }
    lists
}

/// `out = a · bᵀ` on the calling thread: `a` is `[m, d]`, `b` is `[w, d]` and `out` is `[m, w]`,
/// all row-major.
///
/// # Panics
/// When a length is not a multiple of `d` or `out` is not `m × w` long.
fn dot_transposed(a: &[f32], b: &[f32], d: usize, out: &mut [f32]) {
    assert!(
        d > 0 && a.len().is_multiple_of(d) && b.len().is_multiple_of(d),
        "rows of length {d}"
    );
    let (m, w) = (a.len() / d, b.len() / d);
    assert_eq!(out.len(), m * w, "output of {m} x {w}");
    let (lhs, rhs) = (MatRef::rows(a, d), MatRef::transposed(b, d));
    host_gemm::gemm(m, w, d, out, w, false, lhs, rhs);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The multiplication against the product written out as sums, on shapes that are not
    /// multiples of any kernel width.
    #[test]
    fn dot_transposed_is_a_times_b_transposed() {
        for (m, w, d) in [(1, 1, 1), (3, 5, 7), (17, 33, 128), (9, 1, 4)] {
            let a: Vec<f32> = (0..m * d)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
                .collect();
            let b: Vec<f32> = (0..w * d)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            let mut out = vec![f32::NAN; m * w];
            dot_transposed(&a, &b, d, &mut out);
            for i in 0..m {
                for j in 0..w {
                    let want: f32 = (0..d).map(|p| a[i * d + p] * b[j * d + p]).sum();
                    let got = out[i * w + j];
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{m}x{w}x{d} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
