//! The whole bank's softmax objective (instance, merged positives, consistency) over logits on
//! host memory: [`crate::host_step`]'s passes between its two products on burn-flex.
//!
//! With merged positives or the consistency loss, [`crate::SoftmaxObjective`]'s burn operations
//! make about twenty passes over the `[M, N]` logits (the row maximum, the shift, the masks and
//! softmax of the merged groups, the consistency's log-probabilities, view means and products,
//! the sums of the gradient's terms), each one whole-matrix operation on one thread on
//! burn-flex 0.21: at N = 50,000 and M = 512 the full method's bank step took 8.9× its two
//! matrix products. Here the `K` rows of one sample are visited together while they sit in the
//! cache, the samples spread over the threads with rayon, in three passes like the instance
//! loss's: each row's maximum; `exp(z − max)` and its sum (in place, or with consistency into a
//! per-thread scratch buffer, with each view's `Σ exp(z − max)(z − z̄)`, from which the
//! consistency's `s_k` follows without a pass of its own); and `∂L/∂z` written over the logits.
//! The merged groups touch only their members' columns, read before the logits are overwritten.
//! Log-probabilities are formed as `(z − max) − log S`, never as `z − (max + log S)`, which
//! would round a loss near 0 to a step of the logits' size. The formulas are
//! [`crate::closed_form`]'s; the results agree with its burn path to f32 rounding.
//!
//! Only a shard that is alone ([`crate::ShardReduce::is_alone`]) takes this path: a shard's row
//! statistics must be combined with the other shards' between the passes, which the burn path
//! does.

use std::collections::HashMap;

use bank_core::ViewLayout;
use multiversion::multiversion;
use rayon::prelude::*;

use crate::host_softmax;
use crate::lanes::{LANES, Lanes};

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

/// `∂L/∂z` over the row-major logits `z` (`[M, n]`, already divided by τ) in place; returns
/// the loss.
///
/// # Panics
/// When `terms` does not fit the logits (the caller checks the shapes, the targets' range and
/// the group ids' length first), or with consistency and fewer than 2 views.
pub(crate) fn grad_in_place(z: &mut [f32], n: usize, terms: &Terms) -> f64 {
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
            sample_grad_in_place(&sample, rows, &positives, scratch)
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

/// One sample's `K` rows (`[K, n]` row-major): `∂L/∂z` written over them; returns their
/// share of the loss. With consistency, `scratch` receives the rows' `exp(z − max)`. Compiled
/// for AVX2 as well and chosen at run time; the same bits either way ([`crate::lanes`]).
#[multiversion(targets("x86_64+avx2"))]
fn sample_grad_in_place(
    sample: &SampleTerms,
    z: &mut [f32],
    positives: &[Positive],
    scratch: &mut Vec<f32>,
) -> f64 {
    let n = sample.n;
    // Loops, not `collect`: the closure of a `collect` lands in a generic function of the
    // standard library, compiled without this function's target features.
    let mut maxima = Vec::with_capacity(positives.len());
    for row in z.chunks(n) {
        maxima.push(host_softmax::row_max(row));
    }
    // Each row's positive term, read before the logits are overwritten.
    let terms: Vec<PositiveTerm> = z
        .chunks(n)
        .zip(positives)
        .zip(&maxima)
        .map(|((row, positive), &max)| PositiveTerm::new(row, positive, max))
        .collect();
    let inv_rows = 1.0 / sample.rows as f32;
    let (log_sums, mut loss) = match sample.consistency {
        None => {
            let mut sums = Vec::with_capacity(maxima.len());
            for (row, &max) in z.chunks_mut(n).zip(&maxima) {
                sums.push(host_softmax::exp_shifted_sum(row, max));
            }
            for (row, sum) in z.chunks_mut(n).zip(&sums) {
                let factor = sum.recip() * inv_rows;
                row.iter_mut().for_each(|x| *x *= factor);
            }
            (sums.iter().map(|s| s.ln()).collect::<Vec<f32>>(), 0.0)
        }
        Some(scale) => {
            scratch.resize(z.len(), 0.0);
            let views = ViewRows::new(z, &maxima, scratch);
            write_consistency_grad(z, scratch, &views, inv_rows, scale as f32);
            let s: f64 = views.rows.iter().map(|v| f64::from(v.s)).sum();
            (views.rows.iter().map(|v| v.log_sum).collect(), scale * s)
        }
    };
    let mut positive_loss = 0.0;
    for ((row, term), log_sum) in z.chunks_mut(n).zip(&terms).zip(&log_sums) {
        positive_loss -= f64::from(term.shift - log_sum);
        for &(j, q) in &term.q {
            row[j] -= q * inv_rows;
        }
    }
    loss += positive_loss / sample.rows as f64;
    loss
}

/// A row's positive term before its normaliser: `log Σ_{j∈G} p_j = shift − log S`, with
/// `shift` and `log S` kept apart, so that a log-probability near 0 keeps its digits (their sum
/// with the row maximum in one f32 would round it to a step of the maximum's size).
struct PositiveTerm {
    /// `log Σ_{j∈G} exp(z_j − max)`.
    shift: f32,
    /// The softmax restricted to the positives, `(column, q_j)`: `q = 1` on the own column.
    q: Vec<(usize, f32)>,
}

impl PositiveTerm {
    /// The term of `row`, whose largest logit is `max`.
    fn new(row: &[f32], positive: &Positive, max: f32) -> Self {
        match positive {
            Positive::Own(t) => Self {
                shift: row[*t] - max,
                q: vec![(*t, 1.0)],
            },
            Positive::Group(columns) => {
                let group_max = columns
                    .iter()
                    .map(|&j| row[j])
                    .fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = columns
                    .iter()
                    .map(|&j| (row[j] - group_max).exp())
                    .collect();
                let sum: f32 = e.iter().sum();
                Self {
                    shift: (group_max - max) + sum.ln(),
                    q: columns.iter().zip(e).map(|(&j, e)| (j, e / sum)).collect(),
                }
            }
        }
    }
}

/// Lanes `start..start + len` of `row` (`len ≤ LANES`), the unused ones `fill`.
#[inline(always)]
fn load(row: &[f32], (start, len): (usize, usize), fill: f32) -> Lanes {
    if len == LANES {
        Lanes::load(&row[start..start + LANES])
    } else {
        load_tail(&row[start..start + len], fill)
    }
}

/// The last, partial chunk of a row in lanes, the unused ones `fill`. Kept out of line: merged
/// with the full chunks' load, the copy would become a library call of variable length.
#[cold]
#[inline(never)]
fn load_tail(values: &[f32], fill: f32) -> Lanes {
    let mut lanes = [fill; LANES];
    lanes[..values.len()].copy_from_slice(values);
    Lanes(lanes)
}

/// Lanes `0..len` of `x` written to `row[start..start + len]`.
#[inline(always)]
fn store(row: &mut [f32], (start, len): (usize, usize), x: Lanes) {
    if len == LANES {
        row[start..start + LANES].copy_from_slice(&x.to_array());
    } else {
        store_tail(&mut row[start..start + len], x);
    }
}

/// The first `values.len()` lanes of `x` into `values` (a row's last, partial chunk).
#[cold]
#[inline(never)]
fn store_tail(values: &mut [f32], x: Lanes) {
    let len = values.len();
    values.copy_from_slice(&x.to_array()[..len]);
}

/// The consistency's statistics of one view's row `k`: with `ℓ = log p` and `m` the mean over
/// the views of `ℓ`, `ℓ_k − m = (z_k − z̄) − c_k`, `z̄` the views' mean logit.
struct ViewRow {
    /// `log Σ_n exp(z_kn − max_k)`.
    log_sum: f32,
    /// `1 / Σ_n exp(z_kn − max_k)`.
    inv_sum: f32,
    /// `c_k = (max_k − mean_j max_j) + (log_sum_k − mean_j log_sum_j)`.
    offset: f32,
    /// `s_k = Σ_n p_kn (ℓ_kn − m_n)` (Bulat eq. 3 in [`crate::closed_form`]'s form).
    s: f32,
}

/// One sample's rows for the consistency loss.
struct ViewRows {
    rows: Vec<ViewRow>,
}

impl ViewRows {
    /// One pass over the sample's `K` rows `z` (`[K, n]`): `exp(z − max)` into `exp`, each
    /// row's sum, and `Σ_n exp(z_kn − max_k)(z_kn − z̄_n)`, from which
    /// `s_k = Σ_n p_kn (z_kn − z̄_n) − c_k` (since `Σ_n p_kn = 1`).
    #[inline(always)]
    fn new(z: &[f32], maxima: &[f32], exp: &mut [f32]) -> Self {
        let views = maxima.len();
        let n = z.len() / views;
        let inv_views = Lanes::splat(1.0 / views as f32);
        let (mut sums, mut spread) = (vec![Lanes::ZERO; views], vec![Lanes::ZERO; views]);
        let mut lanes = vec![Lanes::ZERO; views];
        for start in (0..n).step_by(LANES) {
            let at = (start, LANES.min(n - start));
            for (k, (lane, &max)) in lanes.iter_mut().zip(maxima).enumerate() {
                // Unused lanes at `max − 10⁴`: their exponential is 0.
                *lane = load(&z[k * n..(k + 1) * n], at, max - 1e4);
            }
            let mean = lanes.iter().fold(Lanes::ZERO, |a, &x| a + x) * inv_views;
            for (k, (&lane, &max)) in lanes.iter().zip(maxima).enumerate() {
                let e = (lane - Lanes::splat(max)).exp();
                store(&mut exp[k * n..(k + 1) * n], at, e);
                sums[k] += e;
                spread[k] += e * (lane - mean);
            }
        }
        let log_sums: Vec<f32> = sums.iter().map(|s| s.reduce_add().ln()).collect();
        let mean_max = maxima.iter().sum::<f32>() / views as f32;
        let mean_log_sum = log_sums.iter().sum::<f32>() / views as f32;
        let rows = (0..views)
            .map(|k| {
                let inv_sum = sums[k].reduce_add().recip();
                let offset = (maxima[k] - mean_max) + (log_sums[k] - mean_log_sum);
                ViewRow {
                    log_sum: log_sums[k],
                    inv_sum,
                    offset,
                    s: spread[k].reduce_add() * inv_sum - offset,
                }
            })
            .collect();
        Self { rows }
    }
}

/// Writes over each of the sample's rows `z` `p/M + scale · (p_k ⊙ (ℓ_k − m + 1 − s_k) − P/K)`
/// (`P = Σ_j p_j`), `p` read from `exp` (`exp(z − max)`, `[K, n]`).
#[inline(always)]
fn write_consistency_grad(z: &mut [f32], exp: &[f32], views: &ViewRows, inv_rows: f32, scale: f32) {
    let count = views.rows.len();
    let n = z.len() / count;
    let inv_views = Lanes::splat(1.0 / count as f32);
    let (inv_rows, scale) = (Lanes::splat(inv_rows), Lanes::splat(scale));
    let (mut lanes, mut probs) = (vec![Lanes::ZERO; count], vec![Lanes::ZERO; count]);
    for start in (0..n).step_by(LANES) {
        let at = (start, LANES.min(n - start));
        for (k, view) in views.rows.iter().enumerate() {
            lanes[k] = load(&z[k * n..(k + 1) * n], at, 0.0);
            probs[k] = load(&exp[k * n..(k + 1) * n], at, 0.0) * Lanes::splat(view.inv_sum);
        }
        let mean = lanes.iter().fold(Lanes::ZERO, |a, &x| a + x) * inv_views;
        let p_mean = probs.iter().fold(Lanes::ZERO, |a, &x| a + x) * inv_views;
        for (k, view) in views.rows.iter().enumerate() {
            let centred = lanes[k] - mean - Lanes::splat(view.offset - 1.0 + view.s);
            let g = probs[k] * inv_rows + (probs[k] * centred - p_mean) * scale;
            store(&mut z[k * n..(k + 1) * n], at, g);
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
