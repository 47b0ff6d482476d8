//! Fuzzing the readers of bank-train: checkpoint folders (the checksum list, the state, the
//! model, optimiser and bank records) and configurations (TOML files and `section.field=value`
//! overrides). Truth: `Ok` or a typed error (naming the file or field), never a panic; a config
//! that is accepted validates and survives `to_toml` → `from_toml` unchanged.

use std::fs;
use std::path::Path;

use bank_train::manifest::{Entry, MANIFEST_FILE, Manifest};
use bank_train::{Error, TrainConfig, TrainState, checkpoint};
use proptest::prelude::*;

use crate::Train;

#[path = "../../../bank-core/tests/it/fuzz_harness.rs"]
mod fuzz_harness;

use fuzz_harness::{Mutation, bytes, fuzz, mutation};

const FILES: [&str; 4] = ["model.bin", "optim.bin", "bank.safetensors", "state.json"];

fn small_config() -> TrainConfig {
    TrainConfig::load(
        None,
        &[
            "model.dim=8".to_string(),
            "method.loss=nce".into(),
            "method.nce_noise=3".into(),
        ],
    )
    .unwrap()
}

/// A valid checkpoint (after one SGD step, so the optimiser record holds momentum) as files.
fn valid_checkpoint(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let config = small_config();
    let _turn = crate::backend_turn();
    let mut state = TrainState::<Train>::new(&config, 6, &Default::default()).unwrap();
    state.epochs_done = 1;
    let ckpt = state.save(dir, &config).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = FILES
        .iter()
        .chain([&MANIFEST_FILE])
        .map(|f| (f.to_string(), fs::read(ckpt.join(f)).unwrap()))
        .collect();
    files.sort();
    files
}

/// Reads checkpoint `ckpt` as a resume does: state, then every tensor.
fn restore(ckpt: &Path) -> Result<(), TestCaseError> {
    let config = small_config();
    // A fresh state seeds the generator and draws weights.
    let _turn = crate::backend_turn();
    let result = checkpoint::read_state(ckpt).and_then(|_| {
        TrainState::<Train>::new(&config, 6, &Default::default())?
            .restore(ckpt, &Default::default())
    });
    if let Err(e) = result {
        prop_assert!(
            matches!(
                e,
                Error::Checkpoint { .. }
                    | Error::Io { .. }
                    | Error::Core(_)
                    | Error::Mining(_)
                    | Error::Losses(_)
            ),
            "{e:?}"
        );
        prop_assert!(
            e.to_string().contains(&ckpt.display().to_string())
                || matches!(e, Error::Mining(_) | Error::Losses(_)),
            "{e}"
        );
    }
    Ok(())
}

#[test]
fn fuzz_checkpoints() {
    let made = tempfile::tempdir().unwrap();
    let valid = valid_checkpoint(made.path());
    let work = tempfile::tempdir().unwrap();
    let ckpt = work.path().join("epoch-0001");
    fs::create_dir(&ckpt).unwrap();
    // A mutated file, and (`resign`) a checksum list rewritten to match it, so that the
    // decoders behind the checksums are fuzzed too.
    let strategy = (0..valid.len(), mutation(), any::<bool>());
    fuzz(
        "checkpoint",
        strategy,
        |(which, m, resign): (usize, Mutation, bool)| {
            let mut files = valid.clone();
            files[which].1 = m.apply(&files[which].1, Some(64));
            if resign && files[which].0 != MANIFEST_FILE {
                let manifest = Manifest {
                    entries: files
                        .iter()
                        .filter(|(n, _)| n != MANIFEST_FILE)
                        .map(|(n, b)| Entry::of(n, b))
                        .collect(),
                };
                let at = files.iter().position(|(n, _)| n == MANIFEST_FILE).unwrap();
                files[at].1 = manifest.to_text().into_bytes();
            }
            for (name, bytes) in &files {
                fs::write(ckpt.join(name), bytes).unwrap();
            }
            restore(&ckpt)
        },
    );
}

#[test]
fn fuzz_checksum_lists() {
    let valid = Manifest {
        entries: FILES
            .iter()
            .enumerate()
            .map(|(i, f)| Entry::of(f, &[i as u8; 5]))
            .collect(),
    }
    .to_text()
    .into_bytes();
    let path = Path::new("/run/checkpoints/epoch-0001/checksums.txt");
    fuzz(
        "checksum_list",
        prop_oneof![
            bytes(200),
            mutation().prop_map(move |m| m.apply(&valid, None))
        ],
        |b| {
            match Manifest::parse(path, &b) {
                Ok(m) => prop_assert_eq!(Manifest::parse(path, m.to_text().as_bytes()).unwrap(), m),
                Err(e) => prop_assert!(e.to_string().contains("checksums.txt"), "{}", e),
            }
            Ok(())
        },
    );
}

/// Config text, overrides: `Ok` validates and round-trips; errors are `Error::Config` or IO.
fn check_config(text: &[u8], overrides: &[String]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzzed.toml");
    fs::write(&path, text).unwrap();
    match TrainConfig::load(Some(&path), overrides) {
        Ok(c) => {
            prop_assert!(c.validate().is_ok());
            prop_assert_eq!(TrainConfig::from_toml(&c.to_toml()).unwrap(), c);
        }
        Err(e) => prop_assert!(
            matches!(e, Error::Config { .. } | Error::Io { .. }),
            "{e:?}"
        ),
    }
    if let Ok(text) = std::str::from_utf8(text)
        && let Err(e) = TrainConfig::from_toml(text)
    {
        prop_assert!(matches!(e, Error::Config { .. }), "{e:?}");
    }
    Ok(())
}

/// `section.field=value` assignments over real field names and arbitrary values.
fn overrides() -> impl Strategy<Value = Vec<String>> {
    let fields = prop::sample::select(vec![
        "seed",
        "name",
        "model.dim",
        "model.arch",
        "optim.lr",
        "optim.milestones",
        "train.epochs",
        "train.batch_size",
        "train.views",
        "method.loss",
        "method.temperature",
        "method.bank_precision",
        "method.bank_block_rows",
        "merge.enabled",
        "merge.schedule.fraction_start",
        "eval.k",
        "checkpoint.every_minutes",
        "checkpoint.every_steps",
        "data.dataset",
        "data.mean",
        "data.image_size",
        "data.channels",
        "nonsense.field",
        "model",
        "optim.lr.x",
    ]);
    let values = prop_oneof![
        "-?[0-9]{1,4}(\\.[0-9]{1,3})?(e-?[0-9]{1,3})?",
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("[1, 2, 3]".to_string()),
        Just("{ a = 1 }".to_string()),
        "\"[a-z_/]{0,8}\"",
        "[ -~]{0,12}",
    ];
    prop::collection::vec((fields, values).prop_map(|(f, v)| format!("{f}={v}")), 0..4)
}

#[test]
fn fuzz_configs() {
    let mut full = small_config();
    full.optim.schedule = bank_train::config::LrSchedule::Step;
    full.optim.milestones = vec![3, 6];
    full.data.mean = Some(vec![0.5]);
    full.data.std = Some(vec![0.25]);
    full.data.channels = 1;
    full.merge.enabled = true;
    full.method.loss = bank_train::config::LossKind::Softmax;
    let valid = full.to_toml().into_bytes();
    fuzz(
        "config",
        (
            prop_oneof![
                1 => bytes(300),
                4 => mutation().prop_map(move |m| m.apply(&valid, None)),
            ],
            overrides(),
        ),
        |(text, o)| check_config(&text, &o),
    );
}
