//! bank-train integration tests (ndarray backend): one binary, one module per concern.

mod config;
mod end_to_end;
mod knn;
mod models;
mod resume;

use std::path::PathBuf;

use bank_data::{CifarKind, DecodeOptions, ImageDataset, read_cifar};

/// The autodiff backend the tests train on.
pub type Train = burn::backend::Autodiff<burn::backend::NdArray>;

/// `../shared/data` beside the workspace (override with `MEMBANK_SHARED_DATA`).
pub fn shared_data() -> PathBuf {
    std::env::var("MEMBANK_SHARED_DATA").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
        PathBuf::from,
    )
}

/// The first `train` and the next `test` of the 4,000 lossless CIFAR-10 records.
pub fn cifar_records(train: usize, test: usize) -> (ImageDataset, ImageDataset) {
    let all = read_cifar(
        &[shared_data().join("cifar10/data_batch_1_first4000.bin")],
        CifarKind::Cifar10,
        DecodeOptions::default(),
    )
    .expect("real CIFAR-10 records in ../shared/data");
    let a: Vec<usize> = (0..train).collect();
    let b: Vec<usize> = (train..train + test).collect();
    (all.select(&a), all.select(&b))
}
