//! [`crate::SoftmaxObjective`]'s whole bank step on host memory when the backend is burn-flex
//! and the bank is on one device: the logits, the objective and `∂L/∂features`.
//!
//! burn-flex 0.21 gives every product a new output: for the `[M, N]` logits (102 MB at
//! N = 50,000 and M = 512) that is a zeroed allocation, copied once more into an aligned one,
//! both faulted in page by page each step; on the full method's step that took about a fifth of
//! the time. Here the logits are written by the `gemm` crate (the product burn-flex itself
//! calls, through [`bank_core::host_gemm`]) into a buffer that the calling thread keeps from
//! step to step, [`host_objective`] writes `∂L/∂z` over them, and a second product gives
//! `∂L/∂features = (∂L/∂z) · V / τ`. The buffer stays with the thread between steps (the size
//! of the step's largest tensor, which the step needs anyway); one of another size replaces it.

use std::cell::RefCell;

use bank_core::host_gemm::{self, MatRef};

use crate::host_objective::{self, Terms};

thread_local! {
    /// The `[M, N]` logits of this thread's last step, reused by its next.
    static LOGITS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The loss and `∂L/∂features` (`[M, D]` row-major) of `features` against the bank.
///
/// # Shapes
/// - `features`: `[M, D]` row-major, `M = terms.layout.rows()`; `bank`: `[N, D]` row-major
///
/// # Panics
/// When the shapes do not agree with `terms` (the caller checks them), as
/// [`host_objective::grad_in_place`].
pub(crate) fn loss_and_features_grad(
    features: &[f32],
    bank: &[f32],
    dim: usize,
    temperature: f32,
    terms: &Terms,
) -> (Vec<f32>, f64) {
    let m = terms.layout.rows();
    let n = bank.len() / dim;
    assert!(features.len() == m * dim && bank.len() == n * dim);
    let scaled: Vec<f32> = features.iter().map(|&x| x / temperature).collect();
    let mut z = LOGITS.with(RefCell::take);
    // Every element is written by the product: a kept buffer is not cleared first.
    z.resize(m * n, 0.0);
    let (lhs, rhs) = (MatRef::rows(&scaled, dim), MatRef::transposed(bank, dim));
    host_gemm::gemm_threaded(m, n, dim, &mut z, n, false, lhs, rhs);
    let loss = host_objective::grad_in_place(&mut z, n, terms);
    let mut grad = vec![0.0; m * dim];
    let (lhs, rhs) = (MatRef::rows(&z, n), MatRef::rows(bank, dim));
    host_gemm::gemm_threaded(m, dim, n, &mut grad, dim, false, lhs, rhs);
    grad.iter_mut().for_each(|g| *g /= temperature);
    LOGITS.with(|kept| *kept.borrow_mut() = z);
    (grad, loss)
}

#[cfg(test)]
mod tests {
    use bank_core::ViewLayout;

    use super::*;

    /// Unit-free rows of `d` values, from a fixed sequence.
    fn rows(count: usize, d: usize, seed: f32) -> Vec<f32> {
        (0..count * d)
            .map(|i| ((i as f32 * 0.618_034 + seed).fract() - 0.5) * 0.4)
            .collect()
    }

    /// The step in f64: the logits by a plain sum, `∂L/∂z` by `host_objective` on them rounded
    /// to f32, and `∂L/∂f` by a plain sum.
    fn plain(features: &[f32], bank: &[f32], d: usize, tau: f32, terms: &Terms) -> Vec<f64> {
        let (m, n) = (features.len() / d, bank.len() / d);
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum()
        };
        let mut z: Vec<f32> = features
            .chunks(d)
            .flat_map(|f| {
                bank.chunks(d)
                    .map(move |v| (dot(f, v) / f64::from(tau)) as f32)
            })
            .collect();
        host_objective::grad_in_place(&mut z, n, terms);
        (0..m * d)
            .map(|i| {
                let (r, c) = (i / d, i % d);
                (0..n)
                    .map(|j| f64::from(z[r * n + j]) * f64::from(bank[j * d + c]))
                    .sum::<f64>()
                    / f64::from(tau)
            })
            .collect()
    }

    #[test]
    fn a_kept_buffer_of_another_size_gives_the_same_step() {
        let d = 5;
        // Larger, smaller, larger again: the buffer kept from each call is resized by the next.
        for (samples, n) in [(6, 41), (2, 9), (7, 57)] {
            let views = 2;
            let features = rows(samples * views, d, 0.3);
            let bank = rows(n, d, 0.7);
            let targets: Vec<usize> = (0..samples * views).map(|r| (r * 5) % n).collect();
            let terms = Terms {
                targets: &targets,
                groups: None,
                consistency: Some(0.5),
                layout: ViewLayout::new(samples, views),
            };
            let (grad, _) = loss_and_features_grad(&features, &bank, d, 0.1, &terms);
            let want = plain(&features, &bank, d, 0.1, &terms);
            let scale = want.iter().fold(0.0f64, |a, w| a.max(w.abs()));
            for (i, (&g, &w)) in grad.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(g) - w).abs() <= 1e-5 * scale,
                    "B {samples}, N {n}: ∂L/∂f[{i}] {g} vs {w}"
                );
            }
        }
    }
}
