//! `dataset = "image_folder"`: any image collection in a folder or a `.tar`/`.tar.gz` archive,
//! in one of three layouts, decoded into memory or streamed.

use std::path::Path;
use std::sync::Arc;

use bank_data::{Dataset, FolderLayout, ImageIndex, OnError, ScanOptions};

use super::official::{cached, decode_options};
use super::subset::{first_per_class, spread};
use super::{EvalData, existing};
use crate::config::{BadImage, DataConfig, FolderLayoutKind, LoadMode};
use crate::{Error, Result};

type Opened = (Arc<dyn Dataset>, Option<EvalData>, Vec<String>);

/// The training set (and the labelled evaluation sets) of an image folder.
pub(super) fn open(config: &DataConfig) -> Result<Opened> {
    let path = existing(config.path.as_deref().expect("validated"), "data.path")?;
    let mut notes = Vec::new();
    let layout = detect_layout(
        &path,
        config.layout,
        &scan(config, FolderLayout::ClassFolders),
    )?;
    notes.push(format!("{}: layout {layout:?}", path.display()));
    let (train, test) = split(&path, layout, config)?;
    let train = train.select(&first_per_class(
        train.labels(),
        train.len(),
        config.train_per_class,
    ));
    let train_set = materialise(config, "train", train, &mut notes)?;
    // `data.eval_path`, when set, takes the place of these (`super::open`).
    let eval = match test {
        Some(test) if config.eval_path.is_none() => {
            Some(eval_sets(config, &train_set, test, &mut notes)?)
        }
        _ => None,
    };
    Ok((train_set, eval, notes))
}

fn scan(config: &DataConfig, layout: FolderLayout) -> ScanOptions {
    ScanOptions::new(layout).with_on_error(match config.on_bad_image {
        BadImage::Error => OnError::Fail,
        BadImage::Skip => OnError::Skip,
    })
}

fn is_archive(path: &Path) -> bool {
    path.is_file()
}

/// The index of `path` (a folder or an archive) under `prefix` (`""`: the whole tree).
fn index(path: &Path, prefix: &str, options: &ScanOptions) -> Result<ImageIndex> {
    Ok(if is_archive(path) {
        ImageIndex::scan_archive(path, prefix, options)?
    } else {
        ImageIndex::scan_folder(&path.join(prefix), options)?
    })
}

/// Resolves `auto`: `split` when `train/` exists, `classes` when the root holds only folders or
/// at least two folders beside files (the files are then refused by name), else `unlabeled`.
fn detect_layout(
    path: &Path,
    layout: FolderLayoutKind,
    options: &ScanOptions,
) -> Result<FolderLayoutKind> {
    if layout != FolderLayoutKind::Auto {
        return Ok(layout);
    }
    if !is_archive(path) {
        if path.join("train").is_dir() {
            return Ok(FolderLayoutKind::Split);
        }
        let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
        let (mut dirs, mut files) = (0, 0);
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(path, e))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if entry.path().is_dir() {
                dirs += 1;
            } else {
                files += 1;
            }
        }
        // Class folders with a stray file beside them are class folders: the scan then refuses
        // the file by name. Taking them as unlabelled dropped every label without a word.
        return Ok(if dirs > 0 && (files == 0 || dirs >= 2) {
            FolderLayoutKind::Classes
        } else {
            FolderLayoutKind::Unlabeled
        });
    }
    // An archive: try the layouts in turn (set `data.layout` to skip the extra passes).
    if ImageIndex::scan_archive(path, "train", options).is_ok_and(|i| !i.is_empty()) {
        return Ok(FolderLayoutKind::Split);
    }
    if ImageIndex::scan_archive(path, "", options).is_ok() {
        return Ok(FolderLayoutKind::Classes);
    }
    Ok(FolderLayoutKind::Unlabeled)
}

/// Train and (labelled) test indices of `path` under `layout`.
fn split(
    path: &Path,
    layout: FolderLayoutKind,
    config: &DataConfig,
) -> Result<(ImageIndex, Option<ImageIndex>)> {
    let classes = scan(config, FolderLayout::ClassFolders);
    Ok(match layout {
        FolderLayoutKind::Split => {
            let train = index(path, "train", &classes)?;
            let has_test = if is_archive(path) {
                true
            } else {
                path.join("test").is_dir()
            };
            let test = if has_test {
                match index(path, "test", &classes) {
                    Ok(t) => Some(t),
                    Err(e) if is_archive(path) => {
                        tracing::info!(%e, "no test split in the archive");
                        None
                    }
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            match test {
                Some(test) => (train, Some(test)),
                None => hold_out(train, config)?,
            }
        }
        FolderLayoutKind::Classes => {
            hold_out(one_class_check(index(path, "", &classes)?, path)?, config)?
        }
        _ => (
            index(path, "", &scan(config, FolderLayout::Unlabelled))?,
            None,
        ),
    })
}

/// Class folders alone that hold a single class are almost always a dataset wrapped in one more
/// folder (`birds/train/…` packed as `birds/`): refused with the fix, instead of training on one
/// class whose kNN is trivially 100%.
fn one_class_check(index: ImageIndex, path: &Path) -> Result<ImageIndex> {
    match index.class_names() {
        [only] => Err(Error::Config {
            field: "data.path".into(),
            reason: format!(
                "{}: a single class folder `{only}` at the top: is the dataset wrapped in one \
                 more folder? Point data.path at the folder that holds train/ (or the class \
                 folders); pack an archive from inside it (`tar czf data.tar.gz -C {only} .`); \
                 for unlabelled images set data.layout = \"unlabeled\"",
                path.display()
            ),
        }),
        _ => Ok(index),
    }
}

/// A stratified, seeded `test_fraction` of every class as the test split.
fn hold_out(all: ImageIndex, config: &DataConfig) -> Result<(ImageIndex, Option<ImageIndex>)> {
    let (train, test) = all.split_stratified(config.test_fraction, 0)?;
    if test.is_empty() {
        return Err(Error::Config {
            field: "data.test_fraction".into(),
            reason: format!(
                "{}: holds out no image (round(fraction × images) is 0 in every class of the {} \
                 images); raise it, or name a test folder with data.eval_path",
                config.test_fraction,
                train.len()
            ),
        });
    }
    Ok((train, Some(test)))
}

/// Decodes into memory or streams, as `data.mode` and the memory budget say.
fn materialise(
    config: &DataConfig,
    split: &str,
    index: ImageIndex,
    notes: &mut Vec<String>,
) -> Result<Arc<dyn Dataset>> {
    let streaming = match config.mode {
        LoadMode::Memory => false,
        LoadMode::Streaming => {
            notes.push(format!(
                "{split}: {} images: streaming (data.mode)",
                index.len()
            ));
            true
        }
        LoadMode::Auto => {
            let bytes = index.estimated_bytes()?;
            let budget = config.memory_budget_gib * (1u64 << 30) as f64;
            let stream = bytes as f64 > budget;
            notes.push(format!(
                "{split}: {} images, {:.2} GiB decoded: {} (data.memory_budget_gib = {})",
                index.len(),
                bytes as f64 / (1u64 << 30) as f64,
                if stream { "streaming" } else { "in memory" },
                config.memory_budget_gib
            ));
            stream
        }
    };
    let options = decode_options(config);
    Ok(if streaming {
        Arc::new(index.streaming(options)?)
    } else {
        let key = index.fingerprint();
        Arc::new(cached(config, &format!("folder-{split}"), &key, || {
            index.decode(options)
        })?)
    })
}

/// The evaluation sets when the training images are labelled: train rows as reference.
fn eval_sets(
    config: &DataConfig,
    train: &Arc<dyn Dataset>,
    test: ImageIndex,
    notes: &mut Vec<String>,
) -> Result<EvalData> {
    let test = test.with_classes(train.class_names())?;
    let test = test.select(&spread(test.len(), config.test_limit));
    let queries = materialise(config, "test", test, notes)?;
    Ok(EvalData {
        reference: Arc::clone(train),
        bank_rows: Some((0..train.len()).collect()),
        queries,
    })
}

/// The evaluation sets of `data.eval_path`: its `train/` (or a stratified hold-out of its class
/// folders) is the reference, its `test/` the queries.
pub(super) fn labelled_eval(
    config: &DataConfig,
    path: &Path,
    notes: &mut Vec<String>,
) -> Result<EvalData> {
    let path = existing(path, "data.eval_path")?;
    let layout = match detect_layout(
        &path,
        FolderLayoutKind::Auto,
        &scan(config, FolderLayout::ClassFolders),
    )? {
        FolderLayoutKind::Unlabeled => {
            return Err(Error::Config {
                field: "data.eval_path".into(),
                reason: format!(
                    "{}: needs class folders (labels) to evaluate",
                    path.display()
                ),
            });
        }
        l => l,
    };
    let (reference, test) = split(&path, layout, config)?;
    let test = test.expect("labelled layouts have a test split");
    let reference = materialise(config, "eval-reference", reference, notes)?;
    let test = test.with_classes(reference.class_names())?;
    let test = test.select(&spread(test.len(), config.test_limit));
    notes.push(format!(
        "evaluation on {}: {} reference and {} query images (reference features recomputed)",
        path.display(),
        reference.len(),
        test.len()
    ));
    Ok(EvalData {
        reference,
        bank_rows: None,
        queries: materialise(config, "eval-test", test, notes)?,
    })
}
