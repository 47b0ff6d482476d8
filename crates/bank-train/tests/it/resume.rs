//! Resume: two epochs straight equal one epoch, a crash, a resume and the second epoch.

use std::fs;
use std::path::Path;

use bank_core::MemoryBank;
use bank_train::metrics::EpochMetrics;
use std::sync::Arc;

use bank_train::{Error, NoProgress, RunOptions, TrainConfig, TrainData, checkpoint, train};
use burn::backend::NdArray;

use crate::{Train, cifar_records, halved};

/// Two epochs of K = 2 with consistency and merging from epoch 1, on 16×16 images.
pub fn config() -> TrainConfig {
    let o: Vec<String> = [
        "train.epochs=2",
        "train.batch_size=16",
        "train.views=2",
        "train.threads=1",
        "method.consistency=0.5",
        "merge.enabled=true",
        "merge.schedule.start_epoch=0",
        "merge.schedule.min_similarity=0.0",
        "data.image_size=16",
        "eval.k=10",
        "eval.recompute_at_end=false",
        "checkpoint.keep=5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    TrainConfig::load(None, &o).unwrap()
}

/// Trains `config` on 48 + 32 real CIFAR-10 records at 16×16 into `dir` (taking the backend's turn).
pub fn run(dir: &Path, resume: bool, config: &TrainConfig) -> bank_train::Result<()> {
    let _turn = crate::backend_turn();
    let (train_set, test_set) = cifar_records(48, 32);
    let (train_set, test_set) = (halved(&train_set), halved(&test_set));
    let options = RunOptions {
        run_dir: dir.to_path_buf(),
        resume,
    };
    let data = TrainData::from_sets(config, Arc::new(train_set), Arc::new(test_set))?;
    train::<Train>(
        config,
        &data,
        &options,
        &Default::default(),
        &mut NoProgress,
    )
    .map(|_| ())
}

/// The per-epoch losses of `metrics.jsonl`.
pub fn losses(dir: &Path) -> Vec<f64> {
    fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<EpochMetrics>(l).unwrap().loss)
        .collect()
}

/// The bank of the newest checkpoint.
pub fn bank_rows(dir: &Path) -> Vec<f32> {
    let ckpt = checkpoint::latest(&dir.join("checkpoints"))
        .unwrap()
        .unwrap();
    let bank =
        MemoryBank::<NdArray>::load(ckpt.join("bank.safetensors"), &Default::default()).unwrap();
    bank.rows().into_data().to_vec().unwrap()
}

#[test]
fn one_epoch_crash_resume_equals_two_epochs_straight() {
    let root = tempfile::tempdir().unwrap();
    let (straight, resumed) = (root.path().join("straight"), root.path().join("resumed"));
    let cfg = config();
    run(&straight, false, &cfg).unwrap();

    // Simulate a kill during epoch 2: only the epoch-1 checkpoint survives, plus a half-written
    // checkpoint folder and the metrics line of the lost epoch.
    run(&resumed, false, &cfg).unwrap();
    let ckpts = resumed.join("checkpoints");
    fs::remove_dir_all(ckpts.join("epoch-0002")).unwrap();
    fs::create_dir(ckpts.join(".epoch-0002.tmp")).unwrap();
    fs::write(ckpts.join(".epoch-0002.tmp/model.bin"), b"partial").unwrap();
    let state = checkpoint::read_state(&checkpoint::latest(&ckpts).unwrap().unwrap()).unwrap();
    assert_eq!(state.epochs_done, 1);
    run(&resumed, true, &cfg).unwrap();

    let (a, b) = (losses(&straight), losses(&resumed));
    assert_eq!(a.len(), 2);
    // ndarray's multi-threaded reductions add in a varying order, so two identical fresh runs
    // already differ in the 7th digit; a resume that lost any state (optimiser momentum, bank,
    // groups, batch-norm statistics, the epoch's shuffle) moves the loss in the 2nd or 3rd.
    eprintln!("losses straight {a:?}, resumed {b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "per-epoch losses {a:?} vs {b:?}"
        );
    }
    let (ra, rb) = (bank_rows(&straight), bank_rows(&resumed));
    assert_eq!(ra.len(), rb.len());
    let diff = ra
        .iter()
        .zip(&rb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    eprintln!("bank rows: max abs difference {diff:e}");
    assert!(diff < 1e-3, "bank rows differ by {diff}");
    let groups = |dir: &Path| {
        let ckpt = checkpoint::latest(&dir.join("checkpoints"))
            .unwrap()
            .unwrap();
        MemoryBank::<NdArray>::load_with(ckpt.join("bank.safetensors"), &Default::default())
            .unwrap()
            .1
    };
    let g = groups(&straight);
    assert!(
        g.iter().any(|a| a.name == "groups"),
        "merge groups are checkpointed"
    );
    assert_eq!(g, groups(&resumed));

    // The summary's throughput is the mean over both epochs, the one before the crash included,
    // and resuming the finished run (only evaluated again) keeps it.
    let mean_rate = |dir: &Path| {
        let rates: Vec<f64> = fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<EpochMetrics>(l).unwrap().views_per_s)
            .collect();
        assert!(
            rates.len() == 2 && rates.iter().all(|&r| r > 0.0),
            "{rates:?}"
        );
        rates.iter().sum::<f64>() / 2.0
    };
    let summary = |dir: &Path| -> bank_train::metrics::Summary {
        serde_json::from_str(&fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
    };
    let want = mean_rate(&resumed);
    let got = summary(&resumed);
    assert!(
        (got.views_per_s - want).abs() <= 1e-9 * want,
        "{got:?} against {want}"
    );
    run(&resumed, true, &cfg).unwrap();
    let again = summary(&resumed);
    assert_eq!(again.views_per_s, got.views_per_s, "a finished run resumed");
    assert_eq!(again.images_per_s, got.images_per_s);

    // Fewer epochs than the run has done: refused, naming the field, the folder untouched.
    let files = ["config.toml", "summary.json", "metrics.jsonl"];
    let before: Vec<Vec<u8>> = files.map(|f| fs::read(resumed.join(f)).unwrap()).into();
    let mut fewer = cfg.clone();
    fewer.train.epochs = 1;
    let e = run(&resumed, true, &fewer).unwrap_err().to_string();
    assert!(
        e.contains("train.epochs") && e.contains("has done 2 epochs"),
        "{e}"
    );
    let after: Vec<Vec<u8>> = files.map(|f| fs::read(resumed.join(f)).unwrap()).into();
    assert!(before == after, "the run folder was written to");

    // Another process training the run (here: its lock taken): refused, nothing written; free
    // again once the lock is released.
    let lock = fs::File::open(resumed.join(bank_train::run_folder::LOCK_FILE)).unwrap();
    lock.try_lock().unwrap();
    let e = run(&resumed, true, &cfg).unwrap_err();
    assert!(matches!(e, Error::RunBusy { .. }), "{e}");
    let after: Vec<Vec<u8>> = files.map(|f| fs::read(resumed.join(f)).unwrap()).into();
    assert!(before == after, "the run folder was written to");
    drop(lock);
    run(&resumed, true, &cfg).unwrap();
}

#[test]
fn an_existing_run_is_not_overwritten_and_a_diverging_loss_stops_the_run() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    fs::create_dir(&dir).unwrap();
    let e = run(&dir, false, &config()).unwrap_err();
    assert!(matches!(e, Error::RunExists { .. }), "{e}");

    // A learning rate of 1e30 with weight decay overflows the weights within a few steps.
    let mut cfg = config();
    cfg.optim.lr = 1e30;
    let e = run(&root.path().join("diverge"), false, &cfg).unwrap_err();
    match e {
        Error::NonFiniteLoss { step, .. } => assert!(step >= 1),
        other => panic!("expected NonFiniteLoss, got {other}"),
    }
}
