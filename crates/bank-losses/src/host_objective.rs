//! The whole bank's softmax objective with merged positives or consistency, on host memory when
//! the backend is burn-flex.
//!
//! With merged positives or the consistency loss, [`crate::SoftmaxObjective`]'s burn operations
//! make about twenty passes over the `[M, N]` logits (the row maximum, the shift, the masks and
//! softmax of the merged groups, the consistency's log-probabilities, view means and products,
//! the sums of the gradient's terms), each one whole-matrix operation on one thread on
//! burn-flex 0.21: at N = 50,000 and M = 512 the full method's bank step took 8.9× its two
//! matrix products. Here the `K` rows of one sample are visited together, the samples spread
//! over the threads with rayon: each row's maximum; `exp(z − max)` into a per-thread scratch
//! buffer, and its sum; with consistency, each view's `s_ik`; and `∂L/∂z` written over the
//! logits in place. The merged groups touch only their members' columns. Log-probabilities are
//! formed as `(z − max) − log S`, never as `z − (max + log S)`, which would round a loss near 0
//! to a step of the logits' size. The formulas are [`crate::closed_form`]'s; the results agree
//! with its burn path to f32 rounding.
//!
//! Only a shard that is alone ([`crate::ShardReduce::is_alone`]) takes this path: a shard's row
//! statistics must be combined with the other shards' between the passes, which the burn path
//! does.

use std::collections::HashMap;

use bank_core::ViewLayout;
use burn::prelude::*;
use rayon::prelude::*;
use wide::f32x8;

use crate::host_softmax::{self, LANES};

/// What the objective needs besides the logits, on the host.
pub(crate) struct Terms<'a> {
    /// Each logit row's target column, `[M]`.
    pub targets: &'a [usize],
    /// Every bank row's merge-group id, `[N]`, for merged positives; `None`: each row's own
    /// column is its only positive.
    pub groups: Option<&'a [i64]>,
    /// The consistency weight λ, when the consistency loss is on (needs `K ≥ 2`).
    pub consistency: Option<f64>,
    /// The rows' sample-major order.
    pub layout: ViewLayout,
}

/// `∂L/∂z` (`[M, N]`) with the loss, or the logits given back where the host path does not
/// apply.
pub(crate) type OnHost<B> = Result<(Tensor<B, 2>, f64), Tensor<B, 2>>;

/// Whether [`loss_and_logit_grad`] computes on `logits`: non-empty `f32` logits on burn-flex.
/// Check it before reading the targets and groups to the host (on a GPU that would wait for
/// the device).
pub(crate) fn applies<B: Backend>(logits: &Tensor<B, 2>) -> bool {
    host_softmax::flex::is_host(logits)
}

/// `∂L/∂z` over the logits `z` (`[M, N]`, already divided by τ) in place, and the loss, on
/// burn-flex with `f32` logits; `Err(logits)` on any other backend or dtype.
///
/// # Shapes
/// - `logits`: `[M, N]` with `M = terms.layout.rows()`; output `[M, N]`
///
/// # Panics
/// When `terms` does not fit the logits (the caller checks the shapes, the targets' range and
/// the group ids' length first), or with consistency and fewer than 2 views.
pub(crate) fn loss_and_logit_grad<B: Backend>(logits: Tensor<B, 2>, terms: &Terms) -> OnHost<B> {
    let [_, n] = logits.dims();
    host_softmax::flex::with_values_mut(logits, |z| grad_in_place(z, n, terms))
}

/// The columns of each target's group, for the groups the targets fall in (one pass over the
/// group ids).
fn group_members(groups: &[i64], targets: &[usize]) -> HashMap<i64, Vec<usize>> {
    let mut members: HashMap<i64, Vec<usize>> =
        targets.iter().map(|&t| (groups[t], Vec::new())).collect();
    for (column, id) in groups.iter().enumerate() {
        if let Some(list) = members.get_mut(id) {
            list.push(column);
        }
    }
    members
}

/// [`loss_and_logit_grad`] on the row-major values `z` of `[M, n]` logits: writes `∂L/∂z` and
/// returns the loss.
fn grad_in_place(z: &mut [f32], n: usize, terms: &Terms) -> f64 {
    let ViewLayout { samples, views } = terms.layout;
    assert!(n > 0 && z.len() == samples * views * n && terms.targets.len() == samples * views);
    assert!(terms.consistency.is_none() || views >= 2);
    let members = terms.groups.map(|g| group_members(g, terms.targets));
    let sample = SampleTerms {
        n,
        rows: samples * views,
        consistency: terms
            .consistency
            .map(|weight| weight / (samples * (views - 1)) as f64),
    };
    // Each sample's share of the loss, summed in sample order: the same whatever the threads.
    let shares: Vec<f64> = z
        .par_chunks_mut(views * n)
        .zip(terms.targets.par_chunks(views))
        .map_init(Vec::new, |scratch, (rows, targets)| {
            let positives: Vec<Positive> = match (&members, terms.groups) {
                (Some(members), Some(groups)) => targets
                    .iter()
                    .map(|&t| Positive::Group(&members[&groups[t]]))
                    .collect(),
                _ => targets.iter().map(|&t| Positive::Own(t)).collect(),
            };
            sample.grad_in_place(rows, &positives, scratch)
        })
        .collect();
    shares.iter().sum()
}

/// A logit row's positives: its own column, or the columns of its target's group.
enum Positive<'a> {
    Own(usize),
    Group(&'a [usize]),
}

/// What every sample's pass shares.
struct SampleTerms {
    /// Columns (bank rows).
    n: usize,
    /// Logit rows in the batch (M): the loss and gradient are means over them.
    rows: usize,
    /// `λ / (B(K−1))` with consistency.
    consistency: Option<f64>,
}

impl SampleTerms {
    /// One sample's `K` rows (`[K, n]` row-major): `∂L/∂z` written over them; returns their
    /// share of the loss. `scratch` receives the rows' `exp(z − max)`.
    fn grad_in_place(&self, z: &mut [f32], positives: &[Positive], scratch: &mut Vec<f32>) -> f64 {
        let n = self.n;
        scratch.clear();
        scratch.extend_from_slice(z);
        let norms: Vec<RowNorm> = z
            .chunks(n)
            .zip(scratch.chunks_mut(n))
            .map(|(row, e)| {
                let max = host_softmax::row_max(row);
                let sum = host_softmax::exp_shifted_sum(e, max);
                RowNorm {
                    max,
                    log_sum: sum.ln(),
                    inv_sum: sum.recip(),
                }
            })
            .collect();
        let p = Probs {
            exp: scratch,
            norms: &norms,
        };
        let inv_rows = 1.0 / self.rows as f32;
        let mut loss = 0.0;
        // Each row's positive term, read before the logits are overwritten: the loss and the
        // (column, q/M) it subtracts from p/M.
        let mut minus: Vec<Vec<(usize, f32)>> = Vec::with_capacity(positives.len());
        for ((row, positive), norm) in z.chunks(n).zip(positives).zip(&norms) {
            let (log_p, q) = positive_term(row, positive, norm);
            loss -= f64::from(log_p);
            minus.push(q.into_iter().map(|(j, q)| (j, q * inv_rows)).collect());
        }
        loss /= self.rows as f64;
        let consistency = self.consistency.map(|scale| {
            let s = consistency_sums(z, &p);
            loss += scale * s.iter().map(|&s| f64::from(s)).sum::<f64>();
            (scale as f32, s)
        });
        write_grad(z, &p, inv_rows, consistency.as_ref());
        for (row, minus) in z.chunks_mut(n).zip(minus) {
            for (j, q) in minus {
                row[j] -= q;
            }
        }
        loss
    }
}

/// One row's softmax normaliser: `log p = (z − max) − log_sum`, `p = exp(z − max) · inv_sum`.
/// The maximum and the log-sum stay apart, so that a log-probability near 0 keeps its digits
/// (`max + log_sum` in one f32 would round it to a step of `max`'s size).
struct RowNorm {
    /// The row's largest logit.
    max: f32,
    /// `log Σ exp(z − max)`.
    log_sum: f32,
    /// `1 / Σ exp(z − max)`.
    inv_sum: f32,
}

/// `(log Σ_{j∈G} p_j, [(j, q_j)])` of one row: the positives' log probability and the softmax
/// restricted to them (`q = 1` on the own column).
fn positive_term(row: &[f32], positive: &Positive, norm: &RowNorm) -> (f32, Vec<(usize, f32)>) {
    match positive {
        Positive::Own(t) => ((row[*t] - norm.max) - norm.log_sum, vec![(*t, 1.0)]),
        Positive::Group(columns) => {
            let max = columns
                .iter()
                .map(|&j| row[j])
                .fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = columns.iter().map(|&j| (row[j] - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            let q = columns.iter().zip(e).map(|(&j, e)| (j, e / sum)).collect();
            ((max - norm.max) + (sum.ln() - norm.log_sum), q)
        }
    }
}

/// One sample's softmax rows.
struct Probs<'a> {
    /// `exp(z − max)`, `[K, n]` row-major.
    exp: &'a [f32],
    /// Each row's normaliser, `[K]`.
    norms: &'a [RowNorm],
}

/// Lanes `start..start + len` of each of the `K` rows of `p` into `probs` and, when `l` is
/// given, of `ℓ = log p` into it, read from the logits `z` (unused lanes: p = 0 and ℓ = −100,
/// whose terms are left out).
fn lanes(
    (z, p): (&[f32], &Probs),
    (start, len): (usize, usize),
    probs: &mut [f32x8],
    mut l: Option<&mut [f32x8]>,
) {
    let n = z.len() / p.norms.len();
    for (k, (probs, norm)) in probs.iter_mut().zip(p.norms).enumerate() {
        let at = k * n + start;
        let mut p_lanes = [0.0; LANES];
        p_lanes[..len].copy_from_slice(&p.exp[at..at + len]);
        *probs = f32x8::new(p_lanes) * f32x8::splat(norm.inv_sum);
        if let Some(l) = l.as_deref_mut() {
            let mut l_lanes = [-100.0; LANES];
            for (lane, &x) in l_lanes.iter_mut().zip(&z[at..at + len]) {
                *lane = (x - norm.max) - norm.log_sum;
            }
            l[k] = f32x8::new(l_lanes);
        }
    }
}

/// The mean over the views of `ℓ`, lane by lane.
fn view_mean(l: &[f32x8]) -> f32x8 {
    l.iter().fold(f32x8::ZERO, |a, &x| a + x) * f32x8::splat(1.0 / l.len() as f32)
}

/// Lanes `0..len` of `x` summed.
fn lane_sum(x: f32x8, len: usize) -> f32 {
    x.to_array()[..len].iter().sum()
}

/// The consistency's `s_k = Σ_n p_kn (ℓ_kn − m_n)` of one sample's `K` rows, `m` the mean over
/// the views of `ℓ` (Bulat eq. 3 in [`crate::closed_form`]'s form).
fn consistency_sums(z: &[f32], p: &Probs) -> Vec<f32> {
    let views = p.norms.len();
    let n = z.len() / views;
    let (mut full, mut tail) = (vec![f32x8::ZERO; views], vec![0.0; views]);
    let (mut l, mut probs) = (vec![f32x8::ZERO; views], vec![f32x8::ZERO; views]);
    for start in (0..n).step_by(LANES) {
        let len = LANES.min(n - start);
        lanes((z, p), (start, len), &mut probs, Some(&mut l));
        let m = view_mean(&l);
        for k in 0..views {
            let term = probs[k] * (l[k] - m);
            if len == LANES {
                full[k] += term;
            } else {
                tail[k] += lane_sum(term, len);
            }
        }
    }
    full.iter()
        .zip(tail)
        .map(|(f, t)| f.reduce_add() + t)
        .collect()
}

/// Writes `p/M` over each of the sample's rows `z`, plus with consistency
/// `scale · (p_k ⊙ (ℓ_k − m + 1 − s_k) − P/K)` (`P = Σ_j p_j`).
fn write_grad(z: &mut [f32], p: &Probs, inv_rows: f32, consistency: Option<&(f32, Vec<f32>)>) {
    let views = p.norms.len();
    let n = z.len() / views;
    let (mut l, mut probs) = (vec![f32x8::ZERO; views], vec![f32x8::ZERO; views]);
    let inv_rows = f32x8::splat(inv_rows);
    let write = |z: &mut [f32], k: usize, (start, len): (usize, usize), g: f32x8| {
        z[k * n + start..k * n + start + len].copy_from_slice(&g.to_array()[..len]);
    };
    for start in (0..n).step_by(LANES) {
        let at = (start, LANES.min(n - start));
        match consistency {
            None => {
                lanes((z, p), at, &mut probs, None);
                for (k, &p) in probs.iter().enumerate() {
                    write(z, k, at, p * inv_rows);
                }
            }
            Some((scale, s)) => {
                lanes((z, p), at, &mut probs, Some(&mut l));
                let (m, p_mean) = (view_mean(&l), view_mean(&probs));
                for k in 0..views {
                    let own = probs[k] * (l[k] - m + f32x8::splat(1.0 - s[k])) - p_mean;
                    write(z, k, at, probs[k] * inv_rows + own * f32x8::splat(*scale));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `∂L/∂z` and the loss in f64, straight from the formulas of [`crate::closed_form`].
    fn reference(z: &[f32], n: usize, terms: &Terms) -> (Vec<f64>, f64) {
        let ViewLayout { samples, views } = terms.layout;
        let m = samples * views;
        let l: Vec<Vec<f64>> = z
            .chunks(n)
            .map(|row| {
                let max = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x.into()));
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (f64::from(x) - max).exp())
                        .sum::<f64>()
                        .ln();
                row.iter().map(|&x| f64::from(x) - lse).collect()
            })
            .collect();
        let mut grad = vec![0.0; m * n];
        let mut loss = 0.0;
        for (r, l_r) in l.iter().enumerate() {
            let t = terms.targets[r];
            let in_group = |j: usize| match terms.groups {
                Some(g) => g[j] == g[t],
                None => j == t,
            };
            let group_sum: f64 = (0..n).filter(|&j| in_group(j)).map(|j| l_r[j].exp()).sum();
            loss -= group_sum.ln() / m as f64;
            for j in 0..n {
                let q = if in_group(j) {
                    l_r[j].exp() / group_sum
                } else {
                    0.0
                };
                grad[r * n + j] = (l_r[j].exp() - q) / m as f64;
            }
        }
        if let Some(weight) = terms.consistency {
            let scale = weight / (samples * (views - 1)) as f64;
            for b in 0..samples {
                let rows = &l[b * views..(b + 1) * views];
                let mean: Vec<f64> = (0..n)
                    .map(|j| rows.iter().map(|l| l[j]).sum::<f64>() / views as f64)
                    .collect();
                let p_mean: Vec<f64> = (0..n)
                    .map(|j| rows.iter().map(|l| l[j].exp()).sum::<f64>() / views as f64)
                    .collect();
                for (k, l_k) in rows.iter().enumerate() {
                    let s: f64 = (0..n).map(|j| l_k[j].exp() * (l_k[j] - mean[j])).sum();
                    loss += scale * s;
                    for j in 0..n {
                        let p = l_k[j].exp();
                        grad[(b * views + k) * n + j] +=
                            scale * (p * (l_k[j] - mean[j] + 1.0 - s) - p_mean[j]);
                    }
                }
            }
        }
        (grad, loss)
    }

    /// Logits in [−15, 15] that differ from view to view.
    fn logits(rows: usize, n: usize) -> Vec<f32> {
        (0..rows * n)
            .map(|i| ((i as f32 * 0.754_877_7).fract() - 0.5) * 30.0)
            .collect()
    }

    #[test]
    fn a_loss_near_zero_keeps_its_digits_at_small_temperature() {
        // τ = 0.01 on unit rows: the target's logit 100, the others at most 87, so p_t ≈ 1 and
        // the loss is 3.0e-6. `100 + log S` in one f32 rounds to 100 (a step there is 7.6e-6)
        // and the loss to 0; the sum of exponentials, near 1, holds it to about 1e-7. Every
        // row is the same, so that rounding errors cannot cancel in the mean.
        let (samples, views, n) = (2, 2, 50);
        let targets: Vec<usize> = vec![3; samples * views];
        let row: Vec<f32> = (0..n)
            .map(|j| {
                if j == 3 {
                    100.0
                } else {
                    87.0 - (j as f32 * 0.618_034).fract() * 100.0
                }
            })
            .collect();
        let z = row.repeat(samples * views);
        let groups: Vec<i64> = (0..n as i64).map(|j| if j == 9 { 3 } else { j }).collect();
        for (groups, consistency) in [(None, None), (Some(&groups[..]), Some(0.5))] {
            let terms = Terms {
                targets: &targets,
                groups,
                consistency,
                layout: ViewLayout::new(samples, views),
            };
            let (_, want) = reference(&z, n, &terms);
            let loss = grad_in_place(&mut z.clone(), n, &terms);
            assert!(want > 1e-6 && want < 1e-3, "the case: loss {want}");
            assert!(
                (loss - want).abs() <= 3e-7,
                "{:?}: loss {loss} against {want}",
                groups.is_some()
            );
        }
    }

    #[test]
    fn the_same_bits_on_any_number_of_threads() {
        let (samples, views, n) = (37, 2, 301);
        let targets: Vec<usize> = (0..samples * views).map(|r| (r / views * 7) % n).collect();
        let groups: Vec<i64> = (0..n as i64).map(|j| j / 3).collect();
        let terms = Terms {
            targets: &targets,
            groups: Some(&groups),
            consistency: Some(0.5),
            layout: ViewLayout::new(samples, views),
        };
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut z = logits(samples * views, n);
            let loss = pool.install(|| grad_in_place(&mut z, n, &terms));
            (
                loss.to_bits(),
                z.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            )
        };
        let one = on(1);
        for threads in [2, 3, 8] {
            assert!(on(threads) == one, "{threads} threads differ from one");
        }
    }

    #[test]
    fn matches_the_f64_formulas_for_every_term_and_tail_length() {
        for n in [1, 7, 8, 9, 23, 300] {
            for views in [1, 2, 3] {
                let samples = 3;
                let targets: Vec<usize> = (0..samples * views)
                    .map(|r| (r / views * 5 + 2) % n)
                    .collect();
                // Columns 0, 2 and 7 in one group, 1 and 4 in another, the rest alone.
                let groups: Vec<i64> = (0..n as i64)
                    .map(|j| match j {
                        2 | 7 => 0,
                        4 => 1,
                        _ => j,
                    })
                    .collect();
                for (groups, consistency) in [
                    (None, None),
                    (Some(&groups[..]), None),
                    (None, Some(0.7)),
                    (Some(&groups[..]), Some(0.7)),
                ] {
                    if consistency.is_some() && views < 2 {
                        continue;
                    }
                    let terms = Terms {
                        targets: &targets,
                        groups,
                        consistency,
                        layout: ViewLayout::new(samples, views),
                    };
                    let z = logits(samples * views, n);
                    let (want_grad, want_loss) = reference(&z, n, &terms);
                    let mut got = z.clone();
                    let loss = grad_in_place(&mut got, n, &terms);
                    let what = format!("n {n}, K {views}, {:?}, {consistency:?}", groups.is_some());
                    assert!(
                        (loss - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
                        "{what}: loss {loss} vs {want_loss}"
                    );
                    let scale = want_grad.iter().fold(0.0f64, |a, g| a.max(g.abs()));
                    for (i, (&g, &w)) in got.iter().zip(&want_grad).enumerate() {
                        assert!(
                            (f64::from(g) - w).abs() <= 1e-5 * scale + 1e-7,
                            "{what}: ∂L/∂z[{i}] {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
