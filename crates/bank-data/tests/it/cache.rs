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
    let first = cache
        .load_or_build("cifar10-train", &[&records], "v1", build)
        .unwrap();
    let path = cache.path_for("cifar10-train", &[&records], "v1").unwrap();
    assert!(path.is_file());
    let second = cache
        .load_or_build("cifar10-train", &[&records], "v1", || {
            panic!("must come from the cache")
        })
        .unwrap();
    assert_eq!(first, second);

    // Other reader settings: another file.
    assert_ne!(
        path,
        cache.path_for("cifar10-train", &[&records], "v2").unwrap()
    );

    // A source that changes (size or time) gets a new cache entry.
    let copy = dir.path().join("copy.bin");
    fs::copy(&records, &copy).unwrap();
    let before = cache.path_for("x", &[&copy], "").unwrap();
    fs::write(&copy, &fs::read(&records).unwrap()[..3073 * 10]).unwrap();
    assert_ne!(before, cache.path_for("x", &[&copy], "").unwrap());
}

#[test]
fn a_damaged_cache_file_is_rejected_by_load_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let records = shared_data().join("cifar10/data_batch_1_first4000.bin");
    let cache = DatasetCache::new(dir.path());
    let build = || read_cifar(&[&records], CifarKind::Cifar10, DecodeOptions::default());
    let built = cache.load_or_build("c", &[&records], "", build).unwrap();
    let path = cache.path_for("c", &[&records], "").unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff; // inside the pixels
    fs::write(&path, &bytes).unwrap();
    let e = load_cache(&path).unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    fs::write(&path, &bytes[..n / 2]).unwrap();
    assert!(load_cache(&path).is_err());
    let rebuilt = cache.load_or_build("c", &[&records], "", build).unwrap();
    assert_eq!(rebuilt, built);
    assert_eq!(load_cache(&path).unwrap(), built);
}
