//! The failing cases of issue 12, each as a new user would meet it: diverged states are never
//! saved, resumes with changed settings are refused before anything is written, checkpoint files
//! are verified, settings impossible with the dataset are refused up front.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bank_core::MemoryBank;
use bank_train::resume::{CHANGEABLE_ON_RESUME, check_resume, config_changes};
use bank_train::{Error, TrainConfig, TrainData, TrainState, checkpoint};
use burn::backend::Flex;
use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;

use crate::step_resume::run;
use crate::{FastTrain, cifar_records, halved};

fn config(extra: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = [
        "train.epochs=1",
        "train.batch_size=8",
        "train.threads=1",
        "data.image_size=16",
        "eval.k=10",
        "eval.recompute_at_end=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &o).unwrap()
}

/// Every file of every checkpoint of the run folder, with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

// ---- case 1: only a finite state is saved; epochs count from 1 --------------------------------

/// Turns every float parameter of a module into NaN.
struct Poison;
impl<B: Backend> ModuleMapper<B> for Poison {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.mul_scalar(f32::NAN), mapper)
    }
}

#[test]
fn a_state_with_a_nan_parameter_or_bank_row_is_never_saved() {
    let cfg = config(&[]);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ckpts");
    let device = Default::default();
    let _turn = crate::backend_turn();
    let mut state = TrainState::<FastTrain>::new(&cfg, 20, &device).unwrap();
    state.epochs_done = 1;
    state.save(&dir, &cfg).unwrap();
    let good = snapshot(&dir);

    let mut broken = TrainState::<FastTrain>::new(&cfg, 20, &device).unwrap();
    (broken.epochs_done, broken.step) = (2, 7);
    broken.model = broken.model.map(&mut Poison);
    match broken.save(&dir, &cfg).unwrap_err() {
        Error::NonFiniteState { epoch, step, part } => {
            assert_eq!((epoch, step, part), (2, 7, "model parameters"));
        }
        other => panic!("expected NonFiniteState, got {other}"),
    }
    let mut broken = TrainState::<FastTrain>::new(&cfg, 20, &device).unwrap();
    broken.epochs_done = 2;
    broken.progress.batches = 3;
    let rows = broken.bank.rows();
    let nan_row = rows
        .clone()
        .slice([0..1, 0..cfg.model.dim])
        .mul_scalar(f32::INFINITY);
    let rows = rows.slice_assign([0..1, 0..cfg.model.dim], nan_row);
    broken.bank = bank_core::MemoryBankConfig::new(20, cfg.model.dim)
        .init_from_features(rows)
        .unwrap();
    let e = broken.save(&dir, &cfg).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFiniteState {
                epoch: 3,
                part: "bank rows",
                ..
            }
        ),
        "mid-epoch 3: {e}"
    );
    assert_eq!(snapshot(&dir), good, "nothing written by the refused saves");
}

#[test]
fn a_run_that_diverges_in_its_second_epoch_keeps_the_first_and_says_epoch_2() {
    // The step schedule multiplies lr by 1e32 at the start of epoch 2 (counting from 1).
    let cfg = config(&[
        "train.epochs=3",
        "optim.schedule=step",
        "optim.milestones=[1]",
        "optim.gamma=1e32",
    ]);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("diverge");
    let e = run(&dir, false, &cfg).unwrap_err();
    let epoch = match e {
        Error::NonFiniteLoss { epoch, .. } | Error::NonFiniteState { epoch, .. } => epoch,
        other => panic!("expected a non-finite error, got {other}"),
    };
    assert_eq!(epoch, 2, "{e}");
    assert!(e.to_string().contains("epoch 2"), "{e}");
    let ckpts = checkpoint::list(&dir.join("checkpoints")).unwrap();
    let names: Vec<_> = ckpts
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["epoch-0001"], "only the good epoch-1 checkpoint");
    let (bank, _) =
        MemoryBank::<Flex>::load_with(ckpts[0].join("bank.safetensors"), &Default::default())
            .unwrap();
    let rows: Vec<f32> = bank.rows().into_data().to_vec().unwrap();
    assert!(rows.iter().all(|x| x.is_finite()));
}

// ---- case 2: resumes compare the requested config with the run's -------------------------------

#[test]
fn config_changes_name_every_field_with_old_and_new_values() {
    let old = config(&[]);
    let new = config(&["model.dim=64", "train.epochs=5", "data.train_per_class=5"]);
    let changes = config_changes(&old, &new);
    let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "`data.train_per_class` was 0, now 5",
            "`model.dim` was 128, now 64",
            "`train.epochs` was 1, now 5"
        ]
    );
    let e = check_resume(&old, &new).unwrap_err().to_string();
    assert!(e.contains("`model.dim` was 128, now 64"), "{e}");
    assert!(e.contains("`data.train_per_class` was 0, now 5"), "{e}");
    assert!(!e.contains("`train.epochs` was"), "epochs may change: {e}");
    // Every changeable field may change alone; an unset optional field reads `unset`.
    check_resume(
        &old,
        &config(&[
            "train.epochs=9",
            "optim.lr=0.001",
            "eval.k=5",
            "checkpoint.every_steps=3",
            "checkpoint.every_minutes=2.5",
            "data.cache=false",
        ]),
    )
    .unwrap();
    for field in CHANGEABLE_ON_RESUME {
        assert!(field.contains('.') || *field == "name", "{field}");
    }
    let e = check_resume(&old, &config(&["data.eval_resize=20"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`data.eval_resize` was unset, now 20"), "{e}");
}

#[test]
fn a_resume_with_a_changed_model_or_data_setting_is_refused_before_anything_is_written() {
    let cfg = config(&[]);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    run(&dir, false, &cfg).unwrap();
    let before = snapshot(&dir);
    for change in [["model.dim=64"], ["data.train_per_class=5"], ["seed=3"]] {
        let e = run(&dir, true, &config(&change)).unwrap_err();
        let field = change[0].split('=').next().unwrap();
        assert!(matches!(e, Error::ResumeMismatch { .. }), "{change:?}: {e}");
        assert!(e.to_string().contains(&format!("`{field}` was")), "{e}");
        assert_eq!(
            snapshot(&dir),
            before,
            "{change:?}: the run folder is untouched"
        );
    }
    // More epochs is allowed: the run continues from its checkpoint.
    run(&dir, true, &config(&["train.epochs=2"])).unwrap();
    assert!(dir.join("checkpoints/epoch-0002").is_dir());
}

// ---- case 4: every checkpoint file is verified --------------------------------------------------

#[test]
fn a_flipped_byte_or_a_truncation_in_any_checkpoint_file_is_an_error_naming_it() {
    let cfg = config(&[]);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    run(&dir, false, &cfg).unwrap();
    let ckpt = checkpoint::latest(&dir.join("checkpoints"))
        .unwrap()
        .unwrap();
    checkpoint::verify(&ckpt).unwrap();
    let files = [
        "model.bin",
        "optim.bin",
        "bank.safetensors",
        "state.json",
        "checksums.txt",
    ];
    for file in files {
        let path = ckpt.join(file);
        let original = fs::read(&path).unwrap();
        let mut flipped = original.clone();
        flipped[original.len() / 2] ^= 0x10;
        let truncated = original[..original.len() - 3].to_vec();
        for (what, bytes) in [("flipped", flipped), ("truncated", truncated)] {
            fs::write(&path, &bytes).unwrap();
            let e = checkpoint::verify(&ckpt).unwrap_err().to_string();
            assert!(e.contains(file), "{what} {file}: {e}");
            let e = run(&dir, true, &cfg.clone()).unwrap_err().to_string();
            assert!(e.contains(file), "{what} {file}, resume: {e}");
        }
        fs::write(&path, &original).unwrap();
    }
    checkpoint::verify(&ckpt).unwrap();
}

// ---- case 3 and 5: settings and files checked against the dataset -------------------------------

fn sets(train: usize) -> TrainData {
    let (a, b) = cifar_records(train.max(1), 12);
    let a = halved(&a).select(&(0..train).collect::<Vec<_>>());
    TrainData::from_sets(&config(&[]), Arc::new(a), Arc::new(halved(&b))).unwrap()
}

#[test]
fn merging_with_one_image_and_k_beyond_the_reference_set_are_refused_before_training() {
    let root = tempfile::tempdir().unwrap();
    let cases: [(&[&str], usize, &str); 2] = [
        (&["merge.enabled=true", "eval.k=1"], 1, "merge.enabled"),
        (&["eval.k=200"], 30, "eval.k"),
    ];
    for (i, (overrides, n, field)) in cases.into_iter().enumerate() {
        let cfg = config(overrides);
        let data = sets(n);
        let e = bank_train::feasibility::check_against_data(&cfg, &data).unwrap_err();
        assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
        let dir = root.path().join(format!("run{i}"));
        let e = {
            let _turn = crate::backend_turn();
            bank_train::train::<FastTrain>(
                &cfg,
                &data,
                &bank_train::RunOptions {
                    run_dir: dir.clone(),
                    resume: false,
                },
                &Default::default(),
                &mut bank_train::NoProgress,
            )
            .unwrap_err()
        };
        assert!(e.to_string().contains(field), "{e}");
        assert!(!dir.exists(), "nothing written");
    }
    // The boundary cases train: merging with 2 images, k equal to the reference set.
    bank_train::feasibility::check_against_data(
        &config(&["merge.enabled=true", "eval.k=2"]),
        &sets(2),
    )
    .unwrap();
    bank_train::feasibility::check_against_data(&config(&["eval.k=30"]), &sets(30)).unwrap();
}

#[test]
fn a_sharded_bank_with_more_devices_than_rows_is_refused() {
    let three = r#"train.devices=["cpu", "cpu", "cpu"]"#;
    let cfg = config(&["method.bank_sharding=\"sharded\"", three, "eval.k=1"]);
    let e = bank_train::feasibility::check_against_data(&cfg, &sets(2)).unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("`method.bank_sharding`") && e.contains("2 rows") && e.contains("3 devices"),
        "{e}"
    );
    // As many rows as devices shards; a replicated bank has no such limit.
    bank_train::feasibility::check_against_data(&cfg, &sets(3)).unwrap();
    let replicated = config(&[three, "eval.k=1"]);
    bank_train::feasibility::check_against_data(&replicated, &sets(2)).unwrap();
}

#[test]
fn a_bank_that_is_not_the_datasets_is_refused_naming_the_bank_file() {
    let cfg = config(&[]);
    let data = sets(20);
    let file = Path::new("/runs/x/checkpoints/epoch-0001/bank.safetensors");
    let check = |rows, dim| {
        bank_train::feasibility::check_bank_against_data(file, (rows, dim), &cfg, &data)
    };
    check(20, 128).unwrap();
    let e = check(200, 128).unwrap_err().to_string();
    assert!(
        e.contains("bank.safetensors")
            && e.contains("200 rows")
            && e.contains("20 training images"),
        "{e}"
    );
    let e = check(20, 64).unwrap_err().to_string();
    assert!(
        e.contains("64 columns") && e.contains("model.dim is 128"),
        "{e}"
    );
    // kNN itself refuses labels that do not match its rows instead of indexing past them.
    let bank = bank_core::MemoryBankConfig::new(5, 4)
        .init::<Flex>(&Default::default())
        .unwrap();
    let queries = Tensor::<Flex, 2>::ones([3, 4], &Default::default());
    let e = bank_train::knn::knn_accuracy(&bank, &[0, 1, 0], queries, &[0, 1, 1], 2, 2, 0.1)
        .unwrap_err();
    assert!(e.to_string().contains("3 reference labels for 5"), "{e}");
}

/// The step's memory bound against hand-computed bytes, and a view size no machine here holds
/// refused naming `data.image_size`, the sizes a recipe uses accepted.
#[test]
fn a_step_larger_than_the_machines_memory_is_refused_naming_the_image_size() {
    use bank_train::feasibility::{check_step_memory, step_memory_lower_bound};
    let load = |o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(None, &o).unwrap()
    };
    // Small CNN, 32 px, 3 channels: 256 training views of (3 + 32) × 32² floats; the default
    // eval batch (256) is not larger.
    let c = load(&[
        "train.batch_size=128",
        "train.views=2",
        "data.image_size=32",
    ]);
    // The head: 128 backbone features × 128 dimensions, weights, gradient and momentum.
    let head = 128 * 128 * 3 * 4;
    assert_eq!(
        step_memory_lower_bound(&c).unwrap(),
        256 * 35 * 1024 * 4 + head
    );
    // An ImageNet stem halves the side (224 → 112); an eval batch of 512 is the larger.
    let c = load(&[
        "model.arch=resnet18_imagenet",
        "train.batch_size=64",
        "train.views=1",
        "eval.batch_size=512",
        "data.image_size=224",
    ]);
    let per_view = 3 * 224 * 224 + 64 * 112 * 112;
    assert_eq!(
        step_memory_lower_bound(&c).unwrap(),
        512 * per_view * 4 + 512 * 128 * 3 * 4
    );
    let gib8 = 8u64 << 30;
    check_step_memory(&c, gib8).unwrap();
    let c = load(&["data.image_size=3200"]);
    let e = check_step_memory(&c, gib8).unwrap_err().to_string();
    assert!(
        e.contains("data.image_size") && e.contains("3200") && e.contains("8.0 GiB"),
        "{e}"
    );
    // A head of 10⁸ dimensions (15 GB of weights alone) is refused naming model.dim.
    let e = check_step_memory(&load(&["model.dim=100000000"]), gib8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`model.dim`") && e.contains("100000000"), "{e}");
    // Sizes beyond 64 bits saturate instead of wrapping round to a small number (which let a
    // side of 2⁶³ through to a panic), and such sides are refused by the config anyway.
    let mut c = load(&[]);
    c.data.image_size = Some(1 << 40);
    assert_eq!(step_memory_lower_bound(&c).unwrap(), u64::MAX);
    let e = TrainConfig::load(None, &["data.image_size=9223372036854775807".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data.image_size") && e.contains("at most 16384"),
        "{e}"
    );
}

/// NCE drawing more noise rows than the bank has, and the retrieval protocol with one test
/// image, are refused before training, naming the setting; the boundary values pass.
#[test]
fn nce_noise_beyond_the_bank_and_retrieval_of_one_test_image_are_refused() {
    use bank_train::feasibility::check_against_data;
    let nce = |noise: usize| config(&["method.loss=nce", &format!("method.nce_noise={noise}")]);
    let e = check_against_data(&nce(31), &sets(30))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`method.nce_noise`") && e.contains("31") && e.contains("30 rows"),
        "{e}"
    );
    check_against_data(&nce(30), &sets(30)).unwrap();
    let (a, b) = cifar_records(4, 12);
    let with_tests = |n: usize| {
        let test = halved(&b).select(&(0..n).collect::<Vec<_>>());
        TrainData::from_sets(&config(&[]), Arc::new(halved(&a)), Arc::new(test)).unwrap()
    };
    let retrieval = config(&["eval.protocols=[\"retrieval\"]", "eval.k=1"]);
    let e = check_against_data(&retrieval, &with_tests(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`eval.protocols`") && e.contains("has 1"), "{e}");
    check_against_data(&retrieval, &with_tests(2)).unwrap();
}
