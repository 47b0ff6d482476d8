//! All-rows top-10 neighbour search over the bank (bank-mining, device engine) next to the bare
//! blocked matmul of the same size (the same blocks, without the selection), at N = 50,000,
//! D = 128.
//! Set `MEMBANK_KNN_ROWS` to bench other sizes; N = 200,000 has its own bench, `knn_large`.

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use bank_core::MemoryBankConfig;
use bank_mining::{KnnConfig, SearchEngine, nearest_neighbours};
use burn::prelude::*;
use criterion::{Criterion, criterion_group, criterion_main};
use membank_benches::{Bench, blocked_matmul};

fn knn(c: &mut Criterion) {
    let n: usize = std::env::var("MEMBANK_KNN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let device = Default::default();
    let bank = MemoryBankConfig::new(n, 128)
        .init::<Bench>(&device)
        .unwrap();
    // The device engine, whose blocks `blocked_matmul` multiplies; the host engine is measured
    // against FAISS by `cargo xtask bench compare search`.
    let config = KnnConfig::new(10).with_engine(SearchEngine::Device);
    let mut group = c.benchmark_group(format!("knn/{}", <Bench as Backend>::name(&device)));
    group.sample_size(10);
    group.bench_function(format!("all_rows_top10_n{n}"), |b| {
        b.iter(|| nearest_neighbours(&bank, &config).unwrap())
    });
    group.bench_function(format!("blocked_matmul_n{n}"), |b| {
        b.iter(|| blocked_matmul(&bank, &config))
    });
    group.finish();
}

criterion_group!(benches, knn);
criterion_main!(benches);
