//! The on-disk dataset cache.

use std::fs;

use bank_data::*;

use crate::common::shared_data;

#[test]
fn cache_round_trips_the_real_cifar_records_and_notices_source_changes() {
    let dir = tempfile::tempdir().unwrap();
    let records = shared_data().join("cifar10/data_batch_1_first4000.bin");
    let cache = DatasetCache::new(dir.path().join("cache"));
    let build = || read_cifar(&[&records], CifarKind::Cifar10, DecodeOptions::default());
    let key = |settings: &str| format!("{} {settings}", files_fingerprint(&[&records]).unwrap());
    let first = cache
        .load_or_build("cifar10-train", &key("v1"), build)
        .unwrap();
    let path = cache.path_for("cifar10-train", &key("v1"));
    assert!(path.is_file());
    let second = cache
        .load_or_build("cifar10-train", &key("v1"), || {
            panic!("must come from the cache")
        })
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(second.item_source(4), format!("{}#4", records.display()));

    // Other reader settings: another file.
    assert_ne!(path, cache.path_for("cifar10-train", &key("v2")));

    // A source that changes (size or time) gets a new cache entry.
    let copy = dir.path().join("copy.bin");
    fs::copy(&records, &copy).unwrap();
    let before = files_fingerprint(&[&copy]).unwrap();
    fs::write(&copy, &fs::read(&records).unwrap()[..3073 * 10]).unwrap();
    assert_ne!(before, files_fingerprint(&[&copy]).unwrap());
}

#[test]
fn a_damaged_cache_file_is_rejected_by_load_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let records = shared_data().join("cifar10/data_batch_1_first4000.bin");
    let cache = DatasetCache::new(dir.path());
    let build = || read_cifar(&[&records], CifarKind::Cifar10, DecodeOptions::default());
    let key = files_fingerprint(&[&records]).unwrap();
    let built = cache.load_or_build("c", &key, build).unwrap();
    let path = cache.path_for("c", &key);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff; // inside the pixels
    fs::write(&path, &bytes).unwrap();
    let e = load_cache(&path).unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    fs::write(&path, &bytes[..n / 2]).unwrap();
    assert!(load_cache(&path).is_err());
    let rebuilt = cache.load_or_build("c", &key, build).unwrap();
    assert_eq!(rebuilt, built);
    assert_eq!(load_cache(&path).unwrap(), built);
}

#[test]
fn the_cache_key_covers_every_source_file_so_a_replaced_batch_is_not_served_stale() {
    let dir = tempfile::tempdir().unwrap();
    let records = fs::read(shared_data().join("cifar10/data_batch_1_first4000.bin")).unwrap();
    let record = 3073;
    // Three batch files of 10 real records each; test_batch.bin stands for the key file of old.
    let files: Vec<_> = ["data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"]
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let path = dir.path().join(name);
            fs::write(&path, &records[k * 10 * record..(k + 1) * 10 * record]).unwrap();
            path
        })
        .collect();
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let cache = DatasetCache::new(dir.path().join("cache"));
    let read = || read_cifar(&files[..2], CifarKind::Cifar10, DecodeOptions::default());
    let key = || format!("{} cifar10 train", files_fingerprint(&paths).unwrap());
    let first = cache.load_or_build("train", &key(), read).unwrap();

    // Replace data_batch_2.bin by other real records of the same size (and a new time).
    let replacement = &records[30 * record..40 * record];
    fs::write(&files[1], replacement).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&files[1])
        .unwrap()
        .set_modified(later)
        .unwrap();
    let second = cache.load_or_build("train", &key(), read).unwrap();
    assert_ne!(first, second, "the old images were served");
    // Truth: the new file's records, decoded independently (planar R, G, B → HWC).
    let rec = &replacement[..record];
    let img = second.get(10);
    for (p, px) in img.pixels.chunks(3).enumerate() {
        assert_eq!(px, [rec[1 + p], rec[1 + 1024 + p], rec[1 + 2048 + p]]);
    }
    assert_eq!(second.label(10), Some(u32::from(rec[0])));
    assert_eq!(second.item_source(10), format!("{}#0", files[1].display()));

    // An image index's fingerprint changes when any one image changes.
    let tree = dir.path().join("tree/c");
    fs::create_dir_all(&tree).unwrap();
    for k in 0..3u8 {
        crate::common::write_png(&tree.join(format!("{k}.png")), 2, 2, &[k; 12]);
    }
    let scan = || ImageIndex::scan_folder(tree.parent().unwrap(), &ScanOptions::default()).unwrap();
    let before = scan().fingerprint();
    assert_eq!(before, scan().fingerprint());
    crate::common::write_png(&tree.join("1.png"), 2, 2, &[9; 12]);
    fs::File::options()
        .write(true)
        .open(tree.join("1.png"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_ne!(before, scan().fingerprint());
}
