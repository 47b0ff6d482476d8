//! The whole path on real CIFAR-10 JPEGs: archive → loader → small CNN → bank → kNN.

use std::path::Path;

use std::sync::Arc;

use bank_train::metrics::Summary;
use bank_train::{NoProgress, RunOptions, TrainConfig, TrainData, data_source, train};

use crate::{FastTrain, shared_data};

/// The default config with `overrides` (`section.field=value`).
fn config_with(overrides: &[&str]) -> TrainConfig {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(None, &o).unwrap()
}

/// A fresh run into `dir` on the test backend.
fn run_fresh(config: &TrainConfig, data: &TrainData, dir: &Path) -> Summary {
    let options = RunOptions {
        run_dir: dir.to_path_buf(),
        resume: false,
    };
    let _turn = crate::backend_turn();
    train::<FastTrain>(config, data, &options, &Default::default(), &mut NoProgress).unwrap()
}

#[test]
fn a_short_run_on_real_images_lowers_the_loss_and_beats_chance() {
    let config = config_with(&[
        "data.train_per_class=30",
        "data.test_limit=500",
        "data.cache=false",
        "train.epochs=3",
        "train.batch_size=50",
        "train.views=2",
        "method.consistency=0.5",
        "eval.k=50",
        "checkpoint.keep=2",
    ]);
    let data = data_source::open(&config.data, &shared_data()).unwrap();
    assert_eq!(data.train.len(), 300);
    // `shared_data()` is `<crate>/../../../shared/data`: item sources (exports) are canonical,
    // so they name the files from anywhere.
    let source = data.train.item_source(0);
    let file = source.split('!').next().unwrap();
    assert!(
        !source.contains("/../") && Path::new(file).is_absolute(),
        "{source}"
    );
    assert_eq!(std::fs::canonicalize(file).unwrap().to_str().unwrap(), file);
    assert_eq!(data.eval.as_ref().unwrap().queries.len(), 500);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("e2e");
    let summary = run_fresh(&config, &data, &dir);
    let lines: Vec<bank_train::metrics::EpochMetrics> =
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(lines.len(), 3);
    eprintln!(
        "losses {:?}; kNN bank {:?}, recomputed {:?}",
        lines.iter().map(|m| m.loss).collect::<Vec<_>>(),
        summary.knn_bank,
        summary.knn_recomputed
    );
    assert!(lines[2].loss < lines[0].loss, "loss falls");
    let chance = 0.1;
    assert!(summary.knn_bank.unwrap().top1 > chance + 0.03);
    assert!(summary.knn_recomputed.unwrap().top1 > chance + 0.03);
    for file in ["summary.json", "training.png", "config.toml"] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    assert_eq!(
        bank_train::checkpoint::list(&dir.join("checkpoints"))
            .unwrap()
            .len(),
        2,
        "keeps the newest 2"
    );
}

#[test]
fn nce_loss_and_an_f16_bank_train_end_to_end() {
    // NPID's NCE (the loss for huge banks) with the bank stored in f16 (flex supports it).
    let config = config_with(&[
        "train.epochs=2",
        "train.batch_size=32",
        "method.loss=nce",
        "method.nce_noise=64",
        "method.bank_precision=f16",
        "eval.k=20",
        "eval.recompute_at_end=false",
    ]);
    let (train_set, test_set) = crate::cifar_records(160, 100);
    let data = TrainData::from_sets(&config, Arc::new(train_set), Arc::new(test_set)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("nce");
    let summary = run_fresh(&config, &data, &dir);
    assert!(summary.final_loss.is_finite() && summary.final_loss > 0.0);
    let ckpt = bank_train::checkpoint::latest(&dir.join("checkpoints"))
        .unwrap()
        .unwrap();
    let state = bank_train::checkpoint::read_state(&ckpt).unwrap();
    assert!(
        state.nce_z.is_some_and(|z| z.is_finite() && z > 0.0),
        "NCE's Z is checkpointed"
    );
    let bank = bank_core::MemoryBank::<burn::backend::Flex>::load(
        ckpt.join("bank.safetensors"),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(bank.precision(), bank_core::Precision::F16);
}
