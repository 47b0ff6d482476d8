//! Finding (or downloading) the training and test images.

use std::path::{Path, PathBuf};

use bank_data::{
    CIFAR10_BINARY, CifarKind, Dataset, DatasetCache, DecodeOptions, Downloader, FolderLayout,
    ImageDataset, cifar_split_files, read_cifar, read_image_archive,
};

use crate::config::DataConfig;
use crate::{Error, Result};

/// The JPEG image-folder archive of CIFAR-10 (as in ../shared/data).
const JPEG_ARCHIVE: &str = "cifar10-jpeg.tar.gz";

/// The data folder: `--data`, else `MEMBANK_DATA`, else `~/.cache/membank/data`.
pub fn data_root(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("MEMBANK_DATA") {
        return PathBuf::from(p);
    }
    cache_home().join("data")
}

fn cache_home() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("membank")
}

/// CIFAR-10 train and test sets from `root`: the JPEG archive (`root/cifar10-jpeg.tar.gz` or
/// `root/cifar10/cifar10-jpeg.tar.gz`), else the official binaries (`cifar-10-batches-bin/`),
/// else downloaded there (SHA-256 checked). Subsetting follows `config`.
pub fn cifar10(root: &Path, config: &DataConfig) -> Result<(ImageDataset, ImageDataset)> {
    let options = DecodeOptions::default();
    let cache = config
        .cache
        .then(|| DatasetCache::new(cache_home().join("decoded")));
    let cached = |name: &str,
                  source: &Path,
                  build: &dyn Fn() -> bank_data::Result<ImageDataset>|
     -> Result<ImageDataset> {
        Ok(match &cache {
            Some(c) => c.load_or_build(name, &[source], "cifar10-v1", build)?,
            None => build()?,
        })
    };
    let archive = [
        root.join(JPEG_ARCHIVE),
        root.join("cifar10").join(JPEG_ARCHIVE),
    ]
    .into_iter()
    .find(|p| p.is_file());
    let (train, test) = if let Some(archive) = archive {
        let read =
            |split: &str| read_image_archive(&archive, split, FolderLayout::ClassFolders, options);
        (
            cached("cifar10-jpeg-train", &archive, &|| read("train"))?,
            cached("cifar10-jpeg-test", &archive, &|| read("test"))?,
        )
    } else {
        let dir = root.join(CIFAR10_BINARY.unpacks_to);
        let dir = if dir.is_dir() {
            dir
        } else {
            tracing::info!(root = %root.display(), "CIFAR-10 not found; downloading");
            Downloader::default()
                .fetch_and_unpack(&CIFAR10_BINARY, root)
                .map_err(|e| Error::Config {
                    field: "data".into(),
                    reason: format!(
                        "no CIFAR-10 under {} ({JPEG_ARCHIVE} or {}/) and the download failed: \
                         {e}. Pass --data or set MEMBANK_DATA to a folder that holds it.",
                        root.display(),
                        CIFAR10_BINARY.unpacks_to
                    ),
                })?
        };
        let read = |train: bool| {
            read_cifar(
                &cifar_split_files(&dir, CifarKind::Cifar10, train),
                CifarKind::Cifar10,
                options,
            )
        };
        let first = dir.join("test_batch.bin");
        (
            cached("cifar10-bin-train", &first, &|| read(true))?,
            cached("cifar10-bin-test", &first, &|| read(false))?,
        )
    };
    let train = if config.train_per_class > 0 {
        train.first_per_class(config.train_per_class)
    } else {
        train
    };
    let test = if config.test_limit > 0 && config.test_limit < test.len() {
        // Evenly spread over the (class-sorted) test set, so every class stays represented.
        let step = test.len() as f64 / config.test_limit as f64;
        let idx: Vec<usize> = (0..config.test_limit)
            .map(|i| (i as f64 * step) as usize)
            .collect();
        test.select(&idx)
    } else {
        test
    };
    Ok((train, test))
}
