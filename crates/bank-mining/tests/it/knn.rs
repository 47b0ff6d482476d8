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

/// Brute-force top-k in f64: sort by (similarity desc, index asc).
fn brute_force(
    rows: &[f32],
    queries: &[f32],
    d: usize,
    k: usize,
    exclude_self: bool,
) -> Vec<Vec<u32>> {
    let n = rows.len() / d;
    queries
        .chunks(d)
        .enumerate()
        .map(|(q, query)| {
            let mut all: Vec<(f64, u32)> = (0..n)
                .filter(|&j| !(exclude_self && j == q))
                .map(|j| {
                    let s = (0..d)
                        .map(|c| query[c] as f64 * rows[j * d + c] as f64)
                        .sum::<f64>();
                    (s, j as u32)
                })
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.into_iter().take(k).map(|(_, j)| j).collect()
        })
        .collect()
}

fn knn_equals_brute_force_blocked_and_unblocked<B: Backend>(device: &B::Device) {
    let (n, d, k) = (500, 12, 7);
    let bank = MemoryBankConfig::new(n, d)
        .with_seed(3)
        .init::<B>(device)
        .unwrap();
    let rows = values(bank.rows());
    let want = brute_force(&rows, &rows, d, k, true);
    // 1 MiB holds all columns in one block (the host engine still splits the rows between
    // threads); 16 KiB forces many row and column blocks.
    for (config, label) in configs(k, 16 << 10) {
        let got = nearest_neighbours(&bank, &config).unwrap();
        assert_eq!(got.len(), n);
        for (q, want_q) in want.iter().enumerate() {
            let (idx, sims) = got.of(q);
            assert_eq!(idx, want_q.as_slice(), "row {q}, {label}");
            assert!(sims.windows(2).all(|w| w[0] >= w[1]));
            let exact = (0..d)
                .map(|c| rows[q * d + c] * rows[idx[0] as usize * d + c])
                .sum::<f32>();
            assert!(
                (sims[0] - exact).abs() < 1e-5,
                "row {q}: {} vs {exact}",
                sims[0]
            );
        }
    }
    let queries = host_matrix(9, d, 4);
    let want = brute_force(&rows, &queries, d, k, false);
    for engine in ENGINES {
        let got = query_neighbours(
            &bank,
            tensor::<B>(queries.clone(), 9, d, device),
            &KnnConfig::new(k)
                .with_memory_budget(16 << 10)
                .with_engine(engine),
        )
        .unwrap();
        for (q, want_q) in want.iter().enumerate() {
            assert_eq!(got.of(q).0, want_q.as_slice(), "query {q}, {engine:?}");
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
