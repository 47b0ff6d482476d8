//! CIFAR-10 and CIFAR-100 binary files (`data_batch_*.bin`, `test_batch.bin`, `train.bin`,
//! `test.bin`): records of label byte(s) then 1024 R, 1024 G, 1024 B bytes (32×32, row-major).

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::{CHANNELS, DecodeOptions, Error, ImageDataset, ImageStore, Result};

const SIDE: usize = 32;
const PIXELS: usize = SIDE * SIDE * CHANNELS;

/// The CIFAR-10 class names, in label order (used when no `batches.meta.txt` is found).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which binary format, and for CIFAR-100 which of its two labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// 1 label byte (0..10) per record.
    Cifar10,
    /// 2 label bytes per record: coarse (0..20), then fine (0..100).
    Cifar100(Cifar100Label),
}

/// The label a CIFAR-100 dataset reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cifar100Label {
    /// The 20 superclasses.
    Coarse,
    /// The 100 classes.
    #[default]
    Fine,
}

impl CifarKind {
    fn label_bytes(self) -> usize {
        match self {
            Self::Cifar10 => 1,
            Self::Cifar100(_) => 2,
        }
    }

    fn classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100(Cifar100Label::Coarse) => 20,
            Self::Cifar100(Cifar100Label::Fine) => 100,
        }
    }

    fn label_offset(self) -> usize {
        match self {
            Self::Cifar10 | Self::Cifar100(Cifar100Label::Coarse) => 0,
            Self::Cifar100(Cifar100Label::Fine) => 1,
        }
    }

    /// The class-name file that sits beside the binaries in the official archives.
    fn names_file(self) -> &'static str {
        match self {
            Self::Cifar10 => "batches.meta.txt",
            Self::Cifar100(Cifar100Label::Coarse) => "coarse_label_names.txt",
            Self::Cifar100(Cifar100Label::Fine) => "fine_label_names.txt",
        }
    }
}

/// The files of one split of an extracted official archive (`cifar-10-batches-bin/` or
/// `cifar-100-binary/`).
pub fn cifar_split_files(dir: impl AsRef<Path>, kind: CifarKind, train: bool) -> Vec<PathBuf> {
    let dir = dir.as_ref();
    match (kind, train) {
        (CifarKind::Cifar10, true) => (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .collect(),
        (CifarKind::Cifar10, false) => vec![dir.join("test_batch.bin")],
        (CifarKind::Cifar100(_), true) => vec![dir.join("train.bin")],
        (CifarKind::Cifar100(_), false) => vec![dir.join("test.bin")],
    }
}

/// Reads CIFAR binary `files` in order into one dataset.
///
/// Class names come from the names file beside the first binary (`batches.meta.txt`,
/// `fine_label_names.txt` or `coarse_label_names.txt`) when present; otherwise the published
/// CIFAR-10 names, or the label numbers for CIFAR-100. A file whose size is not a whole number of
/// records, or a label out of range, is an error naming the file (and the record). Item sources
/// are `file#record`. For the dataset cache, key it on [`crate::files_fingerprint`] of all
/// `files`.
///
/// # Errors
/// [`Error::Io`], [`Error::Format`], [`Error::MemoryLimit`], or [`Error::InvalidValue`] for no
/// files.
pub fn read_cifar(
    files: &[impl AsRef<Path>],
    kind: CifarKind,
    options: DecodeOptions,
) -> Result<ImageDataset> {
    let Some(first) = files.first() else {
        return Err(Error::InvalidValue {
            field: "files",
            value: "[]".into(),
            reason: "give at least one CIFAR binary file",
        });
    };
    let record = kind.label_bytes() + PIXELS;
    let mut raw = Vec::with_capacity(files.len());
    let mut total = 0usize;
    for path in files {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
            return Err(Error::format(
                path,
                format!(
                    "{} bytes is not a whole number of {record}-byte {kind:?} records",
                    bytes.len()
                ),
            ));
        }
        total += bytes.len() / record * PIXELS;
        if total > options.memory_limit {
            return Err(Error::MemoryLimit {
                path: path.to_path_buf(),
                limit: options.memory_limit,
            });
        }
        raw.push((path.to_path_buf(), bytes));
    }

    let mut store = ImageStore::with_capacity(total / PIXELS, total);
    let mut labels = Vec::with_capacity(total / PIXELS);
    for (path, bytes) in &raw {
        let records: Vec<&[u8]> = bytes.chunks_exact(record).collect();
        for (i, r) in records.iter().enumerate() {
            let label = r[kind.label_offset()] as usize;
            if label >= kind.classes() {
                return Err(Error::format(
                    path,
                    format!(
                        "record {i}: label {label} is out of range for {} classes",
                        kind.classes()
                    ),
                ));
            }
            labels.push(label as u32);
        }
        // Channel-major planes to interleaved HWC, in parallel over records.
        let images: Vec<Vec<u8>> = records
            .par_iter()
            .map(|r| planar_to_interleaved(&r[kind.label_bytes()..], SIDE * SIDE))
            .collect();
        for image in &images {
            store.push(SIDE, SIDE, image);
        }
    }
    let names = class_names(first.as_ref(), kind)?;
    let records = raw
        .iter()
        .map(|(path, bytes)| (path.clone(), bytes.len() / record))
        .collect();
    Ok(ImageDataset::new(store, Some(labels), names, first.as_ref()).with_records(records))
}

/// `[R plane, G plane, B plane]` (each `pixels` long, in the same pixel order) to `RGBRGB…`.
pub(crate) fn planar_to_interleaved(planes: &[u8], pixels: usize) -> Vec<u8> {
    let mut out = vec![0u8; pixels * CHANNELS];
    for (p, rgb) in out.chunks_exact_mut(CHANNELS).enumerate() {
        for (c, v) in rgb.iter_mut().enumerate() {
            *v = planes[c * pixels + p];
        }
    }
    out
}

fn class_names(first: &Path, kind: CifarKind) -> Result<Vec<String>> {
    let file = first
        .parent()
        .unwrap_or(Path::new("."))
        .join(kind.names_file());
    if file.is_file() {
        return crate::dataset::read_class_names(&file, kind.classes());
    }
    Ok(match kind {
        CifarKind::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        _ => (0..kind.classes()).map(|i| i.to_string()).collect(),
    })
}
