//! All-rows top-10 neighbour search at N = 200,000, D = 128 (bank-mining's device engine), next to
//! the bare blocked matmul of the same size (the same blocks read back, without the selection),
//! timed in one run.
//!
//! One iteration takes minutes on a CPU, and criterion needs at least ten samples of each side
//! (hours), so this bench has its own harness: it alternates search and matmul `REPEATS` times
//! (default 3) and reports the medians and their ratio. It runs only when asked for by name:
//! `cargo xtask bench --backend ndarray -- knn_large`. `MEMBANK_KNN_ROWS` and
//! `MEMBANK_KNN_REPEATS` change the size and the number of repeats.

use std::time::{Duration, Instant};

use bank_core::MemoryBankConfig;
use bank_mining::{KnnConfig, SearchEngine, nearest_neighbours};
use burn::prelude::*;
use membank_benches::{Bench, blocked_matmul};

fn main() {
    // `cargo bench` passes `--bench` and the filter. A run takes the best part of an hour on a
    // CPU, so it starts only when named exactly, not on every filter that matches it.
    if !std::env::args().any(|a| a == "knn_large") {
        println!("knn_large: skipped (run it by name: `cargo xtask bench -- knn_large`)");
        return;
    }
    let n = env_usize("MEMBANK_KNN_ROWS", 200_000);
    let repeats = env_usize("MEMBANK_KNN_REPEATS", 3).max(1);
    let device = Default::default();
    let bank = MemoryBankConfig::new(n, 128)
        .init::<Bench>(&device)
        .expect("valid bank config");
    // The device engine, whose blocks `blocked_matmul` multiplies; the host engine is measured
    // against FAISS by `cargo xtask bench compare search`.
    let config = KnnConfig::new(10).with_engine(SearchEngine::Device);
    let backend = <Bench as Backend>::name(&device);
    println!("knn_large/{backend}: N = {n}, D = 128, top-10, {repeats} alternating repeats");

    let (mut search, mut matmul) = (Vec::new(), Vec::new());
    for r in 1..=repeats {
        let start = Instant::now();
        let found = nearest_neighbours(&bank, &config).expect("search runs");
        search.push(start.elapsed());
        assert_eq!(found.len(), n);
        let start = Instant::now();
        blocked_matmul(&bank, &config);
        matmul.push(start.elapsed());
        println!(
            "  repeat {r}: search {:.2} s, blocked matmul {:.2} s",
            search[r - 1].as_secs_f64(),
            matmul[r - 1].as_secs_f64()
        );
    }
    let (s, m) = (median(&mut search), median(&mut matmul));
    println!(
        "knn_large/{backend}/all_rows_top10_n{n}: median {:.2} s; blocked_matmul_n{n}: median {:.2} s; ratio {:.3}",
        s.as_secs_f64(),
        m.as_secs_f64(),
        s.as_secs_f64() / m.as_secs_f64()
    );
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    let mid = times.len() / 2;
    if times.len().is_multiple_of(2) {
        (times[mid - 1] + times[mid]) / 2
    } else {
        times[mid]
    }
}
