//! Bad input gives typed errors naming the file, or a skip count in skip mode; never a panic.

use std::fs;

use bank_data::*;

use crate::common::{pattern, write_png};

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn missing_root_and_empty_class_folder() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = read_image_folder(
        &missing,
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(message(e).contains("nope"));

    fs::create_dir_all(dir.path().join("cats")).unwrap();
    fs::create_dir_all(dir.path().join("dogs")).unwrap();
    write_png(&dir.path().join("cats/1.png"), 2, 2, &pattern(12, 1));
    let e = read_image_folder(
        dir.path(),
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Empty { .. }), "{e}");
    assert!(message(e).contains("dogs"));
}

#[test]
fn truncated_and_non_image_files_fail_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("c");
    fs::create_dir_all(&class).unwrap();
    write_png(&class.join("good.png"), 3, 3, &pattern(27, 2));
    let good = fs::read(class.join("good.png")).unwrap();
    fs::write(class.join("cut.png"), &good[..good.len() / 2]).unwrap();
    fs::write(class.join("notes.txt"), b"hello").unwrap();

    let e = read_image_folder(
        dir.path(),
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Format { .. }));
    let text = message(e);
    // notes.txt is not an image by name or content: left out, not a bad file.
    assert!(text.contains("cut.png"), "{text}");

    let skip = DecodeOptions::default().with_on_error(OnError::Skip);
    let ds = read_image_folder(dir.path(), FolderLayout::ClassFolders, skip).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.skipped().len(), 1);
    assert!(ds.skipped()[0].path.ends_with("c/cut.png"));

    // A JPEG-named file of garbage.
    fs::write(class.join("fake.jpg"), pattern(500, 3)).unwrap();
    fs::remove_file(class.join("cut.png")).unwrap();
    fs::remove_file(class.join("notes.txt")).unwrap();
    let e = read_image_folder(
        dir.path(),
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap_err();
    assert!(message(e).contains("fake.jpg"));
}

#[test]
fn cifar_and_stl_files_of_the_wrong_size_or_with_bad_labels() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.bin");
    fs::write(&short, vec![0u8; 3073 * 2 + 5]).unwrap();
    let e = read_cifar(&[&short], CifarKind::Cifar10, DecodeOptions::default()).unwrap_err();
    let text = message(e);
    assert!(
        text.contains("short.bin") && text.contains("whole number"),
        "{text}"
    );

    let bad_label = dir.path().join("label.bin");
    let mut bytes = vec![0u8; 3073 * 3];
    bytes[3073] = 10; // record 1
    fs::write(&bad_label, &bytes).unwrap();
    let e = read_cifar(&[&bad_label], CifarKind::Cifar10, DecodeOptions::default()).unwrap_err();
    let text = message(e);
    assert!(
        text.contains("label.bin") && text.contains("record 1"),
        "{text}"
    );

    let x = dir.path().join("train_X.bin");
    fs::write(&x, vec![0u8; 27648 + 1]).unwrap();
    let e = read_stl10(&x, None, DecodeOptions::default()).unwrap_err();
    assert!(message(e).contains("train_X.bin"));
    fs::write(&x, vec![0u8; 27648 * 2]).unwrap();
    let y = dir.path().join("train_y.bin");
    fs::write(&y, [3u8, 0]).unwrap();
    let e = read_stl10(&x, Some(&y), DecodeOptions::default()).unwrap_err();
    assert!(message(e).contains("1..=10"));
    fs::write(&y, [3u8]).unwrap();
    let e = read_stl10(&x, Some(&y), DecodeOptions::default()).unwrap_err();
    assert!(message(e).contains("1 labels for 2 images"));
}

#[test]
fn corrupted_archive_and_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let real = crate::common::shared_data().join("cifar10/cifar10-jpeg.tar.gz");
    let bytes = fs::read(&real).unwrap();
    // Cut the gzip stream in the middle and flip bytes: an error naming the archive.
    let cut = dir.path().join("cut.tar.gz");
    fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let e = read_image_archive(
        &cut,
        "train",
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap_err();
    assert!(message(e).contains("cut.tar.gz"));
    let mut flipped = bytes[..200_000].to_vec();
    for b in &mut flipped[1000..1200] {
        *b ^= 0x5a;
    }
    let bad = dir.path().join("flipped.tar.gz");
    fs::write(&bad, &flipped).unwrap();
    let e = read_image_archive(
        &bad,
        "train",
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap_err();
    assert!(message(e).contains("flipped.tar.gz"));

    // 4,000 CIFAR records need 12,288,000 bytes of pixels.
    let records = crate::common::shared_data().join("cifar10/data_batch_1_first4000.bin");
    let tight = DecodeOptions::default().with_memory_limit(1 << 20);
    let e = read_cifar(&[&records], CifarKind::Cifar10, tight).unwrap_err();
    assert!(matches!(e, Error::MemoryLimit { .. }), "{e}");
    let e = read_image_archive(&real, "test", FolderLayout::ClassFolders, tight).unwrap_err();
    assert!(matches!(e, Error::MemoryLimit { .. }), "{e}");
}
