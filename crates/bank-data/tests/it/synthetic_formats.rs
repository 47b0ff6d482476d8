//! Readers on small files written here by the published layouts.

use std::fs;

use bank_data::*;

use crate::common::{pattern, write_png};

fn value(i: usize, y: usize, x: usize, c: usize) -> u8 {
    ((i * 31 + y * 7 + x * 3 + c * 101) % 251) as u8
}

#[test]
fn stl10_column_major_planes_become_row_major_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3;
    let mut x_bytes = Vec::new();
    for i in 0..n {
        for c in 0..3 {
            for x in 0..96 {
                for y in 0..96 {
                    x_bytes.push(value(i, y, x, c));
                }
            }
        }
    }
    fs::write(dir.path().join("train_X.bin"), &x_bytes).unwrap();
    fs::write(dir.path().join("train_y.bin"), [1u8, 10, 4]).unwrap();
    let ds = read_stl10(
        dir.path().join("train_X.bin"),
        Some(&dir.path().join("train_y.bin")),
        DecodeOptions::default(),
    )
    .unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(
        (0..3).map(|i| ds.label(i).unwrap()).collect::<Vec<_>>(),
        [0, 9, 3]
    );
    assert_eq!(ds.class_names()[1], "bird");
    for i in 0..n {
        let img = ds.get(i);
        assert_eq!((img.height, img.width), (96, 96));
        for (y, x, c) in [(0, 0, 0), (5, 90, 1), (95, 3, 2), (40, 41, 0)] {
            assert_eq!(
                img.at(y, x, c),
                value(i, y, x, c),
                "image {i} at {y},{x},{c}"
            );
        }
    }
    // Unlabelled: no labels, no class names.
    let unlabelled = read_stl10(
        dir.path().join("train_X.bin"),
        None,
        DecodeOptions::default(),
    )
    .unwrap();
    assert_eq!(unlabelled.label(0), None);
    assert!(unlabelled.class_names().is_empty());
}

#[test]
fn cifar100_reads_coarse_or_fine_labels_and_planar_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    let labels = [(3u8, 97u8), (19, 0), (0, 42)];
    for (i, (coarse, fine)) in labels.iter().enumerate() {
        bytes.extend([*coarse, *fine]);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    bytes.push(value(i, y, x, c));
                }
            }
        }
    }
    let file = dir.path().join("train.bin");
    fs::write(&file, &bytes).unwrap();
    let fine = read_cifar(
        &[&file],
        CifarKind::Cifar100(Cifar100Label::Fine),
        DecodeOptions::default(),
    )
    .unwrap();
    let coarse = read_cifar(
        &[&file],
        CifarKind::Cifar100(Cifar100Label::Coarse),
        DecodeOptions::default(),
    )
    .unwrap();
    for (i, (c, f)) in labels.iter().enumerate() {
        assert_eq!(fine.label(i), Some(u32::from(*f)));
        assert_eq!(coarse.label(i), Some(u32::from(*c)));
        let img = fine.get(i);
        for (y, x, ch) in [(0, 0, 0), (31, 31, 2), (7, 20, 1)] {
            assert_eq!(img.at(y, x, ch), value(i, y, x, ch));
        }
    }
    assert_eq!(fine.class_names().len(), 100);
    assert_eq!(coarse.class_names().len(), 20);
}

#[test]
fn image_folder_on_disk_is_exact_for_png_and_sorted_by_class() {
    let dir = tempfile::tempdir().unwrap();
    for (class, count) in [("zebra", 2usize), ("apple", 3)] {
        fs::create_dir(dir.path().join(class)).unwrap();
        for k in 0..count {
            let px = pattern(5 * 7 * 3, (class.len() * 10 + k) as u64);
            write_png(&dir.path().join(class).join(format!("{k}.png")), 5, 7, &px);
        }
    }
    // A grey PNG is expanded to three equal channels.
    image::GrayImage::from_raw(4, 4, (0..16).collect())
        .unwrap()
        .save(dir.path().join("zebra").join("9-grey.png"))
        .unwrap();
    let ds = read_image_folder(
        dir.path(),
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap();
    assert_eq!(ds.class_names(), ["apple", "zebra"]);
    assert_eq!(ds.len(), 6);
    assert_eq!(
        (0..6).map(|i| ds.label(i).unwrap()).collect::<Vec<_>>(),
        [0, 0, 0, 1, 1, 1]
    );
    let expected = pattern(5 * 7 * 3, ("apple".len() * 10 + 1) as u64);
    assert_eq!(ds.get(1).pixels, &expected[..]);
    let grey = ds.get(5);
    assert_eq!((grey.height, grey.width), (4, 4));
    assert_eq!(
        (grey.at(2, 3, 0), grey.at(2, 3, 1), grey.at(2, 3, 2)),
        (11, 11, 11)
    );

    // The same tree, unlabelled.
    let flat = read_image_folder(
        dir.path(),
        FolderLayout::Unlabelled,
        DecodeOptions::default(),
    )
    .unwrap();
    assert_eq!(flat.len(), 6);
    assert_eq!(flat.label(0), None);
}

#[test]
fn tar_and_tar_gz_of_a_folder_read_like_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for class in ["a", "b"] {
        fs::create_dir_all(tree.join("train").join(class)).unwrap();
        for k in 0..2 {
            let px = pattern(6 * 6 * 3, k + class.len() as u64 * 7);
            write_png(
                &tree.join("train").join(class).join(format!("{k}.png")),
                6,
                6,
                &px,
            );
        }
    }
    let from_folder = read_image_folder(
        tree.join("train"),
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap();
    for gz in [false, true] {
        let path = dir.path().join(if gz { "t.tar.gz" } else { "t.tar" });
        let file = fs::File::create(&path).unwrap();
        let write = |w: Box<dyn std::io::Write>| {
            let mut builder = tar::Builder::new(w);
            builder.append_dir_all(".", &tree).unwrap();
            builder.into_inner().unwrap().flush().unwrap();
        };
        if gz {
            write(Box::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::fast(),
            )));
        } else {
            write(Box::new(file));
        }
        let ds = read_image_archive(
            &path,
            "train",
            FolderLayout::ClassFolders,
            DecodeOptions::default(),
        )
        .unwrap();
        assert_eq!(ds.class_names(), from_folder.class_names());
        assert_eq!(ds.len(), from_folder.len());
        for i in 0..ds.len() {
            assert_eq!(ds.get(i).pixels, from_folder.get(i).pixels);
            assert_eq!(ds.label(i), from_folder.label(i));
        }
    }
}

#[test]
fn subsets_keep_labels_and_order() {
    let mut store = ImageStore::default();
    let labels: Vec<u32> = vec![0, 1, 0, 1, 0, 2];
    for i in 0..6 {
        store.push(1, 1, &[i as u8; 3]);
    }
    let names = vec!["x".to_string(), "y".into(), "z".into()];
    let ds = ImageDataset::new(store, Some(labels), names, "mem");
    let sub = ds.first_per_class(2);
    assert_eq!(sub.len(), 5);
    let firsts: Vec<u8> = (0..5).map(|i| sub.get(i).pixels[0]).collect();
    assert_eq!(firsts, [0, 1, 2, 3, 5]);
    assert_eq!(sub.labels().unwrap(), [0, 1, 0, 1, 2]);
}
