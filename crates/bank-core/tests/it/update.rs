//! The bank update against hand-computed values and an independent f64 computation.

use crate::common::*;
use bank_core::{MemoryBankConfig, ViewLayout};
use burn::prelude::*;

/// Two views of sample 0 pull its row (1, 0) towards (0, 1): one update with m = 0.5 gives
/// normalise(0.5·(1,0) + 0.5·(0,1)) = (1/√2, 1/√2). Updating once per view would give
/// (0.383, 0.924) instead.
fn two_views_move_the_row_once<B: Backend>(device: &B::Device) {
    let rows = tensor::<B>(vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0], 3, 2, device);
    let mut bank = MemoryBankConfig::new(3, 2)
        .init_from_features(rows)
        .unwrap();
    let feats = tensor::<B>(vec![0.0, 1.0, 0.0, 1.0], 2, 2, device);
    bank.update(indices::<B>(&[0, 0], device), feats, 2)
        .unwrap();
    let got = values(bank.rows());
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let want = [h, h, 0.0, 1.0, -1.0, 0.0];
    assert!(max_diff(&got, &want) < 1e-6, "{got:?}");
}

/// Reference update in f64: every distinct index moves once towards the mean of all its rows.
fn reference_update(bank: &[f32], d: usize, idx: &[i64], feats: &[f32], m: f64) -> Vec<f64> {
    let mut out: Vec<f64> = bank.iter().map(|&x| x as f64).collect();
    let mut seen = std::collections::BTreeSet::new();
    for &i in idx {
        if !seen.insert(i) {
            continue;
        }
        let rows: Vec<usize> = (0..idx.len()).filter(|&r| idx[r] == i).collect();
        let mut row = vec![0f64; d];
        for c in 0..d {
            let mean =
                rows.iter().map(|&r| feats[r * d + c] as f64).sum::<f64>() / rows.len() as f64;
            row[c] = m * bank[i as usize * d + c] as f64 + (1.0 - m) * mean;
        }
        normalize_rows(&mut row, d);
        out[i as usize * d..(i as usize + 1) * d].copy_from_slice(&row);
    }
    out
}

fn update_matches_reference_for_k_1_2_4<B: Backend>(device: &B::Device) {
    let (n, d) = (50, 16);
    for views in [1usize, 2, 4] {
        for m in [0.0, 0.5, 0.9] {
            let bank_cfg = MemoryBankConfig::new(n, d)
                .with_momentum(m)
                .with_seed(views as u64);
            let mut bank = bank_cfg.init::<B>(device).unwrap();
            let before = values(bank.rows());
            // 6 samples; sample 3 repeats sample 1's index (a duplicate across samples too).
            let samples: Vec<i64> = vec![7, 0, 49, 0, 23, 11];
            let layout = ViewLayout::new(samples.len(), views);
            let idx = layout.expand(&samples);
            let mut f = host_matrix(layout.rows(), d, 17 + views as u64);
            let mut f64s: Vec<f64> = f.iter().map(|&x| x as f64).collect();
            normalize_rows(&mut f64s, d);
            f.iter_mut().zip(&f64s).for_each(|(a, b)| *a = *b as f32);

            let want = reference_update(&before, d, &idx, &f, m);
            bank.update(
                indices::<B>(&idx, device),
                tensor::<B>(f, layout.rows(), d, device),
                views,
            )
            .unwrap();
            let got = values(bank.rows());
            let err = max_diff(&got, &want);
            assert!(err < 2e-6, "K={views} m={m}: max error {err}");
        }
    }
}

fn update_rejects_bad_shapes<B: Backend>(device: &B::Device) {
    let mut bank = MemoryBankConfig::new(10, 4).init::<B>(device).unwrap();
    let f = tensor::<B>(vec![0.5; 12], 3, 4, device);
    let err = bank
        .update(indices::<B>(&[1, 1, 2], device), f.clone(), 2)
        .unwrap_err();
    assert!(err.to_string().contains("views"), "{err}");
    let err = bank
        .update(indices::<B>(&[1, 2], device), f, 1)
        .unwrap_err();
    assert!(err.to_string().contains("indices"), "{err}");
    let wrong_dim = tensor::<B>(vec![0.5; 6], 2, 3, device);
    let err = bank
        .update(indices::<B>(&[1, 2], device), wrong_dim, 1)
        .unwrap_err();
    assert!(err.to_string().contains("[M, 4]"), "{err}");
}

/// How far apart two updates of the same rows may come out on `B`: 0 where the scatter-add of
/// `select_assign` adds a row's terms in a fixed order (the CPU backends); on a cubecl backend
/// (CUDA, wgpu) the terms of a repeated index are added atomically, in whatever order the
/// threads arrive. Row 17 below takes 4 terms (2 samples × 2 views) on rows of norm 1, each term
/// at most 2/4 in size, so any order lies within 4 roundings of values below 3 of the exact sum
/// (`4 · 3 · 2⁻²⁴`), and two orders within twice that, `4 · 3 · 2⁻²³ ≈ 1.4e-6`.
fn scatter_add_slack<B: Backend>(device: &B::Device) -> f32 {
    if B::name(device).to_lowercase().contains("cubecl") {
        4.0 * 3.0 * f32::EPSILON
    } else {
        0.0
    }
}

/// A bank split into 3 shards of 17, 17 and 16 rows (N = 50, not divisible by 3), each shard
/// updated with the whole batch through `update_shard`, equals the whole bank's `update` (bit
/// for bit, or within [`scatter_add_slack`]), and both equal the f64 reference; samples fall
/// in every shard, one index twice.
fn shards_update_as_the_whole_bank<B: Backend>(device: &B::Device) {
    let (n, d, views) = (50, 16, 2);
    let bank_cfg = MemoryBankConfig::new(n, d).with_momentum(0.5).with_seed(3);
    let mut whole = bank_cfg.init::<B>(device).unwrap();
    let before = values(whole.rows());
    let ranges = [0..17, 17..34, 34..50];
    let mut shards: Vec<_> = ranges
        .iter()
        .map(|r| whole.rows_range(r.clone()).unwrap())
        .collect();
    let samples: Vec<i64> = vec![16, 17, 49, 0, 33, 34, 17];
    let layout = ViewLayout::new(samples.len(), views);
    let idx = layout.expand(&samples);
    let mut f = host_matrix(layout.rows(), d, 5);
    let mut f64s: Vec<f64> = f.iter().map(|&x| x as f64).collect();
    normalize_rows(&mut f64s, d);
    f.iter_mut().zip(&f64s).for_each(|(a, b)| *a = *b as f32);

    let feats = || tensor::<B>(f.clone(), layout.rows(), d, device);
    whole
        .update(indices::<B>(&idx, device), feats(), views)
        .unwrap();
    let got_whole = values(whole.rows());
    for (shard, range) in shards.iter_mut().zip(&ranges) {
        shard
            .update_shard(indices::<B>(&idx, device), feats(), views, range.start)
            .unwrap();
        let got = values(shard.rows());
        let want = &got_whole[range.start * d..range.end * d];
        match scatter_add_slack::<B>(device) {
            0.0 => assert_eq!(got, want, "shard {range:?}"),
            slack => {
                let diff = got
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(diff <= slack, "shard {range:?}: {diff} apart");
            }
        }
    }
    let want = reference_update(&before, d, &idx, &f, 0.5);
    assert!(max_diff(&got_whole, &want) < 2e-6);
    assert!(whole.rows_range(40..51).is_err());
    assert!(whole.rows_range(3..3).is_err());
}

on_backends!(
    two_views_move_the_row_once,
    update_matches_reference_for_k_1_2_4,
    update_rejects_bad_shapes,
    shards_update_as_the_whole_bank
);

#[test]
fn bank_stays_out_of_the_autodiff_graph() {
    type A = burn::backend::Autodiff<burn::backend::NdArray>;
    let device = Default::default();
    let mut bank = MemoryBankConfig::new(8, 4).init::<A>(&device).unwrap();
    let f = tensor::<A>(host_matrix(2, 4, 3), 2, 4, &device).require_grad();
    let sims = bank.similarities(f.clone()).unwrap();
    bank.update(indices::<A>(&[3, 5], &device), f.clone(), 1)
        .unwrap();
    assert!(!bank.rows().is_require_grad());
    // Gradients still reach the features through the similarities.
    let grads = sims.sum().backward();
    assert!(f.grad(&grads).is_some());
}
