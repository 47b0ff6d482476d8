//! Data-parallel runs (two replicas on the CPU): resumable, also with the bank sharded, and their
//! checkpoints resume onto one device. The step itself is checked against a one-device implementation in
//! the crate's unit tests (`parallel::tests`).

use std::fs;
use std::path::Path;

use bank_train::config::BankSharding;
use bank_train::{TrainConfig, checkpoint};

use crate::resume::{bank_rows, losses};

/// The resume test's recipe (two epochs, K = 2, consistency, merging) on `devices`.
fn config(devices: &[&str]) -> TrainConfig {
    let mut config = crate::resume::config();
    config.train.devices = devices.iter().map(|d| d.to_string()).collect();
    config
}

/// The run's final loss (last epoch).
fn run(dir: &Path, resume: bool, config: &TrainConfig) -> bank_train::Result<f64> {
    crate::resume::run(dir, resume, config)?;
    Ok(*losses(dir).last().expect("an epoch"))
}

/// Keeps only the epoch-1 checkpoint of a finished two-epoch run (a kill during epoch 2).
fn lose_epoch_two(dir: &Path) {
    let ckpts = dir.join("checkpoints");
    fs::remove_dir_all(ckpts.join("epoch-0002")).unwrap();
    let state = checkpoint::read_state(&checkpoint::latest(&ckpts).unwrap().unwrap()).unwrap();
    assert_eq!(state.epochs_done, 1);
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn two_replica_run_resumes_and_its_checkpoints_resume_onto_one_device() {
    let root = tempfile::tempdir().unwrap();
    let two = config(&["cpu", "cpu"]);
    let straight = root.path().join("straight");
    let loss = run(&straight, false, &two).unwrap();
    assert!(loss.is_finite());

    // Killed in epoch 2, resumed on two replicas: the run it would have been (the merge groups
    // of epoch 1 reach replica 1 from the checkpoint). ndarray's threaded reductions make the
    // 7th digit vary.
    let resumed = root.path().join("resumed");
    run(&resumed, false, &two).unwrap();
    lose_epoch_two(&resumed);
    let again = run(&resumed, true, &two).unwrap();
    assert!(
        (again - loss).abs() <= 1e-4 * loss.abs(),
        "{again} vs {loss}"
    );
    let diff = max_diff(&bank_rows(&resumed), &bank_rows(&straight));
    assert!(diff < 1e-3, "banks differ by {diff}");

    // The same checkpoint resumed with the bank sharded over the two replicas (PartialFC): the
    // same run, to rounding.
    lose_epoch_two(&resumed);
    let mut sharded = two.clone();
    sharded.method.bank_sharding = BankSharding::Sharded;
    let again = run(&resumed, true, &sharded).unwrap();
    assert!(
        (again - loss).abs() <= 1e-4 * loss.abs(),
        "sharded: {again} vs {loss}"
    );
    let diff = max_diff(&bank_rows(&resumed), &bank_rows(&straight));
    assert!(diff < 1e-3, "sharded: banks differ by {diff}");

    // The same checkpoint resumed on one device trains on; from there it is another run
    // (BatchNorm then normalises whole batches, not shards).
    lose_epoch_two(&resumed);
    let one = run(&resumed, true, &config(&[])).unwrap();
    assert!(one.is_finite());
    let diff = max_diff(&bank_rows(&resumed), &bank_rows(&straight));
    assert!(diff > 1e-3, "one device should differ from two, by {diff}");
}

/// Every epoch's metrics of a finished run: loss, kNN against the bank, merge round.
fn epochs(dir: &Path) -> Vec<bank_train::metrics::EpochMetrics> {
    fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A run with the bank sharded over three replicas, from scratch (each replica draws only its
/// rows), against the same run with the bank replicated: the same losses to float tolerance,
/// the same kNN against the bank (searched shard by shard and combined) and the same merge
/// rounds (the all-rows search across the shards), and a checkpoint with the whole bank
/// (gathered); killed in epoch 2, it resumes sharded (each replica reading its rows of the
/// saved bank) to the run it would have been.
#[test]
fn a_sharded_run_evaluates_merges_and_checkpoints_as_the_replicated_run() {
    let root = tempfile::tempdir().unwrap();
    let three = config(&["cpu", "cpu", "cpu"]);
    let replicated = root.path().join("replicated");
    run(&replicated, false, &three).unwrap();
    let mut sharded_config = three.clone();
    sharded_config.method.bank_sharding = BankSharding::Sharded;
    let sharded = root.path().join("sharded");
    let loss = run(&sharded, false, &sharded_config).unwrap();

    // The two runs sum in other orders (the softmax's normaliser over three shards, not one
    // bank), and two epochs of training carry that apart. Measured (docs/results.md): the loss
    // up to 5.4e-6 relative after epoch 1 and 8.7e-5 after epoch 2 (1e-4 was allowed before),
    // the banks up to 3.5e-4 apart (stop 29's CI: 2.9e-4); other runs of the same code gave
    // loss gaps 20–100 times smaller. A gradient 1.001× too large fails the kNN check below,
    // 1.01× the loss check. The step itself is compared with one device in `parallel::tests`;
    // here the kNN and the merge rounds must still be equal.
    let (want, got) = (epochs(&replicated), epochs(&sharded));
    assert_eq!(got.len(), 2);
    for (w, g) in want.iter().zip(&got) {
        let at = format!("epoch {}", g.epoch);
        assert!(
            (g.loss - w.loss).abs() <= 5e-4 * w.loss.abs(),
            "{at}: loss {} vs {}",
            g.loss,
            w.loss
        );
        assert!(g.knn_bank.is_some(), "{at}: no kNN");
        assert_eq!(g.knn_bank, w.knn_bank, "{at}: kNN");
        assert!(g.merge.is_some(), "{at}: no merge round");
        assert_eq!(g.merge, w.merge, "{at}: merge round");
    }
    let diff = max_diff(&bank_rows(&sharded), &bank_rows(&replicated));
    assert!(diff < 2e-3, "checkpointed banks differ by {diff}");

    lose_epoch_two(&sharded);
    let again = run(&sharded, true, &sharded_config).unwrap();
    assert!(
        (again - loss).abs() <= 1e-5 * loss.abs(),
        "resumed sharded: {again} vs {loss}"
    );
}

/// NCE on two replicas (the resume recipe without consistency and merging, which need the full
/// softmax): killed in epoch 2 and resumed on two replicas, the run it would have been (Z comes
/// back from the checkpoint to every replica).
#[test]
fn an_nce_run_on_two_replicas_resumes() {
    let root = tempfile::tempdir().unwrap();
    let mut nce = config(&["cpu", "cpu"]);
    nce.method.loss = bank_train::config::LossKind::Nce;
    nce.method.nce_noise = 16;
    nce.method.consistency = 0.0;
    nce.merge.enabled = false;
    let straight = root.path().join("straight");
    let loss = run(&straight, false, &nce).unwrap();
    assert!(loss.is_finite());
    let resumed = root.path().join("resumed");
    run(&resumed, false, &nce).unwrap();
    lose_epoch_two(&resumed);
    let again = run(&resumed, true, &nce).unwrap();
    assert!(
        (again - loss).abs() <= 1e-4 * loss.abs(),
        "{again} vs {loss}"
    );
    let diff = max_diff(&bank_rows(&resumed), &bank_rows(&straight));
    assert!(diff < 1e-3, "banks differ by {diff}");
}
