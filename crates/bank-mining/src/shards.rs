//! Neighbours in a bank split by rows across devices: each device searches its own rows, and the
//! per-shard lists are combined here into lists over the whole bank.

use crate::error::invalid;
use crate::knn::Neighbours;
use crate::top_k::TopK;
use crate::{Error, Result};

/// One shard's answer: the neighbours of every query among the shard's rows, whose first row is
/// row `first` of the whole bank (its indices count from the shard's first row).
#[derive(Debug, Clone)]
pub struct ShardNeighbours {
    /// The shard's first row in the whole bank.
    pub first: usize,
    /// Neighbours among the shard's rows, indices local to the shard.
    pub neighbours: Neighbours,
}

/// The top-`k` of every query over the whole bank, from the top lists each shard found among its
/// own rows: the same selection rule as a search of the whole bank (similarity descending, ties
/// to the lower index, NaN last), so it gives the same neighbours as one search would, as long
/// as each shard listed at least `k` (or all its rows; one more when a query's own row must be
/// skipped).
///
/// With `own_rows = Some(q0)`, query `q` is row `q0 + q` of the bank and is not its own
/// neighbour (an all-rows search of a shard whose first row is `q0`).
///
/// The shards must not overlap (each bank row in one shard at most).
///
/// # Errors
/// [`Error::InvalidValue`] naming `k` when it is 0 or the shards together list fewer than `k`
/// other rows for a query; naming `shards` when there are none, or when they list neighbours
/// for different numbers of queries.
pub fn combine_shards(
    k: usize,
    shards: &[ShardNeighbours],
    own_rows: Option<usize>,
) -> Result<Neighbours> {
    if k == 0 {
        return Err(invalid("k", 0, "must be at least 1"));
    }
    let queries = shards
        .first()
        .map(|s| s.neighbours.len())
        .ok_or_else(|| invalid("shards", 0, "at least one shard's neighbours are needed"))?;
    if let Some(s) = shards.iter().find(|s| s.neighbours.len() != queries) {
        return Err(Error::InvalidValue {
            field: "shards",
            value: format!("{} and {queries} queries", s.neighbours.len()),
            reason: "every shard must answer the same queries",
        });
    }
    // Offered shard by shard in row order, each list best first: among equal similarities the
    // lower index arrives first, which is what the selection's tie rule needs.
    let mut order: Vec<&ShardNeighbours> = shards.iter().collect();
    order.sort_by_key(|s| s.first);
    let lists: Vec<TopK> = (0..queries)
        .map(|q| {
            let mut top = TopK::new(k);
            let own = own_rows.map(|q0| q0 + q);
            for shard in &order {
                let (indices, sims) = shard.neighbours.of(q);
                for (&i, &s) in indices.iter().zip(sims) {
                    let row = shard.first + i as usize;
                    if Some(row) != own {
                        top.offer(k, s, row as u32);
                    }
                }
            }
            top
        })
        .collect();
    if lists.iter().any(|l| l.items.len() < k) {
        return Err(invalid(
            "k",
            k,
            "the shards list fewer neighbours than k for a query (k above the bank's other rows?)",
        ));
    }
    Ok(Neighbours::from_lists(k, lists))
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::prelude::*;

    use super::*;
    use crate::{KnnConfig, nearest_neighbours, query_neighbours};
    use bank_core::{MemoryBank, MemoryBankConfig};

    type B = NdArray;

    /// Rows with repeated values, so that ties cross the shards' borders.
    fn rows(n: usize, d: usize) -> Vec<f32> {
        (0..n * d).map(|i| ((i * 7 % 5) as f32) - 2.0).collect()
    }

    fn bank(values: &[f32], d: usize) -> MemoryBank<B> {
        let n = values.len() / d;
        let t = Tensor::from_data(
            TensorData::new(values.to_vec(), [n, d]),
            &Default::default(),
        );
        MemoryBankConfig::new(n, d).init_from_features(t).unwrap()
    }

    /// The bank's rows cut at `cuts`.
    fn shards(values: &[f32], d: usize, cuts: &[usize]) -> Vec<(usize, MemoryBank<B>)> {
        let n = values.len() / d;
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(n);
        bounds
            .windows(2)
            .map(|w| (w[0], bank(&values[w[0] * d..w[1] * d], d)))
            .collect()
    }

    #[test]
    fn shard_lists_combine_into_the_whole_banks_search() {
        let (n, d, k) = (23, 4, 5);
        let values = rows(n, d);
        let whole = bank(&values, d);
        let queries = Tensor::<B, 2>::from_data(
            TensorData::new(rows(6, d).into_iter().rev().collect::<Vec<_>>(), [6, d]),
            &Default::default(),
        );
        let want = query_neighbours(&whole, queries.clone(), &KnnConfig::new(k)).unwrap();
        // Uneven shards, one smaller than k: it lists all its rows.
        for cuts in [&[8, 16][..], &[3, 20], &[11]] {
            let parts: Vec<ShardNeighbours> = shards(&values, d, cuts)
                .into_iter()
                .rev() // any order
                .map(|(first, b)| {
                    let kk = k.min(b.num_rows());
                    let neighbours =
                        query_neighbours(&b, queries.clone(), &KnnConfig::new(kk)).unwrap();
                    ShardNeighbours { first, neighbours }
                })
                .collect();
            let got = combine_shards(k, &parts, None).unwrap();
            assert_eq!(got.indices, want.indices, "cuts {cuts:?}");
            assert_eq!(got.similarities, want.similarities, "cuts {cuts:?}");
        }
    }

    #[test]
    fn an_all_rows_search_by_shards_skips_each_rows_own_index() {
        let (n, d, k) = (19, 3, 2);
        let values = rows(n, d);
        let want = nearest_neighbours(&bank(&values, d), &KnnConfig::new(k)).unwrap();
        let parts = shards(&values, d, &[7, 13]);
        let mut indices = Vec::new();
        for (q0, queries) in &parts {
            let answers: Vec<ShardNeighbours> = parts
                .iter()
                .map(|(first, b)| {
                    let kk = (k + 1).min(b.num_rows());
                    let neighbours =
                        query_neighbours(b, queries.rows(), &KnnConfig::new(kk)).unwrap();
                    ShardNeighbours {
                        first: *first,
                        neighbours,
                    }
                })
                .collect();
            indices.extend(combine_shards(k, &answers, Some(*q0)).unwrap().indices);
        }
        assert_eq!(indices, want.indices);
    }

    #[test]
    fn mismatched_or_missing_shards_are_refused() {
        assert!(combine_shards(1, &[], None).is_err());
        let one = |m: usize| {
            let mut list = TopK::new(1);
            list.offer(1, 0.5, 0);
            ShardNeighbours {
                first: 0,
                neighbours: Neighbours::from_lists(1, vec![list; m]),
            }
        };
        let err = combine_shards(1, &[one(2), one(3)], None).unwrap_err();
        assert!(err.to_string().contains("shards"), "{err}");
        let err = combine_shards(0, &[one(2)], None).unwrap_err();
        assert!(err.to_string().contains("`k`"), "{err}");
        // One row listed, and it is the query's own: nothing left for k = 1.
        let err = combine_shards(1, &[one(1)], Some(0)).unwrap_err();
        assert!(err.to_string().contains("fewer neighbours"), "{err}");
        assert!(combine_shards(1, &[one(1)], Some(1)).is_ok());
    }
}
