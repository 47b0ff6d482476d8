//! Save/load round trips and rejection of bad files.

use std::collections::HashMap;

use crate::common::*;
use bank_core::{Attachment, Error, MemoryBank, MemoryBankConfig, Precision};
use burn::prelude::*;

fn round_trip_is_bit_exact<B: Backend>(device: &B::Device, precision: Precision) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let mut bank = MemoryBankConfig::new(300, 24)
        .with_momentum(0.75)
        .with_precision(precision)
        .with_seed(3)
        .init::<B>(device)
        .unwrap();
    // An update makes the rows less trivial than the initial ones.
    bank.update(
        indices::<B>(&[4, 4, 7, 7], device),
        tensor::<B>(host_matrix(4, 24, 8), 4, 24, device),
        2,
    )
    .unwrap();
    let groups = Attachment {
        name: "groups".into(),
        values: (0..300).map(|i| i / 2).collect(),
    };
    bank.save_with(&path, std::slice::from_ref(&groups))
        .unwrap();
    let (loaded, attachments) = MemoryBank::<B>::load_with(&path, device).unwrap();
    assert_eq!(loaded.precision(), precision);
    assert_eq!(loaded.momentum(), 0.75);
    assert_eq!((loaded.num_rows(), loaded.dim()), (300, 24));
    assert_eq!(attachments, vec![groups]);
    let a = bank.rows().into_data();
    let b = loaded.rows().into_data();
    assert_eq!(a.as_bytes(), b.as_bytes(), "rows differ after a round trip");
}

fn f32_round_trip<B: Backend>(device: &B::Device) {
    round_trip_is_bit_exact::<B>(device, Precision::F32);
}

on_backends!(f32_round_trip);

#[test]
fn f16_round_trip_flex() {
    round_trip_is_bit_exact::<burn::backend::Flex>(&Default::default(), Precision::F16);
}

#[cfg(feature = "wgpu")]
#[test]
fn f16_round_trip_wgpu_when_supported() {
    type W = burn::backend::Wgpu;
    let device = Default::default();
    if W::supports_dtype(&device, burn::tensor::DType::F16) {
        round_trip_is_bit_exact::<W>(&device, Precision::F16);
    } else {
        let err = MemoryBankConfig::new(4, 4)
            .with_precision(Precision::F16)
            .init::<W>(&device)
            .unwrap_err();
        assert!(matches!(err, Error::UnsupportedPrecision { .. }), "{err}");
    }
}

#[cfg(feature = "tch")]
#[test]
fn f16_round_trip_tch() {
    round_trip_is_bit_exact::<burn::backend::LibTorch>(&Default::default(), Precision::F16);
}

type B = burn::backend::NdArray;

fn saved_file(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("good.bank");
    MemoryBankConfig::new(50, 8)
        .init::<B>(&Default::default())
        .unwrap()
        .save(&path)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn load_err(path: &std::path::Path) -> Error {
    MemoryBank::<B>::load(path, &Default::default()).unwrap_err()
}

#[test]
fn truncated_files_are_rejected_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = saved_file(dir.path());
    for keep in [0, 5, 8, 40, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.path().join(format!("cut{keep}.bank"));
        std::fs::write(&p, &bytes[..keep]).unwrap();
        let err = load_err(&p);
        assert!(
            matches!(err, Error::Corrupt { .. }),
            "cut at {keep}: {err:?}"
        );
        assert!(
            err.to_string().contains(&format!("cut{keep}.bank")),
            "{err}"
        );
    }
}

#[test]
fn a_flipped_data_byte_fails_the_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut bytes) = saved_file(dir.path());
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = load_err(&path);
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn a_corrupted_header_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut bytes) = saved_file(dir.path());
    bytes[12] = b'#';
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(load_err(&path), Error::Corrupt { .. }));
}

/// Writes a file by hand with the given metadata and bank tensor.
fn handmade(dir: &std::path::Path, meta: &[(&str, &str)], shape: Vec<usize>) -> std::path::PathBuf {
    use safetensors::tensor::{Dtype, TensorView};
    let n: usize = shape.iter().product();
    let data: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let crc = crc32fast::hash(&data);
    let mut m: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.entry("checksum".into()).or_insert(format!("{crc:08x}"));
    let view = TensorView::new(Dtype::F32, shape, &data).unwrap();
    let bytes = safetensors::serialize([("bank", view)], Some(m)).unwrap();
    let path = dir.join("handmade.bank");
    std::fs::write(&path, bytes).unwrap();
    path
}

const GOOD: [(&str, &str); 6] = [
    ("format", "membank-bank"),
    ("format_version", "1"),
    ("num_rows", "3"),
    ("dim", "2"),
    ("momentum", "0.5"),
    ("precision", "f32"),
];

fn with(key: &str, value: &str) -> Vec<(&'static str, String)> {
    let mut meta: Vec<(&'static str, String)> = GOOD
        .iter()
        .map(|(k, v)| {
            (
                *k,
                if *k == key {
                    value.to_string()
                } else {
                    v.to_string()
                },
            )
        })
        .collect();
    if key == "checksum" {
        meta.push(("checksum", value.to_string()));
    }
    meta
}

fn handmade_with(
    dir: &std::path::Path,
    key: &str,
    value: &str,
    shape: Vec<usize>,
) -> std::path::PathBuf {
    let meta = with(key, value);
    let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let path = handmade(dir, &meta, shape);
    let unique = dir.join(format!("handmade-{key}-{value}.bank"));
    std::fs::rename(&path, &unique).unwrap();
    unique
}

#[test]
fn handmade_good_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = handmade(dir.path(), &GOOD, vec![3, 2]);
    let bank = MemoryBank::<B>::load(&path, &Default::default()).unwrap();
    assert_eq!(values(bank.rows()), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn other_versions_shapes_and_values_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (
            handmade_with(d, "format_version", "2", vec![3, 2]),
            "version 2",
        ),
        (
            handmade_with(d, "num_rows", "4", vec![3, 2]),
            "metadata says f32 [4, 2]",
        ),
        (handmade_with(d, "momentum", "1.5", vec![3, 2]), "momentum"),
        (
            handmade_with(d, "momentum", "abc", vec![3, 2]),
            "`momentum` has invalid value `abc`",
        ),
        (
            handmade_with(d, "precision", "f8", vec![3, 2]),
            "unknown precision `f8`",
        ),
        (
            handmade_with(d, "format", "something-else", vec![3, 2]),
            "format is `something-else`",
        ),
        (
            handmade_with(d, "checksum", "00000000", vec![3, 2]),
            "checksum mismatch",
        ),
    ];
    for (path, want) in cases {
        let err = load_err(&path);
        let text = err.to_string();
        assert!(text.contains(want), "expected {want:?} in {text:?}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
    let missing = handmade(d, &GOOD[..5], vec![3, 2]);
    assert!(
        load_err(&missing)
            .to_string()
            .contains("missing metadata field `precision`")
    );
    assert!(matches!(load_err(&d.join("absent.bank")), Error::Io { .. }));
}

#[test]
fn load_expecting_rejects_a_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = saved_file(dir.path());
    let err = MemoryBank::<B>::load_expecting(&path, &Default::default(), 50_000, 128).unwrap_err();
    assert!(
        err.to_string()
            .contains("holds a 50×8 bank, expected 50000×128"),
        "{err}"
    );
    assert!(MemoryBank::<B>::load_expecting(&path, &Default::default(), 50, 8).is_ok());
}

#[test]
fn f16_file_on_a_backend_without_f16_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.bank");
    MemoryBankConfig::new(4, 4)
        .with_precision(Precision::F16)
        .init::<burn::backend::Flex>(&Default::default())
        .unwrap()
        .save(&path)
        .unwrap();
    assert!(matches!(
        load_err(&path),
        Error::UnsupportedPrecision { .. }
    ));
}

#[test]
fn saving_replaces_atomically_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.bank");
    let device = Default::default();
    MemoryBankConfig::new(10, 4)
        .with_seed(1)
        .init::<B>(&device)
        .unwrap()
        .save(&path)
        .unwrap();
    let second = MemoryBankConfig::new(10, 4)
        .with_seed(2)
        .init::<B>(&device)
        .unwrap();
    second.save(&path).unwrap();
    let loaded = MemoryBank::<B>::load(&path, &device).unwrap();
    assert_eq!(values(loaded.rows()), values(second.rows()));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // Saving into a missing directory fails with the path in the message.
    let err = second
        .save(dir.path().join("no/such/dir/b.bank"))
        .unwrap_err();
    assert!(err.to_string().contains("no/such/dir/b.bank"), "{err}");
}

/// What a write killed midway leaves (`.NAME.PID.tmp`, unlocked, a minute old) is removed by the
/// next write of the same file; a temporary file another process still writes (locked), a fresh
/// one, and those of other files stay.
#[test]
fn a_write_removes_what_an_interrupted_write_of_the_same_file_left() {
    use std::fs::{self, File};
    use std::time::{Duration, SystemTime};
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, age_s: u64| {
        let path = dir.path().join(name);
        let f = File::create(&path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
        (path, f)
    };
    let (killed, _) = file(".cache.bin.4001.tmp", 120);
    let (writing, held) = file(".cache.bin.4002.tmp", 120);
    held.lock().unwrap();
    let (fresh, _) = file(".cache.bin.4003.tmp", 0);
    let (other, _) = file(".other.bin.4001.tmp", 120);
    let (not_ours, _) = file(".cache.bin.x.tmp", 120);
    let target = dir.path().join("cache.bin");
    bank_core::write_atomic(&target, b"decoded").unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"decoded");
    assert!(!killed.exists());
    for kept in [&writing, &fresh, &other, &not_ours] {
        assert!(kept.exists(), "{} removed", kept.display());
    }
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 5);
}
