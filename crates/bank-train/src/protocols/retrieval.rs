//! Recall@K of the unseen-categories protocol: for every test image, whether one of its K
//! nearest test images (cosine similarity, the query itself excluded) has its class.
//!
//! The neighbour search is bank-mining's blocked scan, so the N × N similarities never sit in
//! memory at once.

use bank_core::MemoryBankConfig;
use bank_mining::{KnnConfig, Neighbours, nearest_neighbours};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Recall at one K.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecallAt {
    /// Neighbours looked at.
    pub k: usize,
    /// Fraction of queries with a same-class image among them, in [0, 1].
    pub recall: f64,
}

/// The Ks reported for `n` images: 1, 2, 4, 8, and 10, 100 for large sets (≥ 1,000 images),
/// each below `n`.
pub fn default_ks(n: usize) -> Vec<usize> {
    let mut ks = vec![1, 2, 4, 8];
    if n >= 1_000 {
        ks.extend([10, 100]);
    }
    ks.retain(|&k| k < n);
    ks
}

/// Recall@K for each of `ks` from the neighbours of every image among the others (best first;
/// `neighbours.k` ≥ the largest K).
pub fn recall_at_k(neighbours: &Neighbours, labels: &[u32], ks: &[usize]) -> Vec<RecallAt> {
    // First rank (1-based) at which a same-class neighbour appears, per query.
    let first_hit: Vec<Option<usize>> = (0..labels.len())
        .map(|q| {
            let (idx, _) = neighbours.of(q);
            idx.iter()
                .position(|&j| labels[j as usize] == labels[q])
                .map(|p| p + 1)
        })
        .collect();
    let n = labels.len().max(1) as f64;
    ks.iter()
        .map(|&k| RecallAt {
            k,
            recall: first_hit
                .iter()
                .filter(|h| h.is_some_and(|r| r <= k))
                .count() as f64
                / n,
        })
        .collect()
}

/// Recall@K of `features` (rows L2-normalised here) with `labels`, for each of `ks`.
///
/// # Shapes
/// - `features`: `[N, D]`
///
/// # Errors
/// [`Error::Config`] when the labels do not match the rows or a K is not below N.
pub fn recall_of_features<B: Backend>(
    features: Tensor<B, 2>,
    labels: &[u32],
    ks: &[usize],
) -> Result<Vec<RecallAt>> {
    let [n, d] = features.dims();
    let k_max = ks.iter().copied().max().unwrap_or(1);
    if labels.len() != n || k_max >= n {
        return Err(Error::Config {
            field: "eval".into(),
            reason: format!(
                "Recall@{k_max} needs more than {k_max} labelled test images ({n} rows, {} labels)",
                labels.len()
            ),
        });
    }
    let bank = MemoryBankConfig::new(n, d).init_from_features(features)?;
    let neighbours = nearest_neighbours(&bank, &KnnConfig::new(k_max))?;
    Ok(recall_at_k(&neighbours, labels, ks))
}
