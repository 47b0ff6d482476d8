//! The search on the backend's device: the backend's matmul block by block, each block of
//! similarities read back to the host and scanned there.

use bank_core::MemoryBank;
use burn::prelude::*;
use rayon::prelude::*;

use crate::knn::{KnnConfig, Neighbours};
use crate::top_k::TopK;
use crate::{Error, Result};

/// Top-`config.k` bank rows of `queries` query rows, whose blocks `query_block(start, end)`
/// gives; row `q` skips bank row `q` when `exclude_self`.
pub(crate) fn search<B: Backend>(
    bank: &MemoryBank<B>,
    queries: usize,
    config: &KnnConfig,
    exclude_self: bool,
    query_block: impl Fn(usize, usize) -> Tensor<B, 2>,
) -> Result<Neighbours> {
    let k = config.k;
    let n = bank.num_rows();
    let (block_rows, block_cols) = config.block(queries, n)?;
    let mut lists = Vec::with_capacity(queries);
    let mut start = 0;
    while start < queries {
        let end = (start + block_rows).min(queries);
        let mut best = vec![TopK::new(k); end - start];
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
        lists.extend(best);
        start = end;
    }
    tracing::debug!(
        queries,
        k,
        block_rows,
        block_cols,
        "device neighbour search done"
    );
    Ok(Neighbours::from_lists(k, lists))
}
