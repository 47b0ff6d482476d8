//! Fuzzing every reader of outside bytes in bank-data: CIFAR-10/100 and STL-10 binaries,
//! `.tar` and `.tar.gz` archives of images, and image decoding (PNG, JPEG). Inputs are arbitrary
//! bytes and mutations of valid files (half of the edits in the first bytes: headers). Truth: the
//! reader returns `Ok` or an error naming the file, never a panic, and what it accepts is
//! consistent (image buffers of the stated size, one label per image).

use std::fs;
use std::io::Write;
use std::path::Path;

use bank_data::*;
use proptest::prelude::*;

use crate::common::pattern;

#[path = "../../../bank-core/tests/it/fuzz_harness.rs"]
mod fuzz_harness;

use fuzz_harness::{bytes, fuzz, mutation};

/// A small memory limit, so that a header claiming a huge image is refused, not allocated.
fn options() -> DecodeOptions {
    DecodeOptions {
        memory_limit: 1 << 24,
        on_error: OnError::Fail,
    }
}

/// Every image of `set` is as large as it says, and labels (if any) are in range.
fn consistent(set: &ImageDataset) -> Result<(), TestCaseError> {
    for i in 0..set.len() {
        let loaded = set.image(i).unwrap();
        let img = loaded.view();
        prop_assert_eq!(img.pixels.len(), img.height * img.width * CHANNELS);
        if let Some(l) = set.label(i) {
            let classes = set.class_names().len();
            prop_assert!(
                classes == 0 || (l as usize) < classes,
                "label {} of {} classes",
                l,
                classes
            );
        }
    }
    Ok(())
}

fn names_file(e: &Error, path: &Path) -> Result<(), TestCaseError> {
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    prop_assert!(
        e.to_string().contains(&file),
        "error does not name {}: {}",
        file,
        e
    );
    Ok(())
}

#[test]
fn fuzz_cifar_binaries() {
    // Three CIFAR-10 records (label byte + 3072 pixels), three CIFAR-100 (coarse, fine + 3072).
    let record = |extra: usize, i: u64| {
        let mut r = vec![(i % 10) as u8; extra];
        r.extend(pattern(3072, i));
        r
    };
    let c10: Vec<u8> = (0..3).flat_map(|i| record(1, i)).collect();
    let c100: Vec<u8> = (0..3).flat_map(|i| record(2, i)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data_batch_1.bin");
    let valid = [c10, c100];
    fuzz(
        "cifar",
        (
            0..2usize,
            prop_oneof![1 => bytes(7000).prop_map(Err), 3 => mutation().prop_map(Ok)],
        ),
        |(kind, input)| {
            let bytes = match input {
                Ok(m) => m.apply(&valid[kind], Some(8)),
                Err(b) => b,
            };
            fs::write(&path, &bytes).unwrap();
            let kind = [CifarKind::Cifar10, CifarKind::Cifar100(Cifar100Label::Fine)][kind];
            match read_cifar(&[&path], kind, options()) {
                Ok(set) => {
                    prop_assert_eq!(
                        set.len()
                            * (3072
                                + if matches!(kind, CifarKind::Cifar10) {
                                    1
                                } else {
                                    2
                                }),
                        bytes.len()
                    );
                    consistent(&set)?;
                }
                Err(e) => names_file(&e, &path)?,
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_stl10_binaries() {
    // Two 96×96 images (column-major planes, as the official files) and their labels (1..=10).
    let images: Vec<u8> = (0..2).flat_map(|i| pattern(96 * 96 * 3, i)).collect();
    let labels = vec![1u8, 10];
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (
        dir.path().join("train_X.bin"),
        dir.path().join("train_y.bin"),
    );
    fuzz(
        "stl10",
        (mutation(), mutation(), any::<bool>()),
        |(mx, my, with_labels)| {
            fs::write(&x, mx.apply(&images, Some(16))).unwrap();
            fs::write(&y, my.apply(&labels, None)).unwrap();
            match read_stl10(&x, with_labels.then_some(y.as_path()), options()) {
                Ok(set) => consistent(&set)?,
                Err(e) => {
                    let named = e.to_string().contains("train_X.bin")
                        || e.to_string().contains("train_y.bin");
                    prop_assert!(named, "{}", e);
                }
            }
            Ok(())
        },
    );
}

/// A PNG and a JPEG of 6×5 pixels.
fn encoded_images() -> [Vec<u8>; 2] {
    let img = image::RgbImage::from_raw(6, 5, pattern(6 * 5 * 3, 7)).unwrap();
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut jpeg = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    [png, jpeg]
}

#[test]
fn fuzz_image_decoding() {
    let valid = encoded_images();
    let name = Path::new("photos/fuzzed.img");
    fuzz(
        "image_decode",
        prop_oneof![
            1 => bytes(600),
            4 => (0..2usize, mutation()).prop_map(move |(i, m)| m.apply(&valid[i], Some(40))),
        ],
        |b| {
            match decode_image(name, &b) {
                Ok(img) => prop_assert_eq!(img.pixels.len(), img.height * img.width * CHANNELS),
                Err(e) => names_file(&e, name)?,
            }
            Ok(())
        },
    );
}

/// A tar of `train/{a,b}/` and `test/{a,b}/` images (and a non-image), optionally gzipped.
fn valid_tar(gzip: bool) -> Vec<u8> {
    let [png, jpeg] = encoded_images();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("data/train/a/1.png", &png),
        ("data/train/a/2.jpg", &jpeg),
        ("data/train/b/3.png", &png),
        ("data/test/a/4.png", &png),
        ("data/test/b/5.jpg", &jpeg),
        ("data/README", &b"not an image".to_vec()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    let tar = b.into_inner().unwrap();
    if !gzip {
        return tar;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn fuzz_archive(target: &str, gzip: bool) {
    let valid = valid_tar(gzip);
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join(if gzip { "images.tar.gz" } else { "images.tar" });
    fuzz(
        target,
        prop_oneof![1 => bytes(2000), 6 => mutation().prop_map(move |m| m.apply(&valid, Some(1024)))],
        |b| {
            fs::write(&path, &b).unwrap();
            for prefix in ["data/train", "data"] {
                let scan =
                    ScanOptions::new(FolderLayout::ClassFolders).with_on_error(OnError::Skip);
                match ImageIndex::scan_archive(&path, prefix, &scan)
                    .and_then(|i| i.decode(options()))
                {
                    Ok(set) => consistent(&set)?,
                    Err(e) => names_file(&e, &path)?,
                }
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_tar_archives() {
    fuzz_archive("tar", false);
}

#[test]
fn fuzz_tar_gz_archives() {
    fuzz_archive("tar_gz", true);
}
