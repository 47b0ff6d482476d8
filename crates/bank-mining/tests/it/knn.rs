//! Neighbour search against a brute-force f64 reference.

use crate::common::*;
use bank_core::{MemoryBank, MemoryBankConfig};
use bank_mining::{KnnConfig, SearchEngine, nearest_neighbours, query_neighbours};
use burn::prelude::*;

/// Both engines, each checked on its own.
const ENGINES: [SearchEngine; 2] = [SearchEngine::Host, SearchEngine::Device];

/// Top-`k` configs for each engine with a 1 MiB budget and with `small` bytes, labelled for
/// assertion messages.
fn configs(k: usize, small: usize) -> impl Iterator<Item = (KnnConfig, String)> {
    ENGINES.into_iter().flat_map(move |engine| {
        [1 << 20, small].map(|budget| {
            let config = KnnConfig::new(k)
                .with_memory_budget(budget)
                .with_engine(engine);
            (config, format!("{engine:?}, budget {budget}"))
        })
    })
}

/// Every bank row's similarity to one query in f64, and how far a backend's f32 search may
/// place it from that: f32 accumulation (`1e-5`) plus, where the backend's matmul rounds its
/// inputs ([`matmul_input_roundoff`]), `2 · roundoff · Σ_c |q_c · r_jc|`.
struct Exact {
    sims: Vec<f64>,
    bounds: Vec<f64>,
    /// Whether the backend's matmul rounds its inputs.
    rounded: bool,
}

/// [`Exact`] of each query against every row, with `roundoff` the relative rounding of one
/// matmul input (0 where the search multiplies in f32).
fn exact_similarities(rows: &[f32], queries: &[f32], d: usize, roundoff: f64) -> Vec<Exact> {
    queries
        .chunks(d)
        .map(|query| {
            let (sims, bounds) = rows
                .chunks(d)
                .map(|row| {
                    let terms = query.iter().zip(row).map(|(&a, &b)| a as f64 * b as f64);
                    let sim = terms.clone().sum::<f64>();
                    let abs = terms.map(f64::abs).sum::<f64>();
                    (sim, 1e-5 + 2.0 * roundoff * abs)
                })
                .unzip();
            Exact {
                sims,
                bounds,
                rounded: roundoff > 0.0,
            }
        })
        .collect()
}

/// The exact top-`k`: by similarity, descending, ties to the lower index; `excluded` skipped.
fn brute_force(exact: &Exact, k: usize, excluded: Option<usize>) -> Vec<u32> {
    let mut all: Vec<(f64, u32)> = (0..exact.sims.len())
        .filter(|&j| Some(j) != excluded)
        .map(|j| (exact.sims[j], j as u32))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    all.into_iter().take(k).map(|(_, j)| j).collect()
}

/// `idx` and `sims` are a top-`k` of `exact` (without `excluded`). Where the search multiplies
/// in f32 (`exact.rounded` is false) the list must be the exact one, ties to the lower index.
/// Where it rounds its inputs (TF32 on CUDA), near-ties may swap: each reported similarity must
/// then be within its bound of the exact one, the list descending and without repeats, and no
/// row left out may be surely above a row kept.
fn assert_top_k(
    idx: &[u32],
    sims: &[f32],
    exact: &Exact,
    k: usize,
    excluded: Option<usize>,
    label: &str,
) {
    assert_eq!(idx.len(), k, "{label}");
    assert!(
        sims.windows(2).all(|w| w[0] >= w[1]),
        "{label}: not descending: {sims:?}"
    );
    for (&j, &s) in idx.iter().zip(sims) {
        let j = j as usize;
        assert!(
            (s as f64 - exact.sims[j]).abs() <= exact.bounds[j],
            "{label}: row {j}: similarity {s} against {} (bound {})",
            exact.sims[j],
            exact.bounds[j]
        );
    }
    if !exact.rounded {
        assert_eq!(idx, brute_force(exact, k, excluded).as_slice(), "{label}");
        return;
    }
    let kept: std::collections::HashSet<usize> = idx.iter().map(|&j| j as usize).collect();
    assert_eq!(kept.len(), k, "{label}: repeated rows {idx:?}");
    assert!(
        excluded.is_none_or(|e| !kept.contains(&e)),
        "{label}: kept the excluded row"
    );
    let floor = kept
        .iter()
        .map(|&j| exact.sims[j] + exact.bounds[j])
        .fold(f64::INFINITY, f64::min);
    for j in (0..exact.sims.len()).filter(|j| !kept.contains(j) && Some(*j) != excluded) {
        assert!(
            exact.sims[j] - exact.bounds[j] <= floor,
            "{label}: row {j} ({}) left out, surely above a kept row (floor {floor})",
            exact.sims[j]
        );
    }
}

/// The engine's matmul input rounding: the host engine multiplies the host copy in f32.
fn roundoff_of<B: Backend>(engine: SearchEngine, device: &B::Device) -> f64 {
    match engine {
        SearchEngine::Host => 0.0,
        _ => matmul_input_roundoff::<B>(device),
    }
}

fn knn_equals_brute_force_blocked_and_unblocked<B: Backend>(device: &B::Device) {
    let (n, d, k) = (500, 12, 7);
    let bank = MemoryBankConfig::new(n, d)
        .with_seed(3)
        .init::<B>(device)
        .unwrap();
    let rows = values(bank.rows());
    // 1 MiB holds all columns in one block (the host engine still splits the rows between
    // threads); 16 KiB forces many row and column blocks.
    for (config, label) in configs(k, 16 << 10) {
        let exact = exact_similarities(&rows, &rows, d, roundoff_of::<B>(config.engine, device));
        let got = nearest_neighbours(&bank, &config).unwrap();
        assert_eq!(got.len(), n);
        for (q, exact_q) in exact.iter().enumerate() {
            let (idx, sims) = got.of(q);
            assert_top_k(idx, sims, exact_q, k, Some(q), &format!("row {q}, {label}"));
        }
    }
    let queries = host_matrix(9, d, 4);
    for engine in ENGINES {
        let exact = exact_similarities(&rows, &queries, d, roundoff_of::<B>(engine, device));
        let got = query_neighbours(
            &bank,
            tensor::<B>(queries.clone(), 9, d, device),
            &KnnConfig::new(k)
                .with_memory_budget(16 << 10)
                .with_engine(engine),
        )
        .unwrap();
        for (q, exact_q) in exact.iter().enumerate() {
            let (idx, sims) = got.of(q);
            assert_top_k(
                idx,
                sims,
                exact_q,
                k,
                None,
                &format!("query {q}, {engine:?}"),
            );
        }
    }
}

/// Exact duplicates tie: the lower index wins, whatever the blocking.
fn ties_go_to_the_lower_index<B: Backend>(device: &B::Device) {
    let d = 4;
    let mut v = vec![0f32; 6 * d];
    for (r, row) in v.chunks_mut(d).enumerate() {
        row[if r < 4 { 0 } else { 1 }] = 1.0; // rows 0..4 identical, rows 4, 5 identical
    }
    let bank: MemoryBank<B> = MemoryBankConfig::new(6, d)
        .init_from_features(tensor::<B>(v, 6, d, device))
        .unwrap();
    for (config, _) in configs(2, 8 << 10) {
        let got = nearest_neighbours(&bank, &config).unwrap();
        assert_eq!(got.of(0).0, &[1, 2]);
        assert_eq!(got.of(3).0, &[0, 1]);
        assert_eq!(got.of(5).0[0], 4);
    }
    // Ties that span many scan chunks and column blocks: 100 rows on 3 directions.
    let n = 100;
    let mut v = vec![0f32; n * d];
    for (r, row) in v.chunks_mut(d).enumerate() {
        row[r % 3] = 1.0;
    }
    let bank: MemoryBank<B> = MemoryBankConfig::new(n, d)
        .init_from_features(tensor::<B>(v, n, d, device))
        .unwrap();
    for (config, label) in configs(5, 8 << 10) {
        let got = nearest_neighbours(&bank, &config).unwrap();
        for q in 0..n {
            let want: Vec<u32> = (0..n as u32)
                .filter(|&j| j as usize % 3 == q % 3 && j as usize != q)
                .take(5)
                .collect();
            assert_eq!(got.of(q).0, want.as_slice(), "row {q}, {label}");
        }
    }
}

fn bad_arguments_are_errors<B: Backend>(device: &B::Device) {
    let bank = MemoryBankConfig::new(10, 4).init::<B>(device).unwrap();
    assert!(
        nearest_neighbours(&bank, &KnnConfig::new(10))
            .unwrap_err()
            .to_string()
            .contains("`k`")
    );
    assert!(nearest_neighbours(&bank, &KnnConfig::new(0)).is_err());
    assert!(
        nearest_neighbours(&bank, &KnnConfig::new(2).with_memory_budget(100))
            .unwrap_err()
            .to_string()
            .contains("memory_budget")
    );
    let wrong = tensor::<B>(vec![0.0; 6], 2, 3, device);
    assert!(
        query_neighbours(&bank, wrong, &KnnConfig::new(2))
            .unwrap_err()
            .to_string()
            .contains("[M, 4]")
    );
}

on_backends!(
    knn_equals_brute_force_blocked_and_unblocked,
    ties_go_to_the_lower_index,
    bad_arguments_are_errors
);

/// `Auto` takes the host engine on the CPU backends; a chosen engine is kept.
#[test]
fn auto_is_the_host_engine_on_cpu_backends() {
    use burn::backend::{Flex, NdArray};
    let auto = SearchEngine::Auto;
    assert_eq!(
        auto.resolve::<Flex>(&Default::default()),
        SearchEngine::Host
    );
    assert_eq!(
        auto.resolve::<NdArray>(&Default::default()),
        SearchEngine::Host
    );
    let device = SearchEngine::Device;
    assert_eq!(
        device.resolve::<Flex>(&Default::default()),
        SearchEngine::Device
    );
}
