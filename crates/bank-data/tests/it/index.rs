//! The image index: hidden entries, formats judged by content, stratified splits, class mapping
//! (issue 10, bad input 2), and `.tar.gz` against the same plain folder.

use std::fs;
use std::io::Write;
use std::path::Path;

use bank_data::*;

use crate::common::{cifar_jpegs, pattern, reference_rgb, shared_data, write_png};

fn tar_gz_of(folder: &Path, path: &Path) {
    let gz =
        flate2::write::GzEncoder::new(fs::File::create(path).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    b.append_dir_all(".", folder).unwrap();
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

#[test]
fn hidden_files_and_folders_are_skipped_in_folders_and_archives_alike() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let png = |p: &Path, seed| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        write_png(p, 4, 4, &pattern(48, seed));
    };
    png(&root.join("a/1.png"), 1);
    png(&root.join("a/sub/2.png"), 2);
    png(&root.join("b/3.png"), 3);
    // Hidden: a dot file, a dot folder inside a class, a dot class folder, AppleDouble files,
    // and a dot file that is not even an image.
    png(&root.join("a/.4.png"), 4);
    png(&root.join("a/.thumbs/5.png"), 5);
    png(&root.join(".trash/6.png"), 6);
    png(&root.join("b/._3.png"), 7);
    fs::write(root.join("b/.DS_Store"), b"not an image").unwrap();
    let archive = dir.path().join("tree.tar.gz");
    tar_gz_of(&root, &archive);
    let opts = ScanOptions::default();
    let from_folder = ImageIndex::scan_folder(&root, &opts).unwrap();
    let from_archive = ImageIndex::scan_archive(&archive, "", &opts).unwrap();
    for index in [&from_folder, &from_archive] {
        assert_eq!(index.class_names(), ["a", "b"]);
        assert_eq!(index.len(), 3);
        assert!(index.skipped().is_empty());
        let names: Vec<String> = (0..3)
            .map(|i| index.item_source(i).display().to_string())
            .collect();
        assert!(
            names[0].ends_with("a/1.png") && names[1].ends_with("a/sub/2.png"),
            "{names:?}"
        );
        assert!(names[2].ends_with("b/3.png"), "{names:?}");
    }
    let ds = from_archive.decode(DecodeOptions::default()).unwrap();
    assert_eq!(ds.get(2).pixels, &pattern(48, 3)[..]);
}

/// Files that are not images by name and by content (`Thumbs.db`, `labels.csv`, a `README.md`
/// and a `LICENSE` of text beside the class folders) are left out and listed, in a folder and in
/// its archive alike, as torchvision's `ImageFolder` passes them over; a file named as an image,
/// a binary file without an extension and another image format are still bad files, and content
/// still wins over a name.
#[test]
fn files_that_are_not_images_by_name_and_content_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for (i, class) in ["a", "b"].iter().enumerate() {
        fs::create_dir_all(root.join(class)).unwrap();
        write_png(
            &root.join(class).join("1.png"),
            4,
            4,
            &pattern(48, i as u64),
        );
    }
    let ole = [
        0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    fs::write(root.join("a/Thumbs.db"), ole).unwrap();
    fs::write(root.join("b/labels.csv"), b"file,label\n1.png,b\n").unwrap();
    fs::write(root.join("README.md"), b"# my birds\n").unwrap();
    fs::write(root.join("LICENSE"), "CC BY 4.0 — Ünïcode text\n").unwrap();
    // A PNG under another name is an image: content wins.
    fs::copy(root.join("b/1.png"), root.join("b/2.dat")).unwrap();
    let archive = dir.path().join("root.tar.gz");
    tar_gz_of(&root, &archive);

    let options = ScanOptions::default();
    let folder = ImageIndex::scan_folder(&root, &options).unwrap();
    let packed = ImageIndex::scan_archive(&archive, "", &options).unwrap();
    for index in [&folder, &packed] {
        assert_eq!(index.len(), 3, "1.png, 1.png and 2.dat");
        assert_eq!(index.class_names(), ["a", "b"]);
        assert!(index.skipped().is_empty());
        // (An archive member is named `ARCHIVE!path`.)
        let mut left: Vec<String> = (index.not_images().iter())
            .map(|p| {
                let p = p.to_string_lossy();
                p.rsplit(['/', '!']).next().unwrap().to_string()
            })
            .collect();
        left.sort();
        assert_eq!(left, ["LICENSE", "README.md", "Thumbs.db", "labels.csv"]);
    }

    // Still bad files, each refused naming it: named as an image, binary without an extension
    // (a JPEG whose first bytes were lost), a WebP.
    let headless = [
        0x00, 0x10, 0x4A, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01,
    ];
    let riff_webp = b"RIFF\x24\x00\x00\x00WEBPVP8 ";
    for (name, bytes, says) in [
        (
            "a/photo.jpg",
            &b"notes, not a photo"[..],
            "not a JPEG or PNG",
        ),
        ("a/IMG0042", &headless[..], "not a JPEG or PNG"),
        (
            "b/3.webp",
            &riff_webp[..],
            "a WebP image: only JPEG and PNG",
        ),
    ] {
        let path = root.join(name);
        fs::write(&path, bytes).unwrap();
        let e = ImageIndex::scan_folder(&root, &options).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(name.split('/').nth(1).unwrap()) && text.contains(says),
            "{text}"
        );
        fs::remove_file(path).unwrap();
    }
}

#[test]
fn formats_are_recognised_by_content_not_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("c");
    fs::create_dir_all(&class).unwrap();
    let jpeg = cifar_jpegs("test/cat/", 1).remove(0).1;
    // (`image` picks the encoder by extension: write a .png, then rename it.)
    write_png(&class.join("real.png"), 3, 5, &pattern(45, 9));
    fs::rename(class.join("real.png"), class.join("png_named.jpg")).unwrap();
    fs::write(class.join("no_extension"), &jpeg).unwrap();
    fs::write(class.join("text.jpg"), b"just some notes, not a JPEG\n").unwrap();

    let e = read_image_folder(
        dir.path(),
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("text.jpg") && text.contains("not a JPEG or PNG"),
        "{text}"
    );

    let skip = DecodeOptions::default().with_on_error(OnError::Skip);
    let ds = read_image_folder(dir.path(), FolderLayout::ClassFolders, skip).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(
        ds.get(0).pixels,
        reference_rgb(&jpeg).as_raw().as_slice(),
        "no_extension"
    );
    assert_eq!(ds.get(1).pixels, &pattern(45, 9)[..], "png_named.jpg");
    assert_eq!(ds.skipped().len(), 1);
    assert!(ds.skipped()[0].path.ends_with("c/text.jpg"));
    assert!(ds.skipped()[0].reason.contains("not a JPEG or PNG"));
    // decode_image ignores the name too.
    let png = fs::read(class.join("png_named.jpg")).unwrap();
    assert_eq!(
        decode_image(Path::new("x.jpg"), &png).unwrap().pixels,
        pattern(45, 9)
    );
}

/// `classes × per_class` tiny PNGs in class folders; pixel value = global item number.
fn labelled_tree(root: &Path, counts: &[usize]) {
    let mut k = 0u8;
    for (c, &n) in counts.iter().enumerate() {
        let folder = root.join(format!("class{c}"));
        fs::create_dir_all(&folder).unwrap();
        for i in 0..n {
            write_png(&folder.join(format!("{i:03}.png")), 1, 1, &[k; 3]);
            k += 1;
        }
    }
}

#[test]
fn stratified_split_holds_out_a_seeded_fraction_of_every_class() {
    let dir = tempfile::tempdir().unwrap();
    let counts = [10usize, 20, 3, 1];
    labelled_tree(dir.path(), &counts);
    let index = ImageIndex::scan_folder(dir.path(), &ScanOptions::default()).unwrap();
    let (train, test) = index.split_stratified(0.3, 7).unwrap();
    let per_class = |ix: &ImageIndex| {
        let mut n = vec![0usize; counts.len()];
        ix.labels()
            .unwrap()
            .iter()
            .for_each(|&l| n[l as usize] += 1);
        n
    };
    // round(0.3·n), at most n − 1: 3 of 10, 6 of 20, 1 of 3, 0 of 1.
    assert_eq!(per_class(&test), [3, 6, 1, 0]);
    assert_eq!(per_class(&train), [7, 14, 2, 1]);
    // Disjoint and covering: the pixel value is the item number.
    let items = |ix: &ImageIndex| -> Vec<u8> {
        let ds = ix.decode(DecodeOptions::default()).unwrap();
        (0..ds.len()).map(|i| ds.get(i).pixels[0]).collect()
    };
    let (a, b) = (items(&train), items(&test));
    let mut all: Vec<u8> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..34).collect::<Vec<u8>>());
    // Seeded: the same seed gives the same split, another seed another one.
    let (train2, test2) = index.split_stratified(0.3, 7).unwrap();
    assert_eq!((&train, &test), (&train2, &test2));
    assert_ne!(items(&index.split_stratified(0.3, 8).unwrap().1), b);
    for bad in [0.0, 1.0, -0.5, f64::NAN] {
        let e = index.split_stratified(bad, 7).unwrap_err().to_string();
        assert!(
            e.contains("test_fraction") && e.contains(&bad.to_string()),
            "{e}"
        );
    }
}

#[test]
fn a_test_class_missing_from_training_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (train_dir, test_dir) = (dir.path().join("train"), dir.path().join("test"));
    for (root, classes) in [
        (&train_dir, ["cat", "dog", "horse"]),
        (&test_dir, ["dog", "cat", "zebra"]),
    ] {
        for (k, c) in classes.iter().enumerate() {
            fs::create_dir_all(root.join(c)).unwrap();
            write_png(&root.join(c).join("0.png"), 1, 1, &[k as u8; 3]);
        }
    }
    let opts = ScanOptions::default();
    let train = ImageIndex::scan_folder(&train_dir, &opts).unwrap();
    let test = ImageIndex::scan_folder(&test_dir, &opts).unwrap();
    let e = test.clone().with_classes(train.class_names()).unwrap_err();
    assert!(matches!(e, Error::ClassMismatch { .. }), "{e}");
    assert!(e.to_string().contains("`zebra`"), "{e}");
    // The in-memory dataset does the same.
    let decoded = test.decode(DecodeOptions::default()).unwrap();
    let e = decoded.with_classes(train.class_names()).unwrap_err();
    assert!(e.to_string().contains("`zebra`"), "{e}");

    // A training class the test split lacks is named too; matching classes are mapped by name.
    fs::remove_dir_all(test_dir.join("zebra")).unwrap();
    let test = ImageIndex::scan_folder(&test_dir, &opts).unwrap();
    let e = test.clone().with_classes(train.class_names()).unwrap_err();
    assert!(e.to_string().contains("`horse`"), "{e}");
    fs::create_dir_all(test_dir.join("horse")).unwrap();
    write_png(&test_dir.join("horse/0.png"), 1, 1, &[9; 3]);
    let names = vec!["horse".to_string(), "dog".into(), "cat".into()];
    let mapped = ImageIndex::scan_folder(&test_dir, &opts)
        .unwrap()
        .with_classes(&names)
        .unwrap();
    // Sorted test folders cat, dog, horse → positions 2, 1, 0 in `names`.
    assert_eq!(mapped.labels().unwrap(), [2, 1, 0]);
    assert_eq!(mapped.class_names(), names);
}

#[test]
fn a_tar_gz_and_the_same_plain_folder_give_identical_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let archive = shared_data().join("cifar10/cifar10-jpeg.tar.gz");
    // Unpacked independently with the tar crate.
    let file = fs::File::open(&archive).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(dir.path())
        .unwrap();
    let opts = DecodeOptions::default();
    let from_archive =
        read_image_archive(&archive, "test", FolderLayout::ClassFolders, opts).unwrap();
    let from_folder =
        read_image_folder(dir.path().join("test"), FolderLayout::ClassFolders, opts).unwrap();
    assert_eq!(from_archive.len(), 10_000);
    assert_eq!(from_archive.class_names(), from_folder.class_names());
    assert_eq!(from_archive.labels(), from_folder.labels());
    assert_eq!(
        from_archive.store(),
        from_folder.store(),
        "same pixels, same order"
    );
    // And both are the reference decoder's pixels of the same file.
    let i = 4321;
    let source = from_folder.item_source(i);
    assert!(
        from_archive
            .item_source(i)
            .ends_with(&source[source.len() - 18..])
    );
    let bytes = fs::read(&source).unwrap();
    assert_eq!(
        from_folder.get(i).pixels,
        reference_rgb(&bytes).as_raw().as_slice()
    );
}

/// A file that is neither a tar nor a gzip archive (a text file given as the data) is named as
/// such, not as a corrupted archive; a plain `.tar` of the same tree is read.
#[test]
fn a_file_that_is_no_archive_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    fs::write(&notes, "hello\n".repeat(200)).unwrap();
    let e = ImageIndex::scan_archive(&notes, "", &ScanOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("notes.txt") && text.contains("neither a .tar nor a .tar.gz"),
        "{text}"
    );
    let tree = dir.path().join("tree/cat");
    fs::create_dir_all(&tree).unwrap();
    write_png(&tree.join("a.png"), 8, 8, &[128; 8 * 8 * 3]);
    let tar_path = dir.path().join("tree.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
    b.append_dir_all(".", dir.path().join("tree")).unwrap();
    b.into_inner().unwrap().flush().unwrap();
    let index = ImageIndex::scan_archive(&tar_path, "", &ScanOptions::default()).unwrap();
    assert_eq!(index.len(), 1);
}

/// A PNG whose header declares more pixels than the decoder may allocate (a 30,000 × 30,000
/// image) is refused naming the file and its size, not as "truncated or corrupt".
#[test]
fn an_image_too_large_to_decode_is_named_with_its_size() {
    let mut png = Vec::new();
    image::RgbImage::from_raw(8, 8, vec![7; 8 * 8 * 3])
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&30_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&30_000u32.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let e = decode_image(Path::new("big.png"), &png)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("big.png") && e.contains("30000×30000 pixels") && e.contains("too large"),
        "{e}"
    );
}
