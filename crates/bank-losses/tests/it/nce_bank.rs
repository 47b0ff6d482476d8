//! NCE's similarities gathered from a real bank agree with the full similarity matrix.

use crate::common::*;
use bank_core::MemoryBankConfig;
use bank_losses::{BankLogProbs, NceConfig, instance_loss, nce_similarities};
use burn::prelude::*;

fn gathered_similarities_match_the_full_matrix<B: Backend>(device: &B::Device) {
    let (n, d, m, k) = (200, 16, 5, 7);
    let bank = MemoryBankConfig::new(n, d)
        .with_seed(2)
        .init::<B>(device)
        .unwrap();
    let f = tensor::<B>(host_matrix(m, d, 4), m, d, device);
    let full = values(bank.similarities(f.clone()).unwrap());
    let targets = [3i64, 199, 0, 50, 3];
    let nce = NceConfig::new(n).with_noise(k).init::<B>().unwrap();
    let noise_idx = nce.sample_noise(m, device);
    let noise_host: Vec<i64> = noise_idx.to_data().convert::<i64>().to_vec().unwrap();
    assert!(noise_host.iter().all(|&j| (0..n as i64).contains(&j)));
    let (pos, noise) =
        nce_similarities(&bank, f, indices::<B>(&targets, device), noise_idx).unwrap();
    let pos: Vec<f32> = pos.into_data().convert::<f32>().to_vec().unwrap();
    let noise = values(noise);
    for r in 0..m {
        assert!((pos[r] - full[r * n + targets[r] as usize]).abs() < 1e-5);
        for j in 0..k {
            let col = noise_host[r * k + j] as usize;
            assert!((noise[r * k + j] - full[r * n + col]).abs() < 1e-5);
        }
    }
}

/// Applying 1/τ to the features gives the same log-probabilities and gradients as applying it to
/// the similarities.
fn from_features_equals_new_on_similarities<B: burn::tensor::backend::AutodiffBackend>(
    device: &B::Device,
) {
    let (n, d, m) = (300, 16, 6);
    let bank = MemoryBankConfig::new(n, d)
        .with_seed(7)
        .init::<B>(device)
        .unwrap();
    let targets = [1i64, 2, 3, 299, 0, 150];
    let run = |via_features: bool| {
        let f = tensor::<B>(host_matrix(m, d, 8), m, d, device).require_grad();
        let lp = if via_features {
            BankLogProbs::from_features(&bank, f.clone(), 0.05).unwrap()
        } else {
            BankLogProbs::new(bank.similarities(f.clone()).unwrap(), 0.05).unwrap()
        };
        let loss = instance_loss(&lp, indices::<B>(&targets, device)).unwrap();
        let grads = loss.backward();
        (values(lp.tensor()), values(f.grad(&grads).unwrap()))
    };
    let (lp_a, g_a) = run(true);
    let (lp_b, g_b) = run(false);
    let as64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    assert!(max_diff(&lp_a, &as64(&lp_b)) < 1e-4);
    assert!(max_diff(&g_a, &as64(&g_b)) < 1e-4);
    assert!(g_a.iter().any(|&g| g.abs() > 1e-3));
}

on_backends!(gathered_similarities_match_the_full_matrix);
on_autodiff_backends!(from_features_equals_new_on_similarities);
