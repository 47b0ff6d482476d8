//! STL-10 binary files: `*_X.bin` holds 96×96×3 images, each channel stored column-major
//! (the layout of the MATLAB export), and `*_y.bin` one label byte per image, 1..=10.

use std::fs;
use std::path::Path;

use rayon::prelude::*;

use crate::{CHANNELS, DecodeOptions, Error, ImageDataset, ImageStore, Result};

const SIDE: usize = 96;
const IMAGE_BYTES: usize = SIDE * SIDE * CHANNELS;

/// The STL-10 class names, in label order (used when no `class_names.txt` is found).
pub const STL10_CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

/// Reads STL-10 images from `images` (`train_X.bin`, `test_X.bin`, `unlabeled_X.bin`) and,
/// when given, their labels from `labels` (`train_y.bin`, `test_y.bin`). Labels are stored
/// 1-based and reported 0-based. Class names come from `class_names.txt` beside the images.
/// Item sources are `file#record`.
///
/// # Errors
/// [`Error::Io`], [`Error::Format`] naming a file of the wrong size or a bad label,
/// [`Error::MemoryLimit`].
pub fn read_stl10(
    images: impl AsRef<Path>,
    labels: Option<&Path>,
    options: DecodeOptions,
) -> Result<ImageDataset> {
    let images = images.as_ref();
    let len = fs::metadata(images)
        .map_err(|e| Error::io(images, e))?
        .len() as usize;
    if len == 0 || !len.is_multiple_of(IMAGE_BYTES) {
        return Err(Error::format(
            images,
            format!("{len} bytes is not a whole number of {IMAGE_BYTES}-byte 96×96×3 images"),
        ));
    }
    if len > options.memory_limit {
        return Err(Error::MemoryLimit {
            path: images.to_path_buf(),
            limit: options.memory_limit,
        });
    }
    let count = len / IMAGE_BYTES;
    let labels = labels.map(|path| read_labels(path, count)).transpose()?;
    let bytes = fs::read(images).map_err(|e| Error::io(images, e))?;
    let converted: Vec<Vec<u8>> = bytes
        .par_chunks_exact(IMAGE_BYTES)
        .map(column_major_to_hwc)
        .collect();
    drop(bytes);
    let mut store = ImageStore::with_capacity(count, len);
    for image in &converted {
        store.push(SIDE, SIDE, image);
    }
    let names = if labels.is_some() {
        class_names(images)?
    } else {
        Vec::new()
    };
    Ok(ImageDataset::new(store, labels, names, images)
        .with_records(vec![(images.to_path_buf(), count)]))
}

fn read_labels(path: &Path, count: usize) -> Result<Vec<u32>> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() != count {
        return Err(Error::format(
            path,
            format!("{} labels for {count} images", bytes.len()),
        ));
    }
    bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| match b {
            1..=10 => Ok(u32::from(b) - 1),
            _ => Err(Error::format(
                path,
                format!("label {i} is {b}; STL-10 labels are 1..=10"),
            )),
        })
        .collect()
}

/// One image: three 96×96 planes, each column-major, to interleaved row-major HWC.
fn column_major_to_hwc(planes: &[u8]) -> Vec<u8> {
    let plane = SIDE * SIDE;
    let mut out = vec![0u8; IMAGE_BYTES];
    for y in 0..SIDE {
        for x in 0..SIDE {
            for c in 0..CHANNELS {
                out[(y * SIDE + x) * CHANNELS + c] = planes[c * plane + x * SIDE + y];
            }
        }
    }
    out
}

fn class_names(images: &Path) -> Result<Vec<String>> {
    let file = images
        .parent()
        .unwrap_or(Path::new("."))
        .join("class_names.txt");
    if !file.is_file() {
        return Ok(STL10_CLASSES.iter().map(|s| s.to_string()).collect());
    }
    crate::dataset::read_class_names(&file, STL10_CLASSES.len())
}
