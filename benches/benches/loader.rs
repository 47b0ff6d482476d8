//! Views per second of the multi-view loader on real CIFAR-10 images (32×32), K = 2 and 4,
//! on 1 thread and on 2, with decoding excluded (images decoded once, as the loader works) and
//! included (each sample's JPEG decoded again for its batch, as a loader without a decoded
//! store would). Also the second start of CIFAR-10 from the dataset cache.
//!
//! Then the streaming loader on JPEGs of ImageNet-like size: 256 CIFAR-10 training images
//! resized to 500×375 (triangle filter) and encoded at quality 90 into a temporary
//! `train/<class>/` folder at start; [`ImageIndex::scan_folder`] → [`ImageIndex::streaming`];
//! RandomResizedCrop to 224 (NPID recipe), K = 2, batches of 32, on 1 and 2 threads, in views/s
//! (`loader_streaming/…`). Each sample's JPEG is read and decoded once per batch.
//!
//! Peer (torchvision `ImageFolder` + `DataLoader`, 2 workers, same files, same crop): not run
//! here. Set `MEMBANK_BENCH_KEEP_JPEGS=<dir>` to write the JPEG folder there and keep it; point
//! the torchvision script at `<dir>/train` with `RandomResizedCrop(224, scale=(0.2, 1))`,
//! `RandomHorizontalFlip`, `ColorJitter(0.4, 0.4, 0.4, 0)`, `RandomGrayscale(0.2)`, batch 32, two
//! views per image, and compare views/s.
//!
//! Data: `../shared/data/cifar10/cifar10-jpeg.tar.gz` (override with `MEMBANK_SHARED_DATA`).

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

// Links the benchmarks' library, for its global allocator (mimalloc, as the binaries use).
use membank_benches as _;

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
                    loader.batch(epoch, &samples).unwrap()
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

/// Writes `n` CIFAR-10 training JPEGs resized to 500×375 under `dir/train/<class>/`.
fn imagenet_sized_jpegs(dir: &std::path::Path, n: usize) {
    for (k, (name, bytes)) in encoded_train(n).into_iter().enumerate() {
        let class = name.parent().and_then(|p| p.file_name()).unwrap();
        let folder = dir.join("train").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        let small = image::load_from_memory(&bytes).unwrap();
        let big = small.resize_exact(500, 375, image::imageops::FilterType::Triangle);
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(folder.join(format!("{k:05}.jpg"))).unwrap(),
        );
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&big.to_rgb8())
            .unwrap();
    }
}

fn streaming_views(c: &mut Criterion) {
    const FILES: usize = 256;
    const STREAM_BATCH: usize = 32;
    const VIEWS: usize = 2;
    let keep = std::env::var_os("MEMBANK_BENCH_KEEP_JPEGS").map(PathBuf::from);
    let temp = std::env::temp_dir().join(format!("membank-bench-jpegs-{}", std::process::id()));
    let dir = keep.clone().unwrap_or(temp);
    imagenet_sized_jpegs(&dir, FILES);
    let index = ImageIndex::scan_folder(&dir.join("train"), &ScanOptions::default()).unwrap();
    let dataset = Arc::new(index.streaming(DecodeOptions::default()).unwrap());
    let transform = Transform::Augment(AugmentConfig::new(224).with_normalize(Normalize::IMAGENET));
    let mut group = c.benchmark_group("loader_streaming");
    group.sample_size(10);
    group.throughput(Throughput::Elements((STREAM_BATCH * VIEWS) as u64));
    for threads in [1usize, 2] {
        let config = LoaderConfig::new(STREAM_BATCH, VIEWS).with_threads(threads);
        let loader = MultiViewLoader::new(Arc::clone(&dataset), config, transform).unwrap();
        let mut step = 0usize;
        group.bench_function(
            format!("jpeg500x375_rrc224/K{VIEWS}/threads{threads}"),
            |b| {
                b.iter(|| {
                    step += 1;
                    let samples: Vec<usize> = (0..STREAM_BATCH)
                        .map(|i| (step * STREAM_BATCH + i) % FILES)
                        .collect();
                    loader.batch(step as u64, &samples).unwrap()
                })
            },
        );
    }
    group.finish();
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

criterion_group!(benches, loader_views, streaming_views);
criterion_main!(benches);
