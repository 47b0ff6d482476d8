//! The official datasets: CIFAR-10 (JPEG archive or binaries), CIFAR-100 and STL-10 binaries,
//! found under the data folder or downloaded there (SHA-256 checked).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bank_data::{
    CIFAR10_BINARY, CIFAR100_BINARY, Cifar100Label, CifarKind, Dataset, DatasetCache,
    DecodeOptions, Downloader, FolderLayout, ImageDataset, ImageIndex, OnError, RemoteFile,
    STL10_BINARY, ScanOptions, cifar_split_files, files_fingerprint, read_cifar, read_stl10,
};

use super::EvalData;
use super::subset::{first_per_class, spread};
use crate::config::{BadImage, DataConfig, DatasetKind};
use crate::{Error, Result};

/// The JPEG image-folder archive of CIFAR-10 (as in ../shared/data).
const JPEG_ARCHIVE: &str = "cifar10-jpeg.tar.gz";

/// The data folder: `--data`, else `MEMBANK_DATA`, else `~/.cache/membank/data`
/// ([`super::open`] makes it absolute). Datasets missing from it are downloaded into it.
///
/// # Errors
/// [`Error::Config`] when `--data` or `MEMBANK_DATA` names a folder that does not exist: a
/// mistyped path would otherwise be created and a download started into it. The default
/// folder is created when needed.
pub fn data_root(flag: Option<&Path>) -> Result<PathBuf> {
    let named = match (flag, std::env::var_os("MEMBANK_DATA")) {
        (Some(p), _) => Some(("--data", p.to_path_buf())),
        (None, Some(p)) => Some(("MEMBANK_DATA", PathBuf::from(p))),
        (None, None) => None,
    };
    match named {
        Some((_, path)) if path.is_dir() => Ok(path),
        Some((what, path)) => Err(Error::Config {
            field: what.into(),
            reason: format!(
                "{}: no such folder. Name the folder that holds the data, or create it to have \
                 the dataset downloaded there",
                path.display()
            ),
        }),
        None => Ok(cache_home().join("data")),
    }
}

/// `$XDG_CACHE_HOME/membank`, else `~/.cache/membank`.
pub fn cache_home() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("membank")
}

/// Decode settings of `config` (the cache key includes them).
pub(super) fn decode_options(config: &DataConfig) -> DecodeOptions {
    DecodeOptions::default().with_on_error(match config.on_bad_image {
        BadImage::Error => OnError::Fail,
        BadImage::Skip => OnError::Skip,
    })
}

/// Loads from the decoded-dataset cache (when enabled) or builds, under a key that covers every
/// source file and the decode settings.
pub(super) fn cached(
    config: &DataConfig,
    name: &str,
    fingerprint: &str,
    build: impl FnOnce() -> bank_data::Result<ImageDataset>,
) -> Result<ImageDataset> {
    if !config.cache {
        return Ok(build()?);
    }
    // "sources=canonical": cached item sources are canonical paths (`data_source::open`); caches
    // written before, whose sources are the path of whoever built them, are not reused.
    let key = format!(
        "{fingerprint};{:?};sources=canonical",
        decode_options(config)
    );
    Ok(DatasetCache::new(cache_home().join("decoded")).load_or_build(name, &key, build)?)
}

type Opened = (Arc<dyn Dataset>, Option<EvalData>, Vec<String>);

/// CIFAR-10, CIFAR-100 or STL-10 under `root`, subset as `config` says.
pub(super) fn open(config: &DataConfig, root: &Path) -> Result<Opened> {
    let (train, test, extra) = match config.dataset {
        DatasetKind::Cifar10 => cifar10(config, root)?,
        DatasetKind::Cifar100 => cifar100(config, root)?,
        _ => stl10(config, root)?,
    };
    let labels = train.labels().map(<[u32]>::to_vec);
    let train = train.select(&first_per_class(
        labels.as_deref(),
        train.len(),
        config.train_per_class,
    ));
    let test = test.select(&spread(test.len(), config.test_limit));
    let (train, test): (Arc<dyn Dataset>, Arc<dyn Dataset>) = (Arc::new(train), Arc::new(test));
    let eval = Some(EvalData {
        reference: Arc::clone(&train),
        bank_rows: Some((0..train.len()).collect()),
        queries: test,
    });
    let mut notes = Vec::new();
    let train = match extra {
        Some(unlabeled) => {
            notes.push(format!(
                "STL-10: training on train ({}) + unlabeled ({}); kNN against the labelled train rows",
                train.len(),
                unlabeled.len()
            ));
            Arc::new(super::Concat::new(train, Arc::new(unlabeled))) as Arc<dyn Dataset>
        }
        None => train,
    };
    Ok((train, eval, notes))
}

type Splits = (ImageDataset, ImageDataset, Option<ImageDataset>);

/// CIFAR-10: the JPEG archive (`root/cifar10-jpeg.tar.gz` or `root/cifar10/…`), else the
/// official binaries (`cifar-10-batches-bin/`), else downloaded there.
fn cifar10(config: &DataConfig, root: &Path) -> Result<Splits> {
    let archive = [
        root.join(JPEG_ARCHIVE),
        root.join("cifar10").join(JPEG_ARCHIVE),
    ]
    .into_iter()
    .find(|p| p.is_file());
    if let Some(archive) = archive {
        let key = files_fingerprint(&[archive.as_path()])?;
        let scan = ScanOptions::new(FolderLayout::ClassFolders);
        let read = |split: &str| -> bank_data::Result<ImageDataset> {
            ImageIndex::scan_archive(&archive, split, &scan)?.decode(decode_options(config))
        };
        let train = cached(config, "cifar10-jpeg-train", &key, || read("train"))?;
        let test = cached(config, "cifar10-jpeg-test", &key, || read("test"))?
            .with_classes(train.class_names())?;
        return Ok((train, test, None));
    }
    let dir = official_dir(root, &CIFAR10_BINARY, "CIFAR-10", Some(JPEG_ARCHIVE))?;
    binaries(config, &dir, CifarKind::Cifar10, "cifar10-bin")
}

/// CIFAR-100 (fine labels) from `cifar-100-binary/`, downloaded when missing.
fn cifar100(config: &DataConfig, root: &Path) -> Result<Splits> {
    let dir = official_dir(root, &CIFAR100_BINARY, "CIFAR-100", None)?;
    binaries(
        config,
        &dir,
        CifarKind::Cifar100(Cifar100Label::Fine),
        "cifar100-bin",
    )
}

fn binaries(config: &DataConfig, dir: &Path, kind: CifarKind, name: &str) -> Result<Splits> {
    let options = decode_options(config);
    let split = |train: bool, tag: &str| -> Result<ImageDataset> {
        let files = cifar_split_files(dir, kind, train);
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let key = files_fingerprint(&refs)?;
        cached(config, &format!("{name}-{tag}"), &key, || {
            read_cifar(&files, kind, options)
        })
    };
    Ok((split(true, "train")?, split(false, "test")?, None))
}

/// STL-10 from `stl10_binary/` (downloaded when missing): train and test, plus the 100,000
/// unlabelled images when `data.unlabeled`.
fn stl10(config: &DataConfig, root: &Path) -> Result<Splits> {
    let dir = official_dir(root, &STL10_BINARY, "STL-10", None)?;
    let options = decode_options(config);
    let read = |images: &str, labels: Option<&str>| -> Result<ImageDataset> {
        let images = dir.join(images);
        let labels = labels.map(|l| dir.join(l));
        let mut files = vec![images.as_path()];
        files.extend(labels.as_deref());
        let key = files_fingerprint(&files)?;
        let name = format!("stl10-{}", images.file_stem().unwrap_or_default().display());
        cached(config, &name, &key, || {
            read_stl10(&images, labels.as_deref(), options)
        })
    };
    let train = read("train_X.bin", Some("train_y.bin"))?;
    let test = read("test_X.bin", Some("test_y.bin"))?;
    let unlabeled = config
        .unlabeled
        .then(|| read("unlabeled_X.bin", None))
        .transpose()?;
    Ok((train, test, unlabeled))
}

/// `root/<unpacks_to>`, downloading and unpacking `remote` there when it is missing.
fn official_dir(
    root: &Path,
    remote: &RemoteFile,
    name: &str,
    alternative: Option<&str>,
) -> Result<PathBuf> {
    let dir = root.join(remote.unpacks_to);
    if dir.is_dir() {
        return Ok(dir);
    }
    tracing::info!(root = %root.display(), "{name} not found; downloading");
    Downloader::default()
        .fetch_and_unpack(remote, root)
        .map_err(|e| Error::Config {
            field: "data".into(),
            reason: format!(
                "no {name} under {} ({}{}/) and the download failed: {e}. Name a folder that \
                 holds it with --data, MEMBANK_DATA or data.path.",
                root.display(),
                alternative.map_or(String::new(), |a| format!("{a} or ")),
                remote.unpacks_to
            ),
        })
}
