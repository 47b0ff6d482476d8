//! Issue 10, bad input 4: a truncated image is a decode error naming the file; with `Skip` it is
//! left out, recorded and counted.

use std::fs;
use std::path::Path;

use bank_data::*;

use crate::common::{cifar_jpegs, pattern, reference_rgb, write_png};

/// A real CIFAR-10 JPEG and its first `len − 150` bytes.
fn real_and_cut() -> (Vec<u8>, Vec<u8>) {
    let (_, jpeg) = cifar_jpegs("train/ship/", 1).remove(0);
    let cut = jpeg[..jpeg.len() - 150].to_vec();
    (jpeg, cut)
}

#[test]
fn a_jpeg_missing_its_last_150_bytes_is_a_decode_error_naming_the_file() {
    let (jpeg, cut) = real_and_cut();
    // The independent truth that the check is needed: the plain decoder accepts the cut file
    // and invents pixels.
    let invented = image::load_from_memory(&cut).unwrap().into_rgb8();
    let real = reference_rgb(&jpeg);
    let wrong = invented
        .as_raw()
        .iter()
        .zip(real.as_raw())
        .filter(|(a, b)| a.abs_diff(**b) > 20)
        .count();
    assert!(
        wrong > 100,
        "the cut is visible in the pixels ({wrong} bytes off)"
    );

    let e = decode_image(Path::new("ship.jpg"), &cut)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ship.jpg") && e.contains("truncated"), "{e}");
    assert!(decode_image(Path::new("ship.jpg"), &jpeg).is_ok());

    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("ship")).unwrap();
    fs::write(dir.path().join("ship/good.jpg"), &jpeg).unwrap();
    fs::write(dir.path().join("ship/cut.jpg"), &cut).unwrap();
    let e = read_image_folder(
        dir.path(),
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ship/cut.jpg") && e.contains("truncated"), "{e}");

    let skip = DecodeOptions::default().with_on_error(OnError::Skip);
    let ds = read_image_folder(dir.path(), FolderLayout::ClassFolders, skip).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.get(0).pixels, real.as_raw().as_slice());
    assert_eq!(ds.skipped().len(), 1);
    assert!(ds.skipped()[0].path.ends_with("ship/cut.jpg"));
    assert!(ds.skipped()[0].reason.contains("truncated"));
    // The record survives the dataset cache.
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = DatasetCache::new(cache_dir.path());
    let built = cache.load_or_build("d", "k", || Ok(ds.clone())).unwrap();
    let loaded = cache.load_or_build("d", "k", || panic!("cached")).unwrap();
    assert_eq!(loaded.skipped(), built.skipped());
    assert_eq!(loaded.item_source(0), ds.item_source(0));

    // The folder scan (which a streamed dataset relies on) already checks completeness: the same
    // error naming the file, or with Skip a recorded skip, before any batch is drawn.
    let e = ImageIndex::scan_folder(dir.path(), &ScanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ship/cut.jpg") && e.contains("truncated"), "{e}");
    let skipping = ScanOptions::default().with_on_error(OnError::Skip);
    let index = ImageIndex::scan_folder(dir.path(), &skipping).unwrap();
    let streaming = index.streaming(DecodeOptions::default()).unwrap();
    assert_eq!(streaming.len(), 1);
    assert!(streaming.skipped()[0].path.ends_with("ship/cut.jpg"));
    assert_eq!(
        streaming.image(0).unwrap().view().pixels,
        real.as_raw().as_slice()
    );
}

#[test]
fn every_cut_of_a_real_jpeg_and_of_a_png_is_an_error() {
    let (jpeg, _) = real_and_cut();
    for keep in (2..jpeg.len()).step_by(37).chain([jpeg.len() - 1]) {
        assert!(
            decode_image(Path::new("x"), &jpeg[..keep]).is_err(),
            "JPEG cut to {keep}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.png");
    write_png(&path, 16, 16, &pattern(16 * 16 * 3, 4));
    let png = fs::read(&path).unwrap();
    for keep in (8..png.len()).step_by(29).chain([png.len() - 1]) {
        assert!(
            decode_image(&path, &png[..keep]).is_err(),
            "PNG cut to {keep}"
        );
    }
}

#[test]
fn a_complete_jpeg_with_a_long_trailer_still_scans() {
    // The scan's cheap test looks at the last 64 bytes only; a camera-style trailer after the
    // end-of-image marker must fall back to the full check and pass.
    let (jpeg, _) = real_and_cut();
    let mut trailer = jpeg.clone();
    trailer.extend(std::iter::repeat_n(0x42u8, 300));
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("ship")).unwrap();
    fs::write(dir.path().join("ship/trailer.jpg"), &trailer).unwrap();
    let index = ImageIndex::scan_folder(dir.path(), &ScanOptions::default()).unwrap();
    assert_eq!(index.len(), 1);
    let ds = index.decode(DecodeOptions::default()).unwrap();
    let plain = decode_image(Path::new("ship.jpg"), &jpeg).unwrap();
    assert_eq!(ds.get(0).pixels, plain.pixels.as_slice());
}
