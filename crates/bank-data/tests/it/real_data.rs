//! Readers on the real CIFAR-10 files in ../shared/data.

use std::collections::HashMap;

use bank_data::*;

use crate::common::shared_data;

#[test]
fn cifar_binary_reader_reads_real_records() {
    let dir = shared_data().join("cifar10");
    let ds = read_cifar(
        &[dir.join("data_batch_1_first4000.bin")],
        CifarKind::Cifar10,
        DecodeOptions::default(),
    )
    .unwrap();
    assert_eq!(ds.len(), 4000);
    let labels: Vec<u32> = (0..10).map(|i| ds.label(i).unwrap()).collect();
    assert_eq!(labels, [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    assert_eq!(ds.class_names().len(), 10);
    assert_eq!(ds.class_names()[0], "airplane");
    assert_eq!(ds.class_names()[9], "truck");
    let img = ds.get(0);
    assert_eq!((img.height, img.width, img.pixels.len()), (32, 32, 3072));
}

#[test]
fn archive_reader_reads_all_of_cifar10_and_pixels_agree_with_the_binary_records() {
    let dir = shared_data().join("cifar10");
    let archive = dir.join("cifar10-jpeg.tar.gz");
    let opts = DecodeOptions::default();
    let train = read_image_archive(&archive, "train", FolderLayout::ClassFolders, opts).unwrap();
    let test = read_image_archive(&archive, "test", FolderLayout::ClassFolders, opts).unwrap();
    assert_eq!((train.len(), test.len()), (50_000, 10_000));
    let binary = read_cifar(
        &[dir.join("data_batch_1_first4000.bin")],
        CifarKind::Cifar10,
        opts,
    )
    .unwrap();
    assert_eq!(train.class_names(), binary.class_names());
    for (ds, per_class) in [(&train, 5000), (&test, 1000)] {
        let mut counts = vec![0usize; 10];
        for i in 0..ds.len() {
            counts[ds.label(i).unwrap() as usize] += 1;
        }
        assert_eq!(counts, vec![per_class; 10]);
    }

    // The k-th record of class c in the binary file is train/<c>/NNNN.jpg with NNNN = k. The
    // archive reader orders by class, then file name, so that image sits at c·5000 + k.
    let mut rank: HashMap<u32, usize> = HashMap::new();
    let (mut total, mut worst, mut over) = (0f64, 0f64, 0usize);
    for i in 0..binary.len() {
        let c = binary.label(i).unwrap();
        let k = rank.entry(c).or_default();
        let j = c as usize * 5000 + *k;
        *k += 1;
        assert_eq!(train.label(j), Some(c));
        let (a, b) = (binary.get(i), train.get(j));
        assert_eq!((a.height, a.width), (b.height, b.width));
        let mad = a
            .pixels
            .iter()
            .zip(b.pixels)
            .map(|(x, y)| f64::from(x.abs_diff(*y)))
            .sum::<f64>()
            / a.pixels.len() as f64;
        total += mad;
        worst = worst.max(mad);
        over += usize::from(mad >= 10.0);
    }
    let mean = total / binary.len() as f64;
    eprintln!(
        "binary vs JPEG: mean abs diff {mean:.2}/255, worst image {worst:.2}/255, {over} images >= 10/255"
    );
    assert!(mean < 10.0, "mean abs difference {mean}/255");
    // Lossy JPEG: a few busy images may exceed the mean; a misaligned match would fail most.
    assert!(
        over < binary.len() / 100,
        "{over} images differ by >= 10/255"
    );
}
