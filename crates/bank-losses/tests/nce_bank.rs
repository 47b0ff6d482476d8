//! NCE's similarities gathered from a real bank agree with the full similarity matrix.

#[path = "../../bank-core/tests/common/mod.rs"]
mod common;

use bank_core::MemoryBankConfig;
use bank_losses::{NceConfig, nce_similarities};
use burn::prelude::*;
use common::*;

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

on_backends!(gathered_similarities_match_the_full_matrix);
