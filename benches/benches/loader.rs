//! Views per second of the multi-view loader on real CIFAR-10 images (32×32), K = 2 and 4,
//! on 1 thread and on 2, with decoding excluded (images decoded once, as the loader works) and
//! included (each sample's JPEG decoded again for its batch, as a loader without a decoded
//! store would). Also the second start of CIFAR-10 from the dataset cache.
//!
//! Data: `../shared/data/cifar10/cifar10-jpeg.tar.gz` (override with `MEMBANK_SHARED_DATA`).

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bank_data::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rayon::prelude::*;

const BATCH: usize = 128;

fn archive() -> PathBuf {
    let data = std::env::var("MEMBANK_SHARED_DATA").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
        PathBuf::from,
    );
    data.join("cifar10/cifar10-jpeg.tar.gz")
}

/// The first `n` training JPEGs of the archive, encoded.
fn encoded_train(n: usize) -> Vec<(PathBuf, Vec<u8>)> {
    let file = std::fs::File::open(archive()).expect("CIFAR-10 archive");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        if entry.header().entry_type().is_file() && path.starts_with("train") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            out.push((path, bytes));
            if out.len() == n {
                break;
            }
        }
    }
    out
}

fn loader_views(c: &mut Criterion) {
    let train = Arc::new(
        read_image_archive(
            archive(),
            "train",
            FolderLayout::ClassFolders,
            DecodeOptions::default(),
        )
        .expect("CIFAR-10 archive"),
    );
    let encoded = encoded_train(BATCH);
    let transform = Transform::Augment(AugmentConfig::new(32));
    let samples: Vec<usize> = (0..BATCH).map(|i| i * 389 % train.len()).collect();

    let mut group = c.benchmark_group("loader");
    for views in [2usize, 4] {
        group.throughput(Throughput::Elements((BATCH * views) as u64));
        for threads in [1usize, 2] {
            let config = LoaderConfig::new(BATCH, views).with_threads(threads);
            let loader = MultiViewLoader::new(Arc::clone(&train), config, transform).unwrap();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut epoch = 0;
            group.bench_function(format!("augment/K{views}/threads{threads}"), |b| {
                b.iter(|| {
                    epoch += 1;
                    loader.batch(epoch, &samples)
                })
            });
            group.bench_function(format!("decode+augment/K{views}/threads{threads}"), |b| {
                b.iter(|| {
                    pool.install(|| {
                        encoded
                            .par_iter()
                            .map(|(name, bytes)| {
                                let img = decode_image(name, bytes).unwrap();
                                let r = ImageRef {
                                    index: 0,
                                    height: img.height,
                                    width: img.width,
                                    pixels: &img.pixels,
                                };
                                let mut out = vec![0f32; views * 3 * 32 * 32];
                                for (k, view) in out.chunks_exact_mut(3 * 32 * 32).enumerate() {
                                    transform.apply(&r, 0, 1, k as u64, view);
                                }
                                out
                            })
                            .collect::<Vec<_>>()
                    })
                })
            });
        }
    }
    group.finish();

    // Second start: the decoded training set read back from the cache.
    let dir = std::env::temp_dir().join("membank-bench-cache");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cifar10-train.safetensors");
    save_cache(&train, &path).unwrap();
    let mut group = c.benchmark_group("dataset");
    group.sample_size(10);
    group.bench_function("cache_load/cifar10_train_50k", |b| {
        b.iter(|| load_cache(&path).unwrap())
    });
    group.bench_function("decode_archive/cifar10_train_50k", |b| {
        b.iter(|| {
            read_image_archive(
                archive(),
                "train",
                FolderLayout::ClassFolders,
                DecodeOptions::default(),
            )
            .unwrap()
        })
    });
    group.finish();
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, loader_views);
criterion_main!(benches);
