//! Fuzzing the bank file reader: arbitrary bytes and mutations of a valid bank file (half of the
//! edits in its safetensors header, which the checksum does not cover) are loaded; the truth is
//! that the reader returns `Ok` or an error naming the file, never a panic, and that whatever it
//! accepts is a bank of the shape its metadata states.

use bank_core::{Attachment, MemoryBank, MemoryBankConfig, Precision};
use burn::backend::Flex;
use proptest::prelude::*;

use crate::fuzz_harness::{bytes, fuzz, mutation};

fn valid_bank(precision: Precision) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let bank = MemoryBankConfig::new(6, 4)
        .with_precision(precision)
        .with_seed(3)
        .init::<Flex>(&Default::default())
        .unwrap();
    let groups = Attachment {
        name: "groups".into(),
        values: vec![0, 0, 2, 3, 3, 5],
    };
    bank.save_with(&path, &[groups]).unwrap();
    std::fs::read(&path).unwrap()
}

fn load(bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzzed.safetensors");
    std::fs::write(&path, bytes).unwrap();
    match MemoryBank::<Flex>::load_with(&path, &Default::default()) {
        Ok((bank, _)) => {
            let rows = bank.rows();
            prop_assert_eq!(rows.dims(), [bank.num_rows(), bank.dim()]);
        }
        Err(e) => prop_assert!(e.to_string().contains("fuzzed.safetensors"), "{}", e),
    }
    Ok(())
}

#[test]
fn fuzz_bank_files() {
    let valid = [valid_bank(Precision::F32), valid_bank(Precision::F16)];
    let header = |b: &[u8]| 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let focus = [header(&valid[0]), header(&valid[1])];
    fuzz(
        "bank_file",
        prop_oneof![
            1 => bytes(512),
            4 => (0..2usize, mutation()).prop_map(move |(i, m)| m.apply(&valid[i], Some(focus[i]))),
        ],
        |b| load(&b),
    );
}
