//! membank's streaming loader on a folder of JPEGs: training views per second, decoding included.
//!
//! ```sh
//! cargo run --release -p membank-benches --example loader_views -- ROOT [SIZE] [BATCH] [THREADS] [BATCHES]
//! ```
//! The NPID augmentation (RandomResizedCrop to SIZE, scale 0.2–1, flip, colour jitter, grey) of
//! class-folder images decoded per batch by THREADS worker threads, K = 1, BATCH samples a batch;
//! one warm-up batch excluded. Prints one JSON line, the counterpart of
//! `benches/peer/loader_torchvision.py` (`cargo xtask bench compare loader` runs both).

use std::sync::Arc;
use std::time::Instant;

// Links the benchmarks' library, for its global allocator (mimalloc, as the binaries use).
use membank_benches as _;

use bank_data::{
    AugmentConfig, DecodeOptions, FolderLayout, ImageIndex, LoaderConfig, MultiViewLoader,
    Normalize, ScanOptions, Transform,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = args
        .first()
        .ok_or("usage: loader_views ROOT [SIZE] [BATCH] [THREADS] [BATCHES]")?;
    let arg = |i: usize, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (size, batch, threads, batches) = (arg(1, 224)?, arg(2, 64)?, arg(3, 2)?, arg(4, 30)?);
    let index = ImageIndex::scan_folder(
        std::path::Path::new(root),
        &ScanOptions::new(FolderLayout::ClassFolders),
    )?;
    let dataset = Arc::new(index.streaming(DecodeOptions::default())?);
    let loader = MultiViewLoader::new(
        dataset,
        LoaderConfig::new(batch, 1)
            .with_threads(threads)
            .with_drop_last(true),
        Transform::Augment(AugmentConfig::new(size).with_normalize(Normalize::IMAGENET)),
    )?;
    let mut epoch = 0u64;
    let batches_of = |epoch: u64| loader.epoch(epoch);
    let mut it = batches_of(epoch);
    it.next().ok_or("empty dataset")??; // warm-up
    let (mut views, start) = (0usize, Instant::now());
    for _ in 0..batches {
        let b = match it.next() {
            Some(b) => b?,
            None => {
                epoch += 1;
                it = batches_of(epoch);
                it.next().ok_or("empty dataset")??
            }
        };
        views += b.layout.rows();
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"tool\": \"membank\", \"threads\": {threads}, \"views\": {views}, \"seconds\": {seconds}, \"views_per_s\": {}}}",
        views as f64 / seconds
    );
    Ok(())
}
