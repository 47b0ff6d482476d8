//! Every loss against an independent f64 computation, its gradient against central finite
//! differences, and the identities between the losses.

use crate::common::*;
use bank_core::ViewLayout;
use bank_losses::{
    BankLogProbs, ConsistencyLoss, NceConfig, instance_loss, merged_positive_loss, multi_view_loss,
};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// Similarities in [-1, 1] as real dot products of unit vectors would give.
fn sims(m: usize, n: usize, seed: u64) -> Vec<f32> {
    host_matrix(m, n, seed)
}

fn as_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * (1.0 + want.abs()),
        "{what}: got {got}, want {want}"
    );
}

const TAU: f64 = 0.1;

fn values_match_reference<B: Backend>(device: &B::Device) {
    let (samples, views, n) = (3, 4, 40);
    let layout = ViewLayout::new(samples, views);
    let m = layout.rows();
    let s = sims(m, n, 1);
    let sample_idx = [5usize, 0, 39];
    let targets = layout.expand(&sample_idx);
    let targets_i64: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let groups: Vec<u32> = (0..n as u32).map(|j| j % 7).collect();
    let groups_i64: Vec<i64> = groups.iter().map(|&g| g as i64).collect();

    let lp = BankLogProbs::new(tensor::<B>(s.clone(), m, n, device), TAU).unwrap();
    let sd = as_f64(&s);
    let inst = scalar(instance_loss(&lp, indices::<B>(&targets_i64, device)).unwrap());
    close(
        inst,
        crate::reference::instance(&sd, n, TAU, &targets),
        1e-5,
        "instance",
    );
    let mv = scalar(multi_view_loss(&lp, indices::<B>(&targets_i64, device), layout).unwrap());
    close(
        mv,
        crate::reference::instance(&sd, n, TAU, &targets),
        1e-5,
        "multi-view",
    );
    let cons = scalar(
        ConsistencyLoss::new(0.7)
            .unwrap()
            .forward(&lp, layout)
            .unwrap(),
    );
    close(
        cons,
        crate::reference::consistency(&sd, n, TAU, views, 0.7),
        1e-4,
        "consistency",
    );
    let merged = scalar(
        merged_positive_loss(
            &lp,
            indices::<B>(&targets_i64, device),
            indices::<B>(&groups_i64, device),
        )
        .unwrap(),
    );
    close(
        merged,
        crate::reference::merged(&sd, n, TAU, &targets, &groups),
        1e-5,
        "merged",
    );
    // The values are not accidentally equal: grouping lowers the loss.
    assert!(merged < inst - 0.1, "merged {merged} vs instance {inst}");
}

fn nce_matches_reference_and_smooths_z<B: Backend>(device: &B::Device) {
    let (m, k, n_rows) = (6, 16, 1000);
    let tau = 0.07;
    let mut loss = NceConfig::new(n_rows)
        .with_noise(k)
        .with_temperature(tau)
        .with_z_momentum(0.75)
        .init::<B>()
        .unwrap();
    let pos1 = host_matrix(1, m, 2);
    let noise1 = host_matrix(m, k, 3);
    let got1 = scalar(
        loss.forward(
            Tensor::from_data(TensorData::new(pos1.clone(), [m]), device),
            tensor::<B>(noise1.clone(), m, k, device),
        )
        .unwrap(),
    );
    let z1 = crate::reference::z_estimate(&as_f64(&noise1), n_rows, tau);
    close(
        got1,
        crate::reference::nce(&as_f64(&pos1), &as_f64(&noise1), k, n_rows, tau, z1),
        1e-4,
        "nce batch 1",
    );
    close(loss.z().unwrap(), z1, 1e-4, "Z after batch 1");

    let pos2 = host_matrix(1, m, 4);
    let noise2: Vec<f32> = host_matrix(m, k, 5).iter().map(|x| x * 0.5 + 0.3).collect();
    let got2 = scalar(
        loss.forward(
            Tensor::from_data(TensorData::new(pos2.clone(), [m]), device),
            tensor::<B>(noise2.clone(), m, k, device),
        )
        .unwrap(),
    );
    let z2 = 0.75 * z1 + 0.25 * crate::reference::z_estimate(&as_f64(&noise2), n_rows, tau);
    close(
        loss.z().unwrap(),
        z2,
        1e-4,
        "Z after batch 2 (moving average)",
    );
    close(
        got2,
        crate::reference::nce(&as_f64(&pos2), &as_f64(&noise2), k, n_rows, tau, z2),
        1e-4,
        "nce batch 2",
    );
}

fn consistency_is_zero_for_equal_views_and_merged_equals_instance_for_singletons<B: Backend>(
    device: &B::Device,
) {
    let (samples, views, n) = (4, 3, 50);
    let layout = ViewLayout::new(samples, views);
    let per_sample = sims(samples, n, 9);
    let equal_views: Vec<f32> = per_sample.chunks(n).flat_map(|r| r.repeat(views)).collect();
    let lp = BankLogProbs::new(tensor::<B>(equal_views, layout.rows(), n, device), 0.05).unwrap();
    let cons = scalar(
        ConsistencyLoss::new(1.0)
            .unwrap()
            .forward(&lp, layout)
            .unwrap(),
    );
    assert!(cons.abs() < 1e-5, "consistency of equal views = {cons}");

    let s = sims(layout.rows(), n, 10);
    let lp = BankLogProbs::new(tensor::<B>(s, layout.rows(), n, device), 0.05).unwrap();
    let cons = scalar(
        ConsistencyLoss::new(1.0)
            .unwrap()
            .forward(&lp, layout)
            .unwrap(),
    );
    assert!(cons > 0.01, "consistency of different views = {cons}");

    let targets: Vec<i64> = (0..layout.rows() as i64)
        .map(|r| (r * 3) % n as i64)
        .collect();
    let singletons: Vec<i64> = (0..n as i64).map(|j| 1000 - j).collect();
    let inst = scalar(instance_loss(&lp, indices::<B>(&targets, device)).unwrap());
    let merged = scalar(
        merged_positive_loss(
            &lp,
            indices::<B>(&targets, device),
            indices::<B>(&singletons, device),
        )
        .unwrap(),
    );
    close(merged, inst, 1e-6, "merged with singleton groups");
}

/// τ = 0.02 over a 50,000-row bank: logits of ±50, where a naive softmax overflows.
fn no_nan_at_small_temperature_and_large_bank<B: AutodiffBackend>(device: &B::Device) {
    let (samples, views, n) = (8, 2, 50_000);
    let layout = ViewLayout::new(samples, views);
    let mut s = sims(layout.rows(), n, 11);
    // Each row has a perfect match (s = 1) and a perfect opposite (s = −1).
    for r in 0..layout.rows() {
        s[r * n + r] = 1.0;
        s[r * n + r + 1] = -1.0;
    }
    let x = tensor::<B>(s, layout.rows(), n, device).require_grad();
    let lp = BankLogProbs::new(x.clone(), 0.02).unwrap();
    let idx: Vec<i64> = layout.expand(&(0..samples as i64).collect::<Vec<_>>());
    let groups: Vec<i64> = (0..n as i64).map(|j| j / 3).collect();
    let total = instance_loss(&lp, indices::<B>(&idx, device)).unwrap()
        + ConsistencyLoss::new(0.5)
            .unwrap()
            .forward(&lp, layout)
            .unwrap()
        + merged_positive_loss(
            &lp,
            indices::<B>(&idx, device),
            indices::<B>(&groups, device),
        )
        .unwrap();
    let value = scalar(total.clone());
    assert!(value.is_finite(), "loss {value}");
    let grad = total.backward();
    let g = x
        .grad(&grad)
        .unwrap()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap();
    assert!(g.iter().all(|v| v.is_finite()), "non-finite gradient");
    assert!(g.iter().any(|v| *v != 0.0));

    let k = 64;
    let mut nce = NceConfig::new(n)
        .with_noise(k)
        .with_temperature(0.02)
        .init::<B>()
        .unwrap();
    let pos = Tensor::<B, 1>::ones([layout.rows()], device);
    let noise = tensor::<B>(host_matrix(layout.rows(), k, 12), layout.rows(), k, device);
    let v = scalar(nce.forward(pos, noise).unwrap());
    assert!(v.is_finite(), "nce {v}");
}

on_backends!(
    values_match_reference,
    nce_matches_reference_and_smooths_z,
    consistency_is_zero_for_equal_views_and_merged_equals_instance_for_singletons
);
on_autodiff_backends!(no_nan_at_small_temperature_and_large_bank);

/// Gradient of `loss(x)` with respect to `x` from autodiff, at the coordinates `coords`.
fn autodiff_grad<B: AutodiffBackend>(
    x: &[f32],
    shape: [usize; 2],
    coords: &[usize],
    device: &B::Device,
    loss: impl Fn(Tensor<B, 2>) -> Tensor<B, 1>,
) -> Vec<f64> {
    let t = tensor::<B>(x.to_vec(), shape[0], shape[1], device).require_grad();
    let grads = loss(t.clone()).backward();
    let g = t
        .grad(&grads)
        .unwrap()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap();
    coords.iter().map(|&c| g[c]).collect()
}

fn assert_grads(got: &[f64], want: &[f64], tol: f64, what: &str) {
    let scale = want.iter().fold(1e-3f64, |a, b| a.max(b.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}: coordinate {i}: autodiff {g}, finite difference {w}"
        );
    }
}

fn gradients_match_finite_differences<B: AutodiffBackend>(device: &B::Device) {
    let (samples, views, n) = (2, 3, 12);
    let layout = ViewLayout::new(samples, views);
    let m = layout.rows();
    let s = sims(m, n, 21);
    let sd = as_f64(&s);
    let targets = layout.expand(&[3usize, 8]);
    let t_i64: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let groups: Vec<u32> = (0..n as u32).map(|j| j / 3).collect();
    let g_i64: Vec<i64> = groups.iter().map(|&g| g as i64).collect();
    let coords: Vec<usize> = (0..m * n).step_by(5).collect();
    let eps = 1e-5;
    let tol = 2e-3;

    let got = autodiff_grad::<B>(&s, [m, n], &coords, device, |x| {
        instance_loss(
            &BankLogProbs::new(x, TAU).unwrap(),
            indices::<B>(&t_i64, device),
        )
        .unwrap()
    });
    let want = crate::reference::finite_diff(
        |x| crate::reference::instance(x, n, TAU, &targets),
        &sd,
        &coords,
        eps,
    );
    assert_grads(&got, &want, tol, "instance");

    let got = autodiff_grad::<B>(&s, [m, n], &coords, device, |x| {
        multi_view_loss(
            &BankLogProbs::new(x, TAU).unwrap(),
            indices::<B>(&t_i64, device),
            layout,
        )
        .unwrap()
    });
    assert_grads(&got, &want, tol, "multi-view");

    let got = autodiff_grad::<B>(&s, [m, n], &coords, device, |x| {
        ConsistencyLoss::new(0.5)
            .unwrap()
            .forward(&BankLogProbs::new(x, TAU).unwrap(), layout)
            .unwrap()
    });
    let want = crate::reference::finite_diff(
        |x| crate::reference::consistency(x, n, TAU, views, 0.5),
        &sd,
        &coords,
        eps,
    );
    assert_grads(&got, &want, tol, "consistency");

    let got = autodiff_grad::<B>(&s, [m, n], &coords, device, |x| {
        merged_positive_loss(
            &BankLogProbs::new(x, TAU).unwrap(),
            indices::<B>(&t_i64, device),
            indices::<B>(&g_i64, device),
        )
        .unwrap()
    });
    let want = crate::reference::finite_diff(
        |x| crate::reference::merged(x, n, TAU, &targets, &groups),
        &sd,
        &coords,
        eps,
    );
    assert_grads(&got, &want, tol, "merged");

    // NCE: gradient with respect to the positive and noise similarities, Z held at its estimate.
    let (rows, k, n_rows, tau) = (3, 5, 100, 0.1);
    let packed = host_matrix(rows, k + 1, 22); // column 0: positive, 1..: noise
    let pd = as_f64(&packed);
    let split = |x: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let pos = x.chunks(k + 1).map(|r| r[0]).collect();
        let noise = x.chunks(k + 1).flat_map(|r| r[1..].to_vec()).collect();
        (pos, noise)
    };
    let z = {
        let (_, noise) = split(&pd);
        crate::reference::z_estimate(&noise, n_rows, tau)
    };
    let coords: Vec<usize> = (0..rows * (k + 1)).collect();
    let got = autodiff_grad::<B>(&packed, [rows, k + 1], &coords, device, |x| {
        let mut nce = NceConfig::new(n_rows)
            .with_noise(k)
            .with_temperature(tau)
            .init::<B>()
            .unwrap();
        let pos = x.clone().slice([0..rows, 0..1]).squeeze_dim(1);
        let noise = x.slice([0..rows, 1..k + 1]);
        nce.forward(pos, noise).unwrap()
    });
    let want = crate::reference::finite_diff(
        |x| {
            let (pos, noise) = split(x);
            crate::reference::nce(&pos, &noise, k, n_rows, tau, z)
        },
        &pd,
        &coords,
        eps,
    );
    assert_grads(&got, &want, tol, "nce");
}

on_autodiff_backends!(gradients_match_finite_differences);

#[test]
fn invalid_hyperparameters_name_the_field() {
    type B = burn::backend::NdArray;
    let x = Tensor::<B, 2>::zeros([2, 3], &Default::default());
    for tau in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = BankLogProbs::new(x.clone(), tau).unwrap_err();
        assert!(err.to_string().contains("temperature"), "{err}");
    }
    assert!(
        ConsistencyLoss::new(-0.5)
            .unwrap_err()
            .to_string()
            .contains("consistency weight")
    );
    assert!(
        NceConfig::new(10)
            .with_noise(0)
            .init::<B>()
            .unwrap_err()
            .to_string()
            .contains("noise")
    );
    assert!(
        NceConfig::new(10)
            .with_z_momentum(1.0)
            .init::<B>()
            .unwrap_err()
            .to_string()
            .contains("z_momentum")
    );
    let lp = BankLogProbs::new(x, 0.1).unwrap();
    let err = ConsistencyLoss::new(1.0)
        .unwrap()
        .forward(&lp, ViewLayout::new(2, 1))
        .unwrap_err();
    assert!(err.to_string().contains("views"), "{err}");
    let err = multi_view_loss(
        &lp,
        Tensor::zeros([2], &Default::default()),
        ViewLayout::new(2, 2),
    )
    .unwrap_err();
    assert!(err.to_string().contains("B·K"), "{err}");
    let err = instance_loss(&lp, Tensor::zeros([3], &Default::default())).unwrap_err();
    assert!(err.to_string().contains("targets"), "{err}");
}
