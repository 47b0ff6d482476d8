//! Clustering of the unseen-categories protocol: k-means on the device (k-means++ seeding,
//! several restarts, the lowest inertia kept) and the normalised mutual information of its
//! clusters with the labels.
//!
//! Every pass over the points runs in blocks of [`BLOCK`] rows, so memory stays at
//! `BLOCK × k` distances whatever N.

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::features::host;
use crate::{Error, Result};

/// Rows per block of every pass.
pub const BLOCK: usize = 4096;

/// Lloyd iterations at most per restart.
pub const MAX_ITERATIONS: usize = 100;

/// The outcome of [`kmeans`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clustering {
    /// Cluster of every point, in `0..k`.
    pub assignments: Vec<u32>,
    /// Sum of squared distances to the assigned centres.
    pub inertia: f64,
}

/// k-means of the rows of `points` into `k` clusters: `restarts` runs from k-means++ seeds
/// (seeded by `seed` and the restart), each up to [`MAX_ITERATIONS`] Lloyd steps; the run of
/// lowest inertia is returned. An emptied cluster keeps its centre.
///
/// # Shapes
/// - `points`: `[N, D]`
///
/// # Errors
/// [`Error::Config`] naming `eval.kmeans_restarts` when `restarts` is 0, and `eval` when `k` is
/// 0 or above N.
pub fn kmeans<B: Backend>(
    points: Tensor<B, 2>,
    k: usize,
    restarts: usize,
    seed: u64,
) -> Result<Clustering> {
    let n = points.dims()[0];
    if restarts == 0 {
        return Err(Error::Config {
            field: "eval.kmeans_restarts".into(),
            reason: "0: must be at least 1".into(),
        });
    }
    if k == 0 || k > n {
        return Err(Error::Config {
            field: "eval".into(),
            reason: format!("k-means with k = {k} on {n} points"),
        });
    }
    let mut best: Option<Clustering> = None;
    for r in 0..restarts {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (r as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let centres = plus_plus(&points, k, &mut rng);
        let run = lloyd(&points, centres);
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    Ok(best.expect("at least one restart"))
}

/// Row blocks of `0..n`.
fn blocks(n: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..n).step_by(BLOCK).map(move |s| s..(s + BLOCK).min(n))
}

/// Squared distances `[m, k]` of a block to the centres.
fn distances<B: Backend>(block: Tensor<B, 2>, centres: &Tensor<B, 2>) -> Tensor<B, 2> {
    let x2 = block.clone().powf_scalar(2.0).sum_dim(1); // [m, 1]
    let c2 = centres.clone().powf_scalar(2.0).sum_dim(1).transpose(); // [1, k]
    let cross = block.matmul(centres.clone().transpose()); // [m, k]
    (x2 + c2 - cross * 2.0).clamp_min(0.0)
}

/// k-means++ seeding: the first centre uniform, each next one drawn with probability
/// proportional to the squared distance to the nearest centre so far.
fn plus_plus<B: Backend>(points: &Tensor<B, 2>, k: usize, rng: &mut StdRng) -> Tensor<B, 2> {
    let [n, d] = points.dims();
    let row = |i: usize| points.clone().slice([i..i + 1, 0..d]);
    let mut chosen = vec![row(rng.random_range(0..n))];
    let mut nearest = vec![f32::INFINITY; n];
    while chosen.len() < k {
        let last = chosen.last().expect("one centre").clone();
        for range in blocks(n) {
            let dist = host(distances(
                points.clone().slice([range.clone(), 0..d]),
                &last,
            ));
            for (slot, v) in nearest[range].iter_mut().zip(dist) {
                *slot = slot.min(v);
            }
        }
        let total: f64 = nearest.iter().map(|&v| f64::from(v)).sum();
        let next = if total > 0.0 {
            let mut target = rng.random::<f64>() * total;
            nearest
                .iter()
                .position(|&v| {
                    target -= f64::from(v);
                    target < 0.0
                })
                .unwrap_or(n - 1)
        } else {
            rng.random_range(0..n)
        };
        chosen.push(row(next));
    }
    Tensor::cat(chosen, 0)
}

/// Lloyd's iterations from `centres` until the assignments stop changing.
fn lloyd<B: Backend>(points: &Tensor<B, 2>, mut centres: Tensor<B, 2>) -> Clustering {
    let [n, d] = points.dims();
    let k = centres.dims()[0];
    let device = points.device();
    let ids = Tensor::<B, 1, Int>::arange(0..k as i64, &device).unsqueeze_dim::<2>(0); // [1, k]
    let mut assignments = vec![u32::MAX; n];
    let mut inertia = f64::INFINITY;
    for _ in 0..MAX_ITERATIONS {
        let mut sums = Tensor::<B, 2>::zeros([k, d], &device);
        let mut counts = Tensor::<B, 1>::zeros([k], &device);
        let (mut changed, mut total) = (false, 0f64);
        for range in blocks(n) {
            let block = points.clone().slice([range.clone(), 0..d]);
            let dist = distances(block.clone(), &centres);
            let (min, arg) = dist.min_dim_with_indices(1); // [m, 1]
            total += host(min).iter().map(|&v| f64::from(v)).sum::<f64>();
            let one_hot = arg.clone().equal(ids.clone()).float(); // [m, k]
            sums = sums + one_hot.clone().transpose().matmul(block);
            counts = counts + one_hot.sum_dim(0).squeeze_dim(0);
            let arg: Vec<i64> = arg.into_data().convert::<i64>().into_vec().expect("ints");
            for (slot, a) in assignments[range].iter_mut().zip(arg) {
                changed |= *slot != a as u32;
                *slot = a as u32;
            }
        }
        inertia = total;
        // An emptied cluster (count 0) keeps its centre.
        let filled = counts
            .clone()
            .greater_elem(0.0)
            .float()
            .unsqueeze_dim::<2>(1); // [k, 1]
        let means = sums / counts.clamp_min(1.0).unsqueeze_dim(1);
        centres = means * filled.clone() + centres * (filled.neg() + 1.0);
        if !changed {
            break;
        }
    }
    Clustering {
        assignments,
        inertia,
    }
}

/// Normalised mutual information of two labelings, I(U; V) / ((H(U) + H(V)) / 2) (the
/// arithmetic normalisation, scikit-learn's default), in f64 from the entropies of U, V and
/// the joint. 1 when both are a single cluster.
///
/// # Panics
/// When `a` and `b` differ in length (a caller's bug: both label the same points).
pub fn nmi(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len(), "labelings of the same points");
    let entropy = |counts: &mut dyn Iterator<Item = usize>| -> f64 {
        let n = a.len() as f64;
        counts
            .filter(|&c| c > 0)
            .map(|c| {
                let p = c as f64 / n;
                -p * p.ln()
            })
            .sum()
    };
    let count = |keys: &mut dyn Iterator<Item = u64>| {
        let mut m = std::collections::HashMap::<u64, usize>::new();
        keys.for_each(|k| *m.entry(k).or_default() += 1);
        m
    };
    let ca = count(&mut a.iter().map(|&x| u64::from(x)));
    let cb = count(&mut b.iter().map(|&x| u64::from(x)));
    let joint = count(
        &mut a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (u64::from(x) << 32) | u64::from(y)),
    );
    let (ha, hb) = (
        entropy(&mut ca.into_values()),
        entropy(&mut cb.into_values()),
    );
    let hab = entropy(&mut joint.into_values());
    let mutual = ha + hb - hab;
    let norm = (ha + hb) / 2.0;
    if norm <= 0.0 {
        1.0
    } else {
        (mutual / norm).clamp(0.0, 1.0)
    }
}

/// The NMI of k-means of `features` (k = the number of classes) with `labels`.
///
/// # Shapes
/// - `features`: `[N, D]`
///
/// # Errors
/// As [`kmeans`].
pub fn nmi_of_features<B: Backend>(
    features: Tensor<B, 2>,
    labels: &[u32],
    classes: usize,
    restarts: usize,
    seed: u64,
) -> Result<f64> {
    let clusters = kmeans(features, classes, restarts, seed)?;
    Ok(nmi(&clusters.assignments, labels))
}
