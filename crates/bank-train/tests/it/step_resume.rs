//! Checkpoints inside an epoch: a run resumed from any checkpoint (mid-epoch or epoch end)
//! continues bit-identically to an uninterrupted run on flex (truth: the uninterrupted run
//! itself, compared bit for bit: per-epoch loss, lr, kNN, merge records, and the final bank).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bank_train::{Progress, RunOptions, TrainConfig, TrainData, checkpoint, train};

use crate::{FastTrain, cifar_records, final_bank, halved, metrics};

fn config(extra: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = [
        "train.epochs=2",
        "train.batch_size=8",
        "train.views=2",
        "train.threads=1",
        "data.image_size=16",
        "eval.k=10",
        "eval.recompute_at_end=false",
        "checkpoint.every_steps=2",
        "checkpoint.keep=100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &o).unwrap()
}

/// The merging recipe: consistency, merged positives from the first epoch on.
const MERGING: &[&str] = &[
    "method.consistency=0.5",
    "merge.enabled=true",
    "merge.schedule.start_epoch=0",
    "merge.schedule.min_similarity=0.0",
];

/// NCE: the step that draws from the backend's generator.
const NCE: &[&str] = &["method.loss=nce", "method.nce_noise=16"];

fn data(config: &TrainConfig) -> TrainData {
    let (train_set, test_set) = cifar_records(44, 24);
    let (train_set, test_set) = (halved(&train_set), halved(&test_set));
    TrainData::from_sets(config, Arc::new(train_set), Arc::new(test_set)).unwrap()
}

/// What a run told its progress: per epoch, (epoch, steps, done at the start, steps taken).
#[derive(Default)]
pub(crate) struct Recorder(Vec<(usize, usize, usize, usize)>);

impl Progress for Recorder {
    fn epoch_start(&mut self, epoch: usize, steps: usize, done: usize) {
        self.0.push((epoch, steps, done, 0));
    }
    fn step(&mut self, _loss: f64, _views_per_s: f64) {
        self.0.last_mut().expect("a step inside an epoch").3 += 1;
    }
}

pub(crate) fn run(dir: &Path, resume: bool, config: &TrainConfig) -> bank_train::Result<()> {
    run_recorded(dir, resume, config).map(|_| ())
}

/// [`run`], returning what the progress was told.
fn run_recorded(dir: &Path, resume: bool, config: &TrainConfig) -> bank_train::Result<Recorder> {
    let mut recorder = Recorder::default();
    let _turn = crate::backend_turn();
    let options = RunOptions {
        run_dir: dir.to_path_buf(),
        resume,
    };
    train::<FastTrain>(
        config,
        &data(config),
        &options,
        &Default::default(),
        &mut recorder,
    )
    .map(|_| recorder)
}

/// A copy of the run folder `from` as a kill right after checkpoint `keep` would leave it:
/// its config and metrics as they are, only the checkpoints up to `keep`.
fn cut_after(from: &Path, to: &Path, keep: &str) {
    fs::create_dir_all(to.join("checkpoints")).unwrap();
    for f in ["config.toml", "metrics.jsonl"] {
        fs::copy(from.join(f), to.join(f)).unwrap();
    }
    let keep_at = checkpoint::position(keep).unwrap();
    for ckpt in checkpoint::list(&from.join("checkpoints")).unwrap() {
        let name = ckpt.file_name().unwrap().to_str().unwrap().to_string();
        if checkpoint::position(&name).unwrap() > keep_at {
            continue;
        }
        let target = to.join("checkpoints").join(&name);
        fs::create_dir(&target).unwrap();
        for file in fs::read_dir(&ckpt).unwrap() {
            let file = file.unwrap().path();
            fs::copy(&file, target.join(file.file_name().unwrap())).unwrap();
        }
    }
}

/// Runs `config` straight, then resumes a copy cut after each of `points` and compares.
fn resumes_are_exact(config: &TrainConfig, points: &[&str]) {
    let root = tempfile::tempdir().unwrap();
    let straight = root.path().join("straight");
    run(&straight, false, config).unwrap();
    let names: Vec<String> = checkpoint::list(&straight.join("checkpoints"))
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    // 44 images in batches of 8: 6 steps an epoch, a checkpoint every 2 steps inside it.
    for p in points {
        assert!(names.iter().any(|n| n == p), "{p} written; have {names:?}");
    }
    let (m0, b0) = (metrics(&straight), final_bank(&straight));
    for point in points {
        let resumed = root.path().join(format!("from-{point}"));
        cut_after(&straight, &resumed, point);
        let state = checkpoint::read_state(
            &checkpoint::latest(&resumed.join("checkpoints"))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            checkpoint::name(state.epochs_done, state.progress.batches),
            *point
        );
        let told = run_recorded(&resumed, true, config).unwrap();
        // The progress bar starts where the checkpoint left the epoch, and the steps it then
        // counts complete it.
        let (epoch, steps, done, taken) = told.0[0];
        assert_eq!((epoch, done), (state.epochs_done, state.progress.batches));
        assert_eq!(done + taken, steps, "steps after resuming from {point}");
        assert_eq!(metrics(&resumed), m0, "metrics after resuming from {point}");
        assert!(
            final_bank(&resumed) == b0,
            "final bank after resuming from {point}"
        );
    }
}

#[test]
fn mid_epoch_and_epoch_end_resumes_with_merging_are_bit_identical() {
    let config = config(MERGING);
    resumes_are_exact(
        &config,
        &[
            "epoch-0000-batch-000002",
            "epoch-0001",
            "epoch-0001-batch-000004",
        ],
    );
}

#[test]
fn mid_epoch_resumes_with_nce_noise_are_bit_identical() {
    // NCE draws its noise from the backend generator every step: without the per-step reseed
    // a mid-epoch resume would draw other noise rows.
    let config = config(NCE);
    resumes_are_exact(
        &config,
        &["epoch-0000-batch-000004", "epoch-0001-batch-000002"],
    );
}

#[test]
fn every_minutes_checkpoints_inside_the_epoch_and_off_means_epoch_ends_only() {
    let root = tempfile::tempdir().unwrap();
    let names = |dir: &Path| -> Vec<String> {
        checkpoint::list(&dir.join("checkpoints"))
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect()
    };
    // A cadence far below a step's time: a checkpoint after every step but the epoch's last.
    let timed = config(&[
        "train.epochs=1",
        "checkpoint.every_steps=0",
        "checkpoint.every_minutes=1e-9",
    ]);
    run(&root.path().join("timed"), false, &timed).unwrap();
    let expected: Vec<String> = (1..6)
        .map(|b| checkpoint::name(0, b))
        .chain([checkpoint::name(1, 0)])
        .collect();
    assert_eq!(names(&root.path().join("timed")), expected);
    let off = config(&["train.epochs=1", "checkpoint.every_steps=0"]);
    run(&root.path().join("off"), false, &off).unwrap();
    assert_eq!(names(&root.path().join("off")), ["epoch-0001"]);
}

#[test]
fn checkpoint_names_sort_in_training_order() {
    let order = [(0, 3), (1, 0), (1, 2), (1, 10), (12, 0), (12, 999_999)];
    for &(e, b) in &order {
        assert_eq!(checkpoint::position(&checkpoint::name(e, b)), Some((e, b)));
    }
    let mut names: Vec<String> = order
        .iter()
        .rev()
        .map(|&(e, b)| checkpoint::name(e, b))
        .collect();
    names.sort();
    let sorted: Vec<String> = order.iter().map(|&(e, b)| checkpoint::name(e, b)).collect();
    assert_eq!(names, sorted);
    for bad in [
        "epoch-",
        "epoch-x",
        "epoch-0001-batch-",
        ".epoch-0001.tmp",
        "epoch-1-batch-2-x",
    ] {
        assert_eq!(checkpoint::position(bad), None, "{bad}");
    }
}
