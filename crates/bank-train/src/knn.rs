//! Weighted kNN evaluation (NPID): each of the k nearest training features votes for its class
//! with weight exp(s/σ); top-1 and top-5 accuracy of the test images.

use bank_core::MemoryBank;
use bank_mining::{KnnConfig, Neighbours, query_neighbours};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Top-1 and top-5 accuracy, in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnAccuracy {
    /// Fraction whose highest-voted class is right.
    pub top1: f64,
    /// Fraction whose right class is among the five highest-voted.
    pub top5: f64,
}

/// Votes of `neighbours` (one query per test image) with weight exp(s/σ).
///
/// The weights are computed as exp((s − s_max)/σ) with s_max the query's best similarity: the
/// same ratios (so the same ranking) without overflow at small σ (exp(1/0.001) is infinite in
/// f64, and ties of infinities used to go against the true class).
pub fn weighted_vote(
    neighbours: &Neighbours,
    train_labels: &[u32],
    test_labels: &[u32],
    classes: usize,
    sigma: f64,
) -> KnnAccuracy {
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut votes = vec![0f64; classes];
    for (q, &truth) in test_labels.iter().enumerate() {
        votes.fill(0.0);
        let (idx, sims) = neighbours.of(q);
        let best = sims
            .iter()
            .map(|&s| f64::from(s))
            .filter(|s| s.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        for (&j, &s) in idx.iter().zip(sims) {
            votes[train_labels[j as usize] as usize] += ((f64::from(s) - best) / sigma).exp();
        }
        let mine = votes[truth as usize];
        // Rank of the true class; ties go against it.
        let better = votes.iter().filter(|&&v| v >= mine).count() - 1;
        top1 += usize::from(better == 0);
        top5 += usize::from(better < 5);
    }
    let n = test_labels.len().max(1) as f64;
    KnnAccuracy {
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
    }
}

/// The labels of a kNN evaluation and how to vote with them.
#[derive(Debug, Clone, Copy)]
pub struct KnnVote<'a> {
    /// Class of every reference row (bank row, or recomputed reference feature).
    pub train_labels: &'a [u32],
    /// Class of every query.
    pub test_labels: &'a [u32],
    /// Number of classes.
    pub classes: usize,
    /// Neighbours that vote.
    pub k: usize,
    /// Temperature σ of the weights exp(s/σ).
    pub sigma: f64,
}

/// kNN accuracy of `test_features` against the rows of `bank` (the bank itself, or a bank made
/// of recomputed train features), computed in blocks within `memory_budget` bytes.
///
/// # Shapes
/// - `test_features`: `[T, D]`
///
/// # Errors
/// [`Error::Config`] when the labels do not match the rows (one per reference row, one per
/// query) or name a class `>= classes`; bank errors.
pub fn knn_accuracy<B: Backend>(
    bank: &MemoryBank<B>,
    train_labels: &[u32],
    test_features: Tensor<B, 2>,
    test_labels: &[u32],
    classes: usize,
    k: usize,
    sigma: f64,
) -> Result<KnnAccuracy> {
    let vote = KnnVote {
        train_labels,
        test_labels,
        classes,
        k,
        sigma,
    };
    let search = |queries, k| Ok(query_neighbours(bank, queries, &KnnConfig::new(k))?);
    knn_accuracy_with(bank.num_rows(), test_features, vote, search)
}

/// [`knn_accuracy`] against `rows` reference rows that `search(queries, k)` finds the top-`k` of
/// (a bank split across devices: each searches its rows, the lists combined).
///
/// # Shapes
/// - `test_features`: `[T, D]`
///
/// # Errors
/// As [`knn_accuracy`], and `search`'s errors.
pub fn knn_accuracy_with<B: Backend>(
    rows: usize,
    test_features: Tensor<B, 2>,
    vote: KnnVote<'_>,
    search: impl FnOnce(Tensor<B, 2>, usize) -> Result<Neighbours>,
) -> Result<KnnAccuracy> {
    let queries = test_features.dims()[0];
    let mismatch = |reason: String| {
        Err(Error::Config {
            field: "data".into(),
            reason,
        })
    };
    if vote.train_labels.len() != rows {
        return mismatch(format!(
            "{} reference labels for {rows} reference rows",
            vote.train_labels.len()
        ));
    }
    if vote.test_labels.len() != queries {
        return mismatch(format!(
            "{} query labels for {queries} query features",
            vote.test_labels.len()
        ));
    }
    if let Some(l) = vote
        .train_labels
        .iter()
        .chain(vote.test_labels)
        .find(|&&l| l as usize >= vote.classes)
    {
        return mismatch(format!("label {l} but only {} classes", vote.classes));
    }
    let neighbours = search(test_features, vote.k.min(rows))?;
    Ok(weighted_vote(
        &neighbours,
        vote.train_labels,
        vote.test_labels,
        vote.classes,
        vote.sigma,
    ))
}
