//! The streaming path: the same batches as the in-memory path, bounded memory, clear refusals.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bank_data::*;

use crate::common::{cifar_jpegs, pattern, write_png};

/// 60 real JPEGs in 3 class folders plus two larger PNGs of other sizes.
fn tree(root: &Path) {
    for (k, (_, bytes)) in cifar_jpegs("train/", 60).into_iter().enumerate() {
        let class = format!("c{}", k % 3);
        fs::create_dir_all(root.join(&class)).unwrap();
        fs::write(root.join(&class).join(format!("{k:03}.jpg")), bytes).unwrap();
    }
    write_png(&root.join("c0/wide.png"), 40, 64, &pattern(40 * 64 * 3, 1));
    write_png(&root.join("c2/big.png"), 96, 96, &pattern(96 * 96 * 3, 2));
}

fn batches<D: Dataset + ?Sized + 'static>(ds: Arc<D>, transform: Transform) -> Vec<HostBatch> {
    let config = LoaderConfig::new(16, 3).with_seed(42).with_threads(2);
    MultiViewLoader::new(ds, config, transform)
        .unwrap()
        .epoch(5)
        .map(Result::unwrap)
        .collect()
}

#[test]
fn streaming_and_in_memory_datasets_give_bit_identical_batches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    tree(&root);
    let tar_path = dir.path().join("tree.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
    b.append_dir_all(".", &root).unwrap();
    b.into_inner().unwrap().flush().unwrap();

    let opts = DecodeOptions::default();
    let folder = ImageIndex::scan_folder(&root, &ScanOptions::default()).unwrap();
    let archive = ImageIndex::scan_archive(&tar_path, "", &ScanOptions::default()).unwrap();
    assert_eq!(folder.len(), 62);
    let in_memory: Arc<dyn Dataset> = Arc::new(folder.decode(opts).unwrap());
    let from_files: Arc<dyn Dataset> = Arc::new(folder.clone().streaming(opts).unwrap());
    let from_tar: Arc<dyn Dataset> = Arc::new(archive.streaming(opts).unwrap());
    for transform in [
        Transform::Augment(AugmentConfig::new(24)),
        Transform::Eval(EvalConfig::new(28, 24).with_channels(1)),
    ] {
        let reference = batches(Arc::clone(&in_memory), transform);
        assert_eq!(reference.len(), 4);
        assert_eq!(batches(Arc::clone(&from_files), transform), reference);
        assert_eq!(batches(Arc::clone(&from_tar), transform), reference);
    }
    assert_eq!(from_tar.labels(), in_memory.labels());

    // Header-only size estimate = the decoded bytes.
    let decoded = folder.decode(opts).unwrap();
    assert_eq!(
        folder.estimated_bytes().unwrap(),
        decoded.store().bytes() as u64
    );
}

#[test]
fn streaming_a_tar_gz_is_refused_and_a_file_broken_after_the_scan_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    tree(&root);
    let gz = dir.path().join("tree.tar.gz");
    let enc =
        flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    b.append_dir_all(".", &root).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    let index = ImageIndex::scan_archive(&gz, "", &ScanOptions::default()).unwrap();
    assert_eq!(index.len(), 62);
    let e = index
        .streaming(DecodeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tree.tar.gz") && e.contains("unpack") && e.contains(".tar"),
        "{e}"
    );

    let index = ImageIndex::scan_folder(&root, &ScanOptions::default()).unwrap();
    let ds = Arc::new(index.streaming(DecodeOptions::default()).unwrap());
    fs::write(root.join("c2/big.png"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    let loader = MultiViewLoader::new(
        ds,
        LoaderConfig::new(62, 1),
        Transform::Eval(EvalConfig::new(8, 8)),
    )
    .unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert_eq!(results.len(), 1, "the epoch ends at the error");
    let e = results[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("c2/big.png"), "{e}");
}
