//! Similarities, chunking and initialisation.

use crate::common::*;
use bank_core::{MemoryBankConfig, Precision};
use burn::prelude::*;

fn similarities_are_dot_products<B: Backend>(device: &B::Device) {
    let (n, d, m) = (37, 8, 5);
    let bank = MemoryBankConfig::new(n, d)
        .with_seed(4)
        .init::<B>(device)
        .unwrap();
    let rows = values(bank.rows());
    let q = host_matrix(m, d, 9);
    let got = values(
        bank.similarities(tensor::<B>(q.clone(), m, d, device))
            .unwrap(),
    );
    let want: Vec<f64> = (0..m)
        .flat_map(|i| {
            let (q, rows) = (&q, &rows);
            (0..n).map(move |j| {
                (0..d)
                    .map(|c| q[i * d + c] as f64 * rows[j * d + c] as f64)
                    .sum()
            })
        })
        .collect();
    // Each entry within f32's accumulation error, plus what rounding the inputs may cost there
    // (TF32 on CUDA): 2·u·Σ_c |q_c·r_c|.
    let u = matmul_input_roundoff::<B>(device);
    let bound: Vec<f64> = (0..m * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            let magnitude: f64 = (0..d)
                .map(|c| (q[i * d + c] as f64 * rows[j * d + c] as f64).abs())
                .sum();
            1e-5 + 2.0 * u * magnitude
        })
        .collect();
    let within = |values: &[f32], what: &str| {
        for (e, ((v, w), b)) in values.iter().zip(&want).zip(&bound).enumerate() {
            let v = *v as f64;
            assert!(
                (v - w).abs() < *b,
                "{what} [{}, {}]: {v} against {w}",
                e / n,
                e % n
            );
        }
    };
    within(&got, "similarity");

    // Blocks of 10 columns cover the 37 rows exactly once, in order, with the same values.
    let chunks = bank
        .similarity_chunks(tensor::<B>(q, m, d, device), 10)
        .unwrap();
    assert_eq!(chunks.len(), 4);
    let mut starts = vec![];
    let mut joined = vec![0f32; m * n];
    for (start, block) in chunks {
        let [rows_b, cols] = block.dims();
        assert_eq!(rows_b, m);
        assert!(cols <= 10);
        starts.push(start);
        for (k, v) in values(block).into_iter().enumerate() {
            joined[(k / cols) * n + start + k % cols] = v;
        }
    }
    assert_eq!(starts, vec![0, 10, 20, 30]);
    within(&joined, "chunked similarity");
}

fn init_is_seeded_and_unit_norm<B: Backend>(device: &B::Device) {
    let rows = |seed| {
        values(
            MemoryBankConfig::new(100, 16)
                .with_seed(seed)
                .init::<B>(device)
                .unwrap()
                .rows(),
        )
    };
    let (a, b, c) = (rows(1), rows(1), rows(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
    for row in a.chunks(16) {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    // Directions are spread out: the mean row is close to zero.
    let mean0: f32 = a.chunks(16).map(|r| r[0]).sum::<f32>() / 100.0;
    assert!(mean0.abs() < 0.1, "{mean0}");
}

fn init_from_features_normalises_and_checks_shape<B: Backend>(device: &B::Device) {
    let f = tensor::<B>(vec![3.0, 4.0, 0.0, 2.0], 2, 2, device);
    let bank = MemoryBankConfig::new(2, 2)
        .init_from_features(f.clone())
        .unwrap();
    assert!(max_diff(&values(bank.rows()), &[0.6, 0.8, 0.0, 1.0]) < 1e-6);
    let err = MemoryBankConfig::new(3, 2)
        .init_from_features(f)
        .unwrap_err();
    assert!(err.to_string().contains("[3, 2]"), "{err}");
}

on_backends!(
    similarities_are_dot_products,
    init_is_seeded_and_unit_norm,
    init_from_features_normalises_and_checks_shape
);

#[test]
fn f16_storage_halves_memory_and_keeps_values() {
    type B = burn::backend::Flex;
    let device = Default::default();
    let cfg = MemoryBankConfig::new(64, 32).with_seed(5);
    let full = cfg.init::<B>(&device).unwrap();
    let mut half = cfg
        .clone()
        .with_precision(Precision::F16)
        .init::<B>(&device)
        .unwrap();
    assert_eq!(
        half.precision().bytes_per_value() * 2,
        Precision::F32.bytes_per_value()
    );
    assert_eq!(
        half.rows().dtype(),
        burn::tensor::DType::F32,
        "arithmetic view is f32"
    );
    let err = max_diff(
        &values(half.rows()),
        &values(full.rows())
            .iter()
            .map(|&x| x as f64)
            .collect::<Vec<_>>(),
    );
    assert!(err < 1e-3, "f16 rounding error {err}");
    // Updates work in f16 storage too, within f16 resolution of the f32 update.
    let mut full = full;
    let f = tensor::<B>(host_matrix(4, 32, 1), 4, 32, &device);
    let idx = [1i64, 1, 9, 9];
    full.update(indices::<B>(&idx, &device), f.clone(), 2)
        .unwrap();
    half.update(indices::<B>(&idx, &device), f, 2).unwrap();
    let err = max_diff(
        &values(half.rows()),
        &values(full.rows())
            .iter()
            .map(|&x| x as f64)
            .collect::<Vec<_>>(),
    );
    assert!(err < 2e-3, "f16 update error {err}");
}

#[test]
fn f16_on_a_backend_without_f16_is_a_clear_error() {
    let cfg = MemoryBankConfig::new(4, 4).with_precision(Precision::F16);
    let err = cfg
        .init::<burn::backend::NdArray>(&Default::default())
        .unwrap_err();
    assert!(err.to_string().contains("f16"), "{err}");
}
