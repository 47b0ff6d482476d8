//! The closed-form losses and gradients against the f64 reference losses of `reference.rs`
//! (values) and central finite differences of those references with respect to the features
//! (gradients), the similarities computed in f64 from the same features and bank rows.

use crate::common::*;
use bank_core::{MemoryBankConfig, ViewLayout};
use bank_losses::{ConsistencyLoss, Positives, SoftmaxObjective};
use burn::prelude::*;

/// `f · Vᵀ` in f64, row-major `[M, N]`.
fn sims(f: &[f64], v: &[f64], d: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for fr in f.chunks(d) {
        for vr in v.chunks(d) {
            out.push(fr.iter().zip(vr).map(|(a, b)| a * b).sum());
        }
    }
    out
}

/// One case: the closed form's loss and gradient against `reference` (a loss of the f64
/// similarities) at temperature `tau`.
#[allow(clippy::too_many_arguments)]
fn check<B: Backend>(
    what: &str,
    objective: SoftmaxObjective,
    positives: Positives<B>,
    layout: ViewLayout,
    (n, d, tau): (usize, usize, f64),
    sample_idx: &[usize],
    reference: impl Fn(&[f64]) -> f64,
    device: &B::Device,
) {
    let m = layout.rows();
    let bank = MemoryBankConfig::new(n, d)
        .with_seed(7)
        .init::<B>(device)
        .unwrap();
    let v: Vec<f64> = values(bank.rows()).iter().map(|&x| x as f64).collect();
    let mut f: Vec<f64> = host_matrix(m, d, 31).iter().map(|&x| x as f64).collect();
    normalize_rows(&mut f, d);
    let f32s: Vec<f32> = f.iter().map(|&x| x as f32).collect();
    // Round the features to f32 first, so that both sides see the same inputs.
    let f: Vec<f64> = f32s.iter().map(|&x| x as f64).collect();
    let targets: Vec<i64> = layout
        .expand(sample_idx)
        .iter()
        .map(|&t| t as i64)
        .collect();

    let lambda = objective.consistency().map_or(0.0, |c| c.weight);
    let out = objective
        .eval(
            &bank,
            tensor::<B>(f32s, m, d, device),
            indices::<B>(&targets, device),
            &positives,
            layout,
        )
        .unwrap();
    let loss = scalar(out.loss);
    let grad: Vec<f64> = values(out.features_grad)
        .iter()
        .map(|&x| x as f64)
        .collect();

    let of_features = |x: &[f64]| reference(&sims(x, &v, d));
    let want = of_features(&f);
    // Where the matmul rounds its inputs (TF32 on CUDA), each logit of unit rows moves by up to
    // δ = 2u/τ, and a loss of log-sum-exps and target logits by up to 2δ. The consistency term
    // and the gradient get first-order estimates, not proven bounds: 4δ per unit of λ, and 2δ
    // of the gradient's scale. u = 0 off CUDA: there the tolerances are the f32 ones.
    let delta = 2.0 * matmul_input_roundoff::<B>(device) / tau;
    assert!(
        (loss - want).abs() <= 1e-4 * (1.0 + want.abs()) + 2.0 * delta * (1.0 + 2.0 * lambda),
        "{what} at τ {tau}: loss {loss}, reference {want}"
    );
    let coords: Vec<usize> = (0..m * d).step_by(3).collect();
    let fd = crate::reference::finite_diff(of_features, &f, &coords, 1e-6);
    let scale = fd.iter().fold(1e-3f64, |a, b| a.max(b.abs()));
    for (&c, w) in coords.iter().zip(&fd) {
        assert!(
            (grad[c] - w).abs() <= (1e-4 + 2.0 * delta) * scale,
            "{what} at τ {tau}: ∂L/∂f[{c}] closed form {}, finite difference {w}",
            grad[c]
        );
    }
}

fn closed_form_matches_reference_and_finite_differences<B: Backend>(device: &B::Device) {
    let (n, d) = (24, 8);
    let layout = ViewLayout::new(3, 2);
    let samples = [4usize, 0, 17];
    let targets = layout.expand(&samples);
    let groups: Vec<u32> = (0..n as u32).map(|j| j / 4).collect();
    let g_i64: Vec<i64> = groups.iter().map(|&g| g as i64).collect();
    let group_ids = || Positives::Groups(indices::<B>(&g_i64, device));
    // Block 0 evaluates all rows at once; 5 leaves a short last block; 1 makes every block miss
    // most rows' groups (only masked logits in a block).
    for (tau, block) in [(0.1, 0), (0.05, 0), (0.1, 5), (0.05, 1)] {
        let plain = SoftmaxObjective::new(tau).unwrap().with_block_rows(block);
        let with_c = plain.with_consistency(Some(ConsistencyLoss::new(0.5).unwrap()));
        let shape = (n, d, tau);
        check::<B>(
            "instance",
            plain,
            Positives::Own,
            layout,
            shape,
            &samples,
            |s| crate::reference::instance(s, n, tau, &targets),
            device,
        );
        check::<B>(
            "merged",
            plain,
            group_ids(),
            layout,
            shape,
            &samples,
            |s| crate::reference::merged(s, n, tau, &targets, &groups),
            device,
        );
        check::<B>(
            "instance + consistency",
            with_c,
            Positives::Own,
            layout,
            shape,
            &samples,
            |s| {
                crate::reference::instance(s, n, tau, &targets)
                    + crate::reference::consistency(s, n, tau, 2, 0.5)
            },
            device,
        );
        check::<B>(
            "merged + consistency",
            with_c,
            group_ids(),
            layout,
            shape,
            &samples,
            |s| {
                crate::reference::merged(s, n, tau, &targets, &groups)
                    + crate::reference::consistency(s, n, tau, 2, 0.5)
            },
            device,
        );
    }
    // K = 3 views: the consistency's pairs beyond two.
    let layout = ViewLayout::new(2, 3);
    let samples = [9usize, 2];
    let targets = layout.expand(&samples);
    for block in [0, 7] {
        let with_c = SoftmaxObjective::new(0.1)
            .unwrap()
            .with_block_rows(block)
            .with_consistency(Some(ConsistencyLoss::new(1.5).unwrap()));
        check::<B>(
            "instance + consistency, K = 3",
            with_c,
            Positives::Own,
            layout,
            (n, d, 0.1),
            &samples,
            |s| {
                crate::reference::instance(s, n, 0.1, &targets)
                    + crate::reference::consistency(s, n, 0.1, 3, 1.5)
            },
            device,
        );
    }
}

on_backends!(closed_form_matches_reference_and_finite_differences);

fn closed_form_stays_finite_at_small_temperature<B: Backend>(device: &B::Device) {
    // τ = 0.01 over unit vectors: logits up to ±100, exp(100) overflows f32 without the shift.
    let (n, d, tau) = (2_000, 16, 0.01);
    let layout = ViewLayout::new(4, 2);
    let bank = MemoryBankConfig::new(n, d)
        .with_seed(3)
        .init::<B>(device)
        .unwrap();
    let rows = |ids: &[i64]| bank.select(indices::<B>(ids, device));
    let ids = [0, 0, 5, 5, 9, 9, 1999, 1999];
    // Features equal to their own rows: p is one-hot to f32, the loss and ∂L/∂f are 0 up to
    // rounding. And each view between its row and another (the second view nearer its row):
    // each softmax splits between two rows, and the gradient is far above rounding.
    let others = [7, 7, 1500, 1500, 2, 2, 640, 640];
    let weights = Tensor::<B, 1>::from_floats([1.0, 0.8, 1.0, 0.8, 1.0, 0.8, 1.0, 0.8], device);
    let mixed = rows(&ids) + rows(&others) * weights.unsqueeze_dim(1);
    let norms = mixed.clone().powi_scalar(2).sum_dim(1).sqrt();
    let targets = indices::<B>(&ids, device);
    let groups: Vec<i64> = (0..n as i64).map(|j| j / 2).collect();
    let own_and_groups = [
        Positives::Own,
        Positives::Groups(indices::<B>(&groups, device)),
    ];
    for (features, one_hot) in [(rows(&ids), true), (mixed / norms, false)] {
        for positives in &own_and_groups {
            // All rows at once, then in blocks of 300 (the last one short): the same, finite.
            let [(loss, grad), (blocked_loss, blocked_grad)] = [0, 300].map(|block| {
                let out = SoftmaxObjective::new(tau)
                    .unwrap()
                    .with_block_rows(block)
                    .with_consistency(Some(ConsistencyLoss::new(0.5).unwrap()))
                    .eval(&bank, features.clone(), targets.clone(), positives, layout)
                    .unwrap();
                (scalar(out.loss), values(out.features_grad))
            });
            assert!(loss.is_finite() && loss >= 0.0, "loss {loss}");
            assert!(grad.iter().all(|g| g.is_finite()));
            let scale = grad.iter().fold(0f32, |a, g| a.max(g.abs()));
            let (loss_tol, grad_tol) = if one_hot {
                // ∂L/∂f sums terms of up to 2/(Mτ) = 25: rounding is a few ε of that. burn's
                // operations form log p as z − (max + log S), whose rounding is a step of the
                // logits' size (1/τ = 100): wgpu's blocked loss came out at −1.9e-6.
                let term = 2.0 / (layout.rows() as f32 * tau as f32);
                assert!(loss < 1e-5, "one-hot: loss {loss}");
                (
                    2.0 * f64::from(f32::EPSILON) / tau,
                    8.0 * f32::EPSILON * term,
                )
            } else {
                assert!(scale > 1.0, "a gradient of {scale} compares rounding");
                (1e-4 * (1.0 + loss.abs()), 1e-4 * scale)
            };
            assert!(
                (blocked_loss - loss).abs() <= loss_tol,
                "blocks, one-hot {one_hot}: loss {blocked_loss} against {loss}"
            );
            for (i, (b, g)) in blocked_grad.iter().zip(&grad).enumerate() {
                assert!(
                    (b - g).abs() <= grad_tol,
                    "blocks, one-hot {one_hot}: ∂L/∂f[{i}] {b} against {g}"
                );
            }
        }
    }
}

on_backends!(closed_form_stays_finite_at_small_temperature);

#[test]
fn closed_form_shape_errors_name_what_is_wrong() {
    type B = burn::backend::NdArray;
    let device = Default::default();
    let bank = MemoryBankConfig::new(10, 4).init::<B>(&device).unwrap();
    let f = Tensor::<B, 2>::zeros([4, 4], &device);
    let t = indices::<B>(&[0, 1, 2, 3], &device);
    let layout = ViewLayout::new(2, 2);
    for block in [0, 3] {
        let objective = SoftmaxObjective::new(0.1).unwrap().with_block_rows(block);
        shape_errors(&objective, &bank, (f.clone(), t.clone()), layout, &device);
    }
    assert!(
        SoftmaxObjective::new(0.0)
            .unwrap_err()
            .to_string()
            .contains("temperature")
    );
}

/// Wrong targets, group ids and views each give an error naming them.
fn shape_errors<B: Backend>(
    objective: &SoftmaxObjective,
    bank: &bank_core::MemoryBank<B>,
    (f, t): (Tensor<B, 2>, Tensor<B, 1, Int>),
    layout: ViewLayout,
    device: &B::Device,
) {
    let err = objective
        .eval(
            bank,
            f.clone(),
            indices::<B>(&[0, 1], device),
            &Positives::Own,
            layout,
        )
        .unwrap_err();
    assert!(err.to_string().contains("targets"), "{err}");
    let err = objective
        .eval(
            bank,
            f.clone(),
            t.clone(),
            &Positives::Groups(indices::<B>(&[0; 3], device)),
            layout,
        )
        .unwrap_err();
    assert!(err.to_string().contains("groups"), "{err}");
    let err = objective
        .with_consistency(Some(ConsistencyLoss::new(0.5).unwrap()))
        .eval(bank, f, t, &Positives::Own, ViewLayout::new(4, 1))
        .unwrap_err();
    assert!(err.to_string().contains("views"), "{err}");
}
