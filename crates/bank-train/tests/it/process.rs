//! The `bank-train` binary as a user runs it: SIGKILLed at random moments and in the middle of
//! checkpoint writes, then resumed, it ends with the metrics and the bank of an uninterrupted run
//! (bit for bit, on flex). Also: logs on a pipe carry no colour codes, a resume with a changed
//! model is refused leaving the run folder untouched, `eval` against data that is not the
//! run's is an error, not a panic, and `--variant` trains one arm of the ablation.
//!
//! The suite runs a small version (a few kills, seconds); `cargo xtask soak` runs the same test
//! with 20 kills on a larger subset (`MEMBANK_SOAK_KILLS`, `MEMBANK_SOAK_EPOCHS`,
//! `MEMBANK_SOAK_PER_CLASS`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bank_data::Dataset;
use bank_train::checkpoint;
use bank_train::metrics::Summary;
use bank_train::protocols::ProtocolReport;

use crate::{cifar_records, final_bank, metrics};

const BIN: &str = env!("CARGO_BIN_EXE_bank-train");

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `train/<class>/` and `test/<class>/` PNGs (16×16 crops of real CIFAR-10 images).
fn image_folder(root: &Path, per_class: usize, test_per_class: usize) {
    let (set, _) = cifar_records(1_000, 0);
    let names = set.class_names().to_vec();
    let mut written = vec![0usize; names.len()];
    for i in 0..set.len() {
        let label = set.label(i).unwrap() as usize;
        let n = written[label];
        if n == per_class + test_per_class {
            continue;
        }
        let split = if n < per_class { "train" } else { "test" };
        let loaded = set.image(i).unwrap();
        let img = loaded.view();
        let mut px = Vec::with_capacity(16 * 16 * 3);
        for y in 8..24 {
            for x in 8..24 {
                px.extend((0..3).map(|c| img.at(y, x, c)));
            }
        }
        let dir = root.join(split).join(&names[label]);
        fs::create_dir_all(&dir).unwrap();
        image::RgbImage::from_raw(16, 16, px)
            .unwrap()
            .save(dir.join(format!("{i:04}.png")))
            .unwrap();
        written[label] += 1;
    }
}

struct Setup {
    _root: tempfile::TempDir,
    images: PathBuf,
    runs: PathBuf,
    overrides: Vec<String>,
}

impl Setup {
    fn new(epochs: usize, per_class: usize) -> Self {
        let root = tempfile::tempdir().unwrap();
        let images = root.path().join("images");
        image_folder(&images, per_class, 3);
        let overrides = [
            "data.dataset=image_folder".to_string(),
            format!("data.path=\"{}\"", images.display()),
            "data.image_size=16".into(),
            "data.cache=false".into(),
            format!("train.epochs={epochs}"),
            "train.batch_size=8".into(),
            "train.views=2".into(),
            "train.threads=1".into(),
            "method.consistency=0.5".into(),
            "merge.enabled=true".into(),
            "merge.schedule.start_epoch=0".into(),
            "merge.schedule.min_similarity=0.0".into(),
            "eval.k=5".into(),
            "eval.recompute_at_end=false".into(),
            "checkpoint.every_steps=1".into(),
            "checkpoint.keep=2".into(),
        ]
        .to_vec();
        Self {
            runs: root.path().join("runs"),
            images,
            _root: root,
            overrides,
        }
    }

    fn train(&self, name: &str, resume: bool, extra: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["train", "--runs"])
            .arg(&self.runs)
            .args(["--name", name]);
        if resume {
            cmd.arg("--resume");
        }
        for o in self
            .overrides
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            cmd.args(["--set", o]);
        }
        cmd.env("RUST_LOG", "info");
        cmd
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.runs.join(name)
    }
}

/// Runs `cmd`, which must fail with exit status 1 (an error, not a panic); its stderr.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn ok(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn summary(dir: &Path) -> Summary {
    let mut s: Summary =
        serde_json::from_slice(&fs::read(dir.join("summary.json")).unwrap()).unwrap();
    (s.images_per_s, s.views_per_s, s.name) = (0.0, 0.0, String::new());
    s
}

/// A temporary checkpoint folder (a write in progress) under `dir`.
fn write_in_progress(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with('.') && name.ends_with(".tmp")
        })
    })
}

/// A small deterministic generator for the kill times.
struct Lcg(u64);
impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the kills did.
#[derive(Debug, Default)]
struct Kills {
    attempts: usize,
    landed: usize,
    during_write: usize,
    /// The newest checkpoint after each kill (how far the run had come).
    positions: Vec<String>,
}

/// Starts the run with `--resume` again and again and SIGKILLs it: on even attempts after a
/// random delay, on odd ones as soon as a checkpoint write is in progress. `typical` is the
/// duration of an uninterrupted run.
fn kill_repeatedly(setup: &Setup, name: &str, kills: usize, typical: Duration, seed: u64) -> Kills {
    let mut rng = Lcg(seed);
    let mut report = Kills::default();
    let ckpts = setup.run_dir(name).join("checkpoints");
    // Enough attempts to land `kills` kills, at least one of them inside a checkpoint write.
    while report.landed < kills || (report.during_write == 0 && report.attempts < kills + 8) {
        report.attempts += 1;
        if report.attempts > 3 * kills + 8 {
            break;
        }
        let mut child: Child = setup
            .train(name, true, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let at_write = report.attempts % 2 == 0 || report.landed >= kills;
        // Short delays: a kill before the first checkpoint is a kill too, and every run must leave
        // room for all the kills to land before it ends.
        // (Delays of 0.05–0.55/kills of a run: 20 kills then span about one run's worth of
        // work, so the run does not finish before they land.)
        let delay = typical.mul_f64(0.05 + 0.5 * rng.unit() / kills as f64);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let due = if at_write {
                write_in_progress(&ckpts) || started.elapsed() > typical * 2
            } else {
                started.elapsed() >= delay
            };
            if due {
                break;
            }
            // Poll often enough to catch a write (a few file writes and fsyncs long).
            std::thread::sleep(Duration::from_micros(if at_write { 100 } else { 1000 }));
        }
        let finished = child.try_wait().unwrap();
        if finished.is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            report.landed += 1;
            report.during_write += usize::from(write_in_progress(&ckpts));
            let newest = checkpoint::latest(&ckpts).unwrap();
            report.positions.push(newest.map_or("none".into(), |p| {
                p.file_name().unwrap().to_string_lossy().into_owned()
            }));
        } else if setup.run_dir(name).join("summary.json").is_file() {
            break; // The run finished before it could be killed.
        }
    }
    report
}

/// Runs the kill test: an uninterrupted reference, then a run killed `kills` times and resumed.
fn kill_test(kills: usize, epochs: usize, per_class: usize) {
    let setup = Setup::new(epochs, per_class);
    let started = Instant::now();
    let out = ok(
        setup.train("straight", false, &[]).output().unwrap(),
        "reference run",
    );
    let typical = started.elapsed();
    // Colour codes only on a terminal: here stdout and stderr are pipes.
    assert!(!out.stderr.is_empty(), "RUST_LOG=info logs something");
    for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !bytes.contains(&0x1b),
            "ANSI escape in {what}: {}",
            String::from_utf8_lossy(bytes)
        );
    }

    let report = kill_repeatedly(&setup, "killed", kills, typical, 0x5eed ^ kills as u64);
    ok(
        setup.train("killed", true, &[]).output().unwrap(),
        "final resume",
    );
    eprintln!(
        "kill test: {} kills landed of {} starts ({} during a checkpoint write); reference run {:.1} s, all {:.1} s",
        report.landed,
        report.attempts,
        report.during_write,
        typical.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "newest checkpoint after each kill: {}",
        report.positions.join(", ")
    );
    assert!(report.landed >= kills.min(2), "{report:?}");
    assert!(
        report.during_write >= 1,
        "no kill landed inside a checkpoint write: {report:?}"
    );
    let (a, b) = (setup.run_dir("straight"), setup.run_dir("killed"));
    assert_eq!(metrics(&b), metrics(&a), "metrics after {report:?}");
    assert!(
        final_bank(&b) == final_bank(&a),
        "final bank after {report:?}"
    );
    assert_eq!(summary(&b), summary(&a));
}

/// `eval --set` results go to a folder of their own with their settings recorded, never mixed
/// into the run's own; a labelled run is evaluated on another labelled set (`data.eval_path`)
/// when asked, a missing one is an error naming the field, and an `eval.k` above the reference
/// images is refused as training refuses it.
#[test]
fn eval_with_other_settings_or_data_keeps_them_apart_and_checks_them() {
    let setup = Setup::new(1, 2);
    ok(setup.train("r", false, &[]).output().unwrap(), "run");
    let dir = setup.run_dir("r");
    let eval = |set: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["eval", "--run"]).arg(&dir);
        for s in set {
            cmd.args(["--set", s]);
        }
        cmd
    };
    let settings = |folder: &Path| {
        let text = fs::read_to_string(folder.join("eval.json")).unwrap();
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        let s = &report["settings"];
        let count = |k: &str| s[k].as_u64().unwrap();
        (count("k"), count("references"), count("queries"))
    };
    let own = dir.join("eval/epoch-0001");
    ok(eval(&[]).output().unwrap(), "eval");
    assert_eq!(settings(&own), (5, 20, 30));
    ok(eval(&["eval.k=3"]).output().unwrap(), "eval with k = 3");
    assert_eq!(settings(&own.join("eval.k=3")), (3, 20, 30));
    assert_eq!(
        settings(&own),
        (5, 20, 30),
        "the run's own results were replaced"
    );

    let other = setup.images.with_file_name("other");
    image_folder(&other, 4, 1);
    let path = format!("data.eval_path=\"{}\"", other.display());
    let out = ok(eval(&[&path]).output().unwrap(), "eval on another set");
    assert!(String::from_utf8_lossy(&out.stdout).contains("data.eval_path"));
    let folder = fs::read_dir(&own)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("data.eval_path")
        })
        .unwrap();
    assert_eq!(settings(&folder), (5, 40, 10));
    // The same numbers of other images (a test image replaced by another): the next
    // protocol's results are not merged with the earlier kNN, which measured other images.
    let cat = fs::read_dir(other.join("test/cat"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::rename(&cat, other.join("test/cat/replaced.png")).unwrap();
    let linear = ok(
        eval(&[&path])
            .args(["--protocol", "linear"])
            .output()
            .unwrap(),
        "linear on the changed set",
    );
    let said = String::from_utf8_lossy(&linear.stdout);
    assert!(said.contains("replaced, not merged"), "{said}");
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(folder.join("eval.json")).unwrap()).unwrap();
    assert!(
        report["knn_bank"].is_null() && !report["linear_embedding"].is_null(),
        "{report}"
    );

    // The same setting spelled another way files its results in the same folder: the last of a
    // repeated field wins (as it takes effect), a relative path is the absolute one.
    ok(
        eval(&["eval.k=4", "eval.k=3"]).output().unwrap(),
        "k given twice",
    );
    assert_eq!(settings(&own.join("eval.k=3")), (3, 20, 30));
    assert!(!own.join("eval.k=3,eval.k=4").exists() && !own.join("eval.k=4,eval.k=3").exists());
    // The run's own value is the run's own evaluation, not another setting.
    ok(eval(&["eval.k=5"]).output().unwrap(), "k as the run has it");
    assert!(!own.join("eval.k=5").exists());
    assert_eq!(settings(&own), (5, 20, 30));
    let relative = eval(&["data.eval_path=other"])
        .current_dir(other.parent().unwrap())
        .output()
        .unwrap();
    ok(relative, "eval on another set named relative");
    let named = fs::read_dir(&own)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("data.eval_path")
        })
        .count();
    assert_eq!(named, 1, "one folder for one set, however it was named");

    let err = fails(&mut eval(&["data.eval_path=\"/nonexistent/labelled\""]));
    assert!(
        err.contains("data.eval_path") && err.contains("no such file"),
        "{err}"
    );
    let err = fails(&mut eval(&["eval.k=1000"]));
    assert!(
        err.contains("eval.k") && err.contains("20 labelled reference"),
        "{err}"
    );
    // Not when kNN is not asked for: the linear probe has no k.
    let linear = eval(&["eval.k=1000", "eval.linear.epochs=2"])
        .args(["--protocol", "linear"])
        .output()
        .unwrap();
    ok(linear, "the linear probe with an eval.k kNN could not take");
}

/// Ctrl-C (SIGINT) while a run trains, with no step checkpoints configured: the run stops after
/// the step it is in, writes a checkpoint there, exits with 130 naming it and how to go on, and
/// `--resume` from it ends bit for bit where an uninterrupted run ends.
#[test]
fn ctrl_c_stops_with_a_checkpoint_and_the_resume_matches_an_uninterrupted_run() {
    let setup = Setup::new(2, 6);
    let no_steps = ["checkpoint.every_steps=0"];
    let started = Instant::now();
    ok(
        setup.train("whole", false, &no_steps).output().unwrap(),
        "reference",
    );
    let typical = started.elapsed();
    // A signal that comes after the run has ended proves nothing: try earlier each time.
    for (attempt, share) in [0.3, 0.1, 0.0].into_iter().enumerate() {
        let name = format!("stopped{attempt}");
        let mut child = setup
            .train(&name, false, &no_steps)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `config.toml` appears as training starts, after the Ctrl-C handler is in place.
        let config = setup.run_dir(&name).join("config.toml");
        while !config.exists() && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(typical.mul_f64(share));
        let sent = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(0) {
            continue; // Finished before the signal.
        }
        assert!(sent.success());
        assert_eq!(out.status.code(), Some(130), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("stopped on request") && err.contains("--resume"),
            "{err}"
        );
        let newest = checkpoint::latest(&setup.run_dir(&name).join("checkpoints"))
            .unwrap()
            .expect("a checkpoint written at the stop");
        assert!(err.contains(&newest.display().to_string()), "{err}");
        let said = String::from_utf8_lossy(&out.stdout);
        eprintln!("stopped at {} after: {said}", newest.display());
        // What a second Ctrl-C in the middle of a checkpoint write would leave: removed by the
        // next checkpoint the run writes.
        let leftover = newest.with_file_name(".epoch-0009-batch-000001.tmp");
        fs::create_dir_all(leftover.join(".model.bin.1.tmp")).unwrap();
        ok(
            setup.train(&name, true, &no_steps).output().unwrap(),
            "resume after Ctrl-C",
        );
        assert!(!leftover.exists(), "an abandoned checkpoint folder stayed");
        let (a, b) = (setup.run_dir("whole"), setup.run_dir(&name));
        assert_eq!(metrics(&b), metrics(&a));
        assert!(final_bank(&b) == final_bank(&a), "final bank");
        assert_eq!(summary(&b), summary(&a));
        return;
    }
    panic!("every run ended before its Ctrl-C arrived");
}

#[test]
fn sigkilled_at_random_moments_and_resumed_the_binary_matches_an_uninterrupted_run() {
    kill_test(
        env_or("MEMBANK_SOAK_KILLS", 4),
        env_or("MEMBANK_SOAK_EPOCHS", 2),
        env_or("MEMBANK_SOAK_PER_CLASS", 3),
    );
}

#[test]
fn the_binary_refuses_a_changed_resume_untouched_and_eval_against_other_data() {
    let setup = Setup::new(1, 2);
    ok(setup.train("r", false, &[]).output().unwrap(), "run");
    let dir = setup.run_dir("r");
    let config_before = fs::read(dir.join("config.toml")).unwrap();
    let out = setup.train("r", true, &["model.dim=64"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("`model.dim` was 128, now 64"), "{err}");
    assert_eq!(fs::read(dir.join("config.toml")).unwrap(), config_before);

    // A `--checkpoint` that does not exist is named as such (not as a checkpoint missing its
    // checksum list).
    let missing = dir.join("checkpoints").join("epoch-0009");
    let err = fails(
        Command::new(BIN)
            .args(["eval", "--run"])
            .arg(&dir)
            .arg("--checkpoint")
            .arg(&missing),
    );
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("no such checkpoint folder"),
        "{err}"
    );
    // A run folder that does not exist is named as such; one without its config.toml is not a
    // run folder, in one line, with the fix when it is the run's checkpoints folder.
    let (nowhere, empty) = (setup.run_dir("nowhere"), setup.run_dir("empty"));
    fs::create_dir_all(&empty).unwrap();
    let checkpoints = dir.join("checkpoints");
    let export: &[&str] = &["export", "--split", "bank", "--out", "x", "--run"];
    for (args, run, want) in [
        (&["eval", "--run"][..], &nowhere, "no such run folder"),
        (export, &nowhere, "no such run folder"),
        (
            &["eval", "--run"][..],
            &empty,
            "not a run folder: it holds no config.toml",
        ),
        (
            &["eval", "--run"][..],
            &checkpoints,
            "name the run, its parent",
        ),
    ] {
        let out = Command::new(BIN).args(args).arg(run).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }

    // Images removed from the data folder after training: the bank has more rows than the data.
    let removed = fs::read_dir(setup.images.join("train/cat"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    fs::remove_file(removed.path()).unwrap();
    let err = fails(Command::new(BIN).args(["eval", "--run"]).arg(&dir));
    assert!(
        err.contains("differs from what this run trained on")
            && err.contains("20 images, the data now has 19"),
        "{err}"
    );
    // A run without the record of its images (trained before it was kept) still gets the
    // bank's row count checked.
    fs::remove_file(dir.join("data.json")).unwrap();
    let err = fails(Command::new(BIN).args(["eval", "--run"]).arg(&dir));
    assert!(
        err.contains("bank.safetensors")
            && err.contains("20 rows")
            && err.contains("19 training images"),
        "{err}"
    );
}

/// Other images of the same number (one moved to another class) are refused by a resume, `eval`
/// and `export`, leaving the run as it was; the same images in a moved folder are accepted
/// through `--set data.path=…`, which `eval` allows and a resume accepts.
#[test]
fn other_images_of_the_same_number_are_refused_and_a_moved_folder_is_not() {
    let setup = Setup::new(1, 2);
    ok(setup.train("r", false, &[]).output().unwrap(), "run");
    let dir = setup.run_dir("r");
    let before = fs::read(dir.join("metrics.jsonl")).unwrap();
    let cat = setup.images.join("train/cat");
    let moved = fs::read_dir(&cat)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let dog = setup.images.join("train/dog");
    fs::rename(cat.join(&moved), dog.join(&moved)).unwrap();
    let said = |err: &str| {
        err.contains("differs from what this run trained on")
            && err.contains("of the 20 images are not the ones")
    };
    let err = fails(&mut setup.train("r", true, &["train.epochs=2"]));
    assert!(said(&err), "{err}");
    let err = fails(Command::new(BIN).args(["eval", "--run"]).arg(&dir));
    assert!(said(&err), "{err}");
    let out = dir.join("exported");
    let err = fails(
        Command::new(BIN)
            .args(["export", "--split", "bank", "--out"])
            .arg(&out)
            .arg("--run")
            .arg(&dir),
    );
    assert!(said(&err), "{err}");
    assert_eq!(fs::read(dir.join("metrics.jsonl")).unwrap(), before);
    assert!(!out.with_extension("safetensors").exists());

    // Put back, then the whole folder moved: the run's absolute data.path is gone.
    fs::rename(dog.join(&moved), cat.join(&moved)).unwrap();
    let elsewhere = setup.images.with_file_name("moved");
    fs::rename(&setup.images, &elsewhere).unwrap();
    let err = fails(Command::new(BIN).args(["eval", "--run"]).arg(&dir));
    assert!(err.contains("data.path"), "{err}");
    let path = format!("data.path=\"{}\"", elsewhere.display());
    let eval = |set: &str| {
        Command::new(BIN)
            .args(["eval", "--run"])
            .arg(&dir)
            .args(["--set", &path, "--set", set])
            .output()
            .unwrap()
    };
    ok(eval("eval.k=3"), "eval of the moved folder");
    // Only where the data is and how to evaluate may be set.
    let out = eval("model.dim=64");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("model.dim") && err.contains("may set only"),
        "{err}"
    );
    ok(
        setup
            .train("r", true, &[&path, "train.epochs=2"])
            .output()
            .unwrap(),
        "resume from the moved folder",
    );
    assert_eq!(metrics(&dir).len(), 2);
}

#[test]
fn the_variant_flag_trains_one_arm_of_the_ablation_and_refuses_unknown_ones() {
    // The recipe and its overrides train the full method (K = 3, λ = 0.3: not the variants'
    // defaults, merging); `--variant vanilla` turns all three off, `--variant k3-consistency`
    // only merging, keeping the recipe's K and λ; the other overrides still apply.
    let setup = Setup::new(1, 2);
    let recipe = ["train.views=3", "method.consistency=0.3", "eval.k=3"];
    for (variant, want) in [
        ("vanilla", (1, 0.0, false)),
        ("k3-consistency", (3, 0.3, false)),
        ("views", (3, 0.0, false)),
    ] {
        let mut cmd = setup.train(variant, false, &recipe);
        ok(cmd.args(["--variant", variant]).output().unwrap(), variant);
        let saved = setup.run_dir(variant).join("config.toml");
        let config = bank_train::TrainConfig::load(Some(&saved), &[]).unwrap();
        let got = (
            config.train.views,
            config.method.consistency,
            config.merge.enabled,
        );
        assert_eq!(got, want, "{variant}");
        assert_eq!(config.eval.k, 3, "{variant}: the other overrides apply");
    }
    // Without `--name` the run is named after the recipe and the variant.
    let mut cmd = Command::new(BIN);
    cmd.args(["train", "--runs"]).arg(&setup.runs);
    for o in &setup.overrides {
        cmd.args(["--set", o]);
    }
    // The defaults train one view, so `k2` names the K = 2 arm; the folder has its name.
    ok(cmd.args(["--variant", "k2"]).output().unwrap(), "unnamed");
    let named = setup
        .runs
        .join(format!("{}-views", bank_train::TrainConfig::default().name));
    assert!(named.join("summary.json").exists(), "{}", named.display());
    // With a K = 3 recipe, `k2` is not its arm: refused, saying how to train K = 2.
    let out = setup
        .train("k2", false, &recipe)
        .args(["--variant", "k2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("K = 3") && err.contains("train.views=2"),
        "{err}"
    );
    assert!(!setup.run_dir("k2").exists());

    let out = setup
        .train("bad", false, &[])
        .args(["--variant", "npid"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("npid") && err.contains("vanilla"), "{err}");
    assert!(!setup.run_dir("bad").exists());
}

/// A `--data` folder that does not exist (a typo) is refused, named, and not created: nothing is
/// downloaded into it and no run folder is made. The error is one line, without the stack
/// backtrace `RUST_BACKTRACE=1` asks of panics, and the exit code is 1.
#[test]
fn the_binary_refuses_a_data_folder_that_does_not_exist() {
    let root = tempfile::tempdir().unwrap();
    let (missing, runs) = (root.path().join("no-such-data"), root.path().join("runs"));
    let err = fails(
        Command::new(BIN)
            .args(["train", "--runs"])
            .arg(&runs)
            .arg("--data")
            .arg(&missing)
            .env_remove("MEMBANK_DATA")
            .env("RUST_BACKTRACE", "1")
            .env_remove("RUST_LIB_BACKTRACE"),
    );
    let named = missing.display().to_string();
    assert!(err.contains("--data") && err.contains(&named), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!missing.exists(), "the missing folder was created");
    assert!(!runs.exists(), "a run folder was created");
}

/// An existing run folder without `--resume` is refused before the data is touched: here the data
/// folder does not exist either, and the error names the run, not the data.
#[test]
fn the_binary_refuses_an_existing_run_before_reading_the_data() {
    let root = tempfile::tempdir().unwrap();
    let (missing, runs) = (root.path().join("no-such-data"), root.path().join("runs"));
    let run = runs.join("taken");
    fs::create_dir_all(&run).unwrap();
    fs::write(run.join("notes.txt"), "mine").unwrap();
    let err = fails(
        Command::new(BIN)
            .args(["train", "--name", "taken", "--runs"])
            .arg(&runs)
            .arg("--data")
            .arg(&missing)
            .env_remove("MEMBANK_DATA"),
    );
    assert!(
        err.contains("already exists") && err.contains("--resume"),
        "{err}"
    );
    assert!(!err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(
        fs::read_dir(&run).unwrap().count(),
        1,
        "the folder was written to"
    );
    assert_eq!(fs::read(run.join("notes.txt")).unwrap(), b"mine");
}

/// A run stopped before its first checkpoint (only `config.toml` written) resumes with the
/// configuration it was started with, not the defaults, when `--resume` is given without it.
#[test]
fn a_run_without_a_checkpoint_resumes_with_its_own_config() {
    let setup = Setup::new(1, 2);
    let dir = setup.run_dir("early");
    fs::create_dir_all(&dir).unwrap();
    let mut overrides = setup.overrides.clone();
    overrides.push("name=\"early\"".into());
    let config = bank_train::TrainConfig::load(None, &overrides).unwrap();
    fs::write(dir.join("config.toml"), config.to_toml()).unwrap();
    let out = Command::new(BIN)
        .args(["train", "--name", "early", "--resume", "--runs"])
        .arg(&setup.runs)
        .arg("--data")
        .arg(&setup.images)
        .output()
        .unwrap();
    ok(out, "resume");
    let mut saved = bank_train::TrainConfig::load(Some(&dir.join("config.toml")), &[]).unwrap();
    // The run records its resolved config: the normalisation measured on the images.
    assert!(saved.data.mean.is_some() && saved.data.std.is_some());
    (saved.data.mean, saved.data.std) = (None, None);
    assert_eq!(saved, config, "config.toml changed");
    // 10 classes × 2 images, not CIFAR-10.
    assert_eq!(summary(&dir).train_images, 20, "trained on other data");
}

/// `--devices` with an override it contradicts (`--set train.devices=[\"cpu\"]`) is refused,
/// naming both, before any folder is made.
#[test]
fn an_option_that_contradicts_an_override_is_refused() {
    let setup = Setup::new(1, 2);
    let err = fails(
        setup
            .train("clash", false, &["train.devices=[\"cpu\"]"])
            .args(["--devices", "cpu,cpu"]),
    );
    assert!(
        err.contains("train.devices=[\"cpu\"]") && err.contains("(--devices)"),
        "{err}"
    );
    assert!(!setup.runs.exists(), "a folder was made");
}

/// A `--config` file given with `--resume` that differs from the run's `config.toml` is ignored
/// (the run keeps its configuration), with a warning naming the field; the same file gives no
/// warning. A `--resume` of a run that does not exist says so, naming the folder.
#[test]
fn a_resume_warns_when_its_config_file_differs_from_the_run() {
    let setup = Setup::new(1, 2);
    let file = setup.runs.parent().unwrap().join("recipe.toml");
    fs::write(&file, "[optim]\nlr = 0.03\n").unwrap();
    let run = |resume: bool| {
        let mut cmd = setup.train("r", resume, &["checkpoint.every_steps=0"]);
        let out = cmd.arg("--config").arg(&file).output().unwrap();
        ok(out, "train")
    };
    let first = run(true);
    let said = String::from_utf8_lossy(&first.stdout);
    let dir = setup.run_dir("r");
    assert!(
        said.contains(&format!("{} does not exist", dir.display())),
        "{said}"
    );
    let quiet = run(true);
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("differs from the run"),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    fs::write(&file, "[optim]\nlr = 0.05\n").unwrap();
    let warned = run(true);
    let err = String::from_utf8_lossy(&warned.stderr);
    assert!(
        err.contains("warning")
            && err.contains("recipe.toml")
            && err.contains("`optim.lr` (run 0.03, file 0.05)"),
        "{err}"
    );
    let saved = bank_train::TrainConfig::load(Some(&dir.join("config.toml")), &[]).unwrap();
    assert_eq!(saved.optim.lr, 0.03, "the run's config changed");
}

/// `eval` writes one folder per checkpoint: evaluating an older checkpoint leaves the newest's
/// results alone, and a second protocol on the same checkpoint keeps the first one's result. A
/// damaged `eval.json` is refused, named, before anything is computed, and left as it was.
#[test]
fn eval_keeps_every_checkpoint_and_protocol_it_measured() {
    let setup = Setup::new(2, 2);
    ok(setup.train("e", false, &[]).output().unwrap(), "run");
    let dir = setup.run_dir("e");
    let mut ckpts: Vec<PathBuf> = fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    ckpts.sort();
    assert_eq!(ckpts.len(), 2, "{ckpts:?}");
    let eval = |extra: &[&std::ffi::OsStr]| {
        let out = Command::new(BIN)
            .args(["eval", "--run"])
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap();
        ok(out, "eval")
    };
    let report = |ckpt: &Path| -> serde_json::Value {
        let file = dir
            .join("eval")
            .join(ckpt.file_name().unwrap())
            .join("eval.json");
        serde_json::from_slice(&fs::read(file).unwrap()).unwrap()
    };
    eval(&[]);
    let newest = report(&ckpts[1]);
    assert!(
        newest["knn_bank"].is_object() && newest["retrieval"].is_null(),
        "{newest}"
    );
    eval(&["--protocol".as_ref(), "retrieval".as_ref()]);
    let both = report(&ckpts[1]);
    assert_eq!(
        both["knn_bank"], newest["knn_bank"],
        "the kNN result was lost"
    );
    assert!(both["retrieval"].is_object(), "{both}");
    assert!(
        dir.join("eval")
            .join(ckpts[1].file_name().unwrap())
            .join("retrieval.png")
            .exists()
    );
    eval(&["--checkpoint".as_ref(), ckpts[0].as_os_str()]);
    assert!(report(&ckpts[0])["knn_bank"].is_object());
    assert_eq!(
        report(&ckpts[1]),
        both,
        "the newest checkpoint's results changed"
    );

    let file = dir
        .join("eval")
        .join(ckpts[1].file_name().unwrap())
        .join("eval.json");
    fs::write(&file, b"{\"knn_bank\": 3").unwrap();
    let err = fails(Command::new(BIN).args(["eval", "--run"]).arg(&dir));
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"{\"knn_bank\": 3");
}

/// Views too large for this machine's memory are refused before the data is read and before a
/// run folder is made (they were killed by the out-of-memory killer, without a message).
#[test]
fn views_too_large_for_the_machine_are_refused_before_any_work() {
    let setup = Setup::new(1, 2);
    let err = fails(&mut setup.train("huge", false, &["data.image_size=100000"]));
    assert!(
        err.contains("data.image_size") && err.contains("GiB"),
        "{err}"
    );
    assert!(
        !err.contains("indexed image tree"),
        "the data was read: {err}"
    );
    assert!(!setup.runs.exists(), "a folder was made");
}

/// `eval` and `export` refuse a `--checkpoint` of another run (one with the same settings but
/// its name, which a resume could change) and a checkpoint written under another config than
/// the run's `config.toml` (here edited to another seed), naming both; `export` refuses an
/// earlier export before it reads anything.
#[test]
fn eval_and_export_refuse_a_checkpoint_of_another_run() {
    let setup = Setup::new(1, 2);
    ok(setup.train("a", false, &[]).output().unwrap(), "a");
    ok(setup.train("b", false, &[]).output().unwrap(), "b");
    let first = |run: &str| {
        let mut c: Vec<PathBuf> = fs::read_dir(setup.run_dir(run).join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        c.sort();
        c.remove(0)
    };
    let (other, own) = (first("b"), first("a"));
    let out_file = setup.runs.join("x.safetensors");
    let export: &[&str] = &["export", "--split", "bank", "--out"];
    let refuse = |args: &[&str], ckpt: &Path| {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        if args.len() > 1 {
            cmd.arg(&out_file);
        }
        fails(
            cmd.arg("--run")
                .arg(setup.run_dir("a"))
                .arg("--checkpoint")
                .arg(ckpt),
        )
    };
    for args in [&["eval"][..], export] {
        let err = refuse(args, &other);
        assert!(
            err.contains("not a checkpoint of run") && err.contains(&other.display().to_string()),
            "{args:?}: {err}"
        );
    }
    let config = setup.run_dir("a").join("config.toml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, text.replace("seed = 0", "seed = 1")).unwrap();
    for args in [&["eval"][..], export] {
        let err = refuse(args, &own);
        assert!(
            err.contains("does not match checkpoint")
                && err.contains(&own.display().to_string())
                && err.contains("`seed` is 0 in the checkpoint, 1 in the run")
                && !err.contains("resume"),
            "{args:?}: {err}"
        );
    }
    fs::write(&config, text).unwrap();
    // The folder of checkpoints is not one; a bare name is looked up among the run's.
    let err = refuse(&["eval"], &setup.run_dir("a").join("checkpoints"));
    assert!(err.contains("name one of them"), "{err}");
    assert!(!setup.run_dir("a").join("eval").exists());
    assert!(!out_file.exists());
    let bare = own.file_name().unwrap();
    assert!(!Path::new(bare).exists());
    let eval = Command::new(BIN)
        .args(["eval", "--run"])
        .arg(setup.run_dir("a"))
        .arg("--checkpoint")
        .arg(bare)
        .output()
        .unwrap();
    ok(eval, "eval of a checkpoint named bare");
    assert!(
        setup
            .run_dir("a")
            .join("eval")
            .join(bare)
            .join("eval.json")
            .is_file()
    );
    // An earlier export is named before the data is read (here the data is gone).
    fs::write(&out_file, b"earlier").unwrap();
    fs::remove_dir_all(&setup.images).unwrap();
    let err = fails(
        Command::new(BIN)
            .args(export)
            .arg(&out_file)
            .arg("--run")
            .arg(setup.run_dir("a")),
    );
    assert!(err.contains(&out_file.display().to_string()), "{err}");
    assert!(!err.contains("images"), "the data was read first: {err}");
    assert_eq!(fs::read(&out_file).unwrap(), b"earlier");
}

/// A `--runs` that is a file is refused naming it before the data is read (here the data folder
/// does not exist either), and the file is left as it was.
#[test]
fn a_runs_folder_that_is_a_file_is_refused_before_the_data_is_read() {
    let root = tempfile::tempdir().unwrap();
    let runs = root.path().join("runs");
    fs::write(&runs, b"mine").unwrap();
    let err = fails(
        Command::new(BIN)
            .args(["train", "--runs"])
            .arg(&runs)
            .arg("--data")
            .arg(root.path().join("no-such-data"))
            .env_remove("MEMBANK_DATA"),
    );
    assert!(
        err.contains(&runs.display().to_string()) && err.contains("not a folder"),
        "{err}"
    );
    assert!(
        !err.contains("no-such-data"),
        "the data was looked at first: {err}"
    );
    assert_eq!(fs::read(&runs).unwrap(), b"mine");
    assert_eq!(
        fs::read_dir(root.path()).unwrap().count(),
        1,
        "a file was left"
    );
}

/// A `--resume` of a finished run trains nothing: it evaluates again, and the run's
/// `config.toml` and `metrics.jsonl` stay as they were, also with an override (here the learning
/// rate, which a resume may change but which no epoch used); a damaged `metrics.jsonl` is
/// refused.
#[test]
fn a_finished_run_resumed_keeps_its_config_and_metrics() {
    let setup = Setup::new(1, 2);
    ok(setup.train("f", false, &[]).output().unwrap(), "train");
    let dir = setup.run_dir("f");
    let before: Vec<Vec<u8>> = ["config.toml", "metrics.jsonl"]
        .iter()
        .map(|f| fs::read(dir.join(f)).unwrap())
        .collect();
    let modified = fs::metadata(dir.join("metrics.jsonl"))
        .unwrap()
        .modified()
        .unwrap();
    let out = ok(
        setup.train("f", true, &["optim.lr=0.05"]).output().unwrap(),
        "resume",
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("nothing to train"), "{said}");
    for (file, bytes) in ["config.toml", "metrics.jsonl"].iter().zip(&before) {
        assert_eq!(&fs::read(dir.join(file)).unwrap(), bytes, "{file} changed");
    }
    let after = fs::metadata(dir.join("metrics.jsonl"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(after, modified, "metrics.jsonl was rewritten");
    // A history damaged in a way a kill cannot (a line cut short and followed by others) is
    // refused, naming the file and the line, and left as it was.
    let damaged = format!("{{\"epoch\":\n{}", String::from_utf8_lossy(&before[1]));
    fs::write(dir.join("metrics.jsonl"), &damaged).unwrap();
    let err = fails(&mut setup.train("f", true, &[]));
    assert!(err.contains("metrics.jsonl: line 1 is not"), "{err}");
    assert_eq!(
        fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        damaged
    );
}

/// A training whose stdout and stderr are closed (`| head -2`, a pager quit, a `tee` that died)
/// trains to the end: before, the first line printed after the close panicked and the run ended.
#[test]
fn a_training_whose_terminal_went_away_finishes() {
    let setup = Setup::new(2, 2);
    let mut child = setup
        .train("closed", false, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the child prints anything: its first line meets a broken pipe.
    drop((child.stdout.take(), child.stderr.take()));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(summary(&setup.run_dir("closed")).epochs, 2);
}

/// A learning rate of 10³⁰ leaves finite weights whose inference-mode features are NaN or
/// infinite: the run stops with an error saying so, instead of finishing (exit 0) with a kNN
/// accuracy computed from NaN features, and writes no checkpoint of that network.
#[test]
fn a_network_whose_features_are_not_finite_is_not_evaluated() {
    let setup = Setup::new(1, 2);
    // One step (the whole set in a batch): its loss is finite, the update it makes is not.
    let overrides = ["optim.lr=1e30", "train.batch_size=64"];
    let err = fails(&mut setup.train("diverged", false, &overrides));
    assert!(err.contains("NaN or infinite"), "{err}");
    let dir = setup.run_dir("diverged");
    assert!(!dir.join("summary.json").exists());
    assert!(!dir.join("checkpoints").exists());
}

/// `ablation --report-only` that finds no finished run (a mistyped `--runs`) is an error that
/// writes nothing, not an empty table and exit 0; a training whose merging schedule starts too
/// late for any epoch to train merged says so.
#[test]
fn an_ablation_report_of_nothing_fails_and_merging_that_never_trains_is_named() {
    let root = tempfile::tempdir().unwrap();
    let runs = root.path().join("mistyped");
    let err = fails(
        Command::new(BIN)
            .args(["ablation", "--report-only", "--seeds", "1", "--runs"])
            .arg(&runs),
    );
    assert!(err.contains("no finished run"), "{err}");
    assert!(!runs.exists(), "something was written");

    let setup = Setup::new(1, 2);
    let out = ok(
        setup
            .train("late", false, &["merge.enabled=true"])
            .output()
            .unwrap(),
        "train",
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no epoch trains merged"), "{said}");
    let out = ok(
        setup
            .train(
                "early",
                false,
                &[
                    "merge.enabled=true",
                    "merge.schedule.start_epoch=0",
                    "train.epochs=2",
                ],
            )
            .output()
            .unwrap(),
        "train",
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("no epoch trains merged"), "{said}");
}

/// `ablation` evaluates the linear probe of each finished run on its final checkpoint: the same
/// top-1 as the probe that a training of the same arm runs at its end on the network in memory
/// (`eval.protocols`). The report shows it; `--no-linear-probe` evaluates nothing, and a run
/// probed before is not probed again.
#[test]
fn the_ablation_probes_each_finished_runs_final_network() {
    let setup = Setup::new(2, 4);
    let ablation = |extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "ablation",
            "--variants",
            "vanilla",
            "--seeds",
            "1",
            "--runs",
        ])
        .arg(&setup.runs)
        .args(extra)
        .args(&setup.overrides)
        .arg("name=\"probe\"");
        ok(cmd.output().unwrap(), "ablation")
    };
    let root = setup.runs.join("probe-ablation");
    let run = root.join("vanilla-seed0");
    let row = || {
        let md = fs::read_to_string(root.join("ablation.md")).unwrap();
        md.lines()
            .find(|l| l.starts_with("| vanilla |"))
            .unwrap()
            .to_string()
    };
    ablation(&["--no-linear-probe"]);
    assert!(run.join("summary.json").exists() && !run.join("eval").exists());
    assert!(row().contains("| – | – |"), "{}", row());

    let said = String::from_utf8_lossy(&ablation(&[]).stdout).into_owned();
    assert!(said.contains("finished before: skipped"), "{said}");
    let read =
        |f: PathBuf| -> ProtocolReport { serde_json::from_slice(&fs::read(f).unwrap()).unwrap() };
    let probed = read(run.join("eval/epoch-0002/eval.json"));

    // The same arm, trained with the probe at its end.
    let mut cmd = setup.train("arm", false, &["eval.protocols=[\"knn\",\"linear\"]"]);
    ok(
        cmd.args(["--variant", "vanilla"]).output().unwrap(),
        "train",
    );
    let trained = read(setup.run_dir("arm").join("protocols.json"));
    let top1 = |r: &ProtocolReport| {
        (
            r.linear_embedding.unwrap().top1,
            r.linear_pooled.unwrap().top1,
        )
    };
    assert_eq!(top1(&probed), top1(&trained));
    let embedding = format!(
        "| {:.2} | {:.2} |",
        100.0 * top1(&trained).0,
        100.0 * top1(&trained).1
    );
    assert!(row().contains(&embedding), "{} lacks {embedding}", row());

    let said = String::from_utf8_lossy(&ablation(&[]).stdout).into_owned();
    assert!(!said.contains(": linear probe\n"), "probed again: {said}");
}

/// A run records the data folder it read (`data_root.txt`), and `eval` without `--data` reads
/// that folder: before, it fell back to `~/.cache/membank/data` and started downloading
/// CIFAR-10's binaries to evaluate a run trained on the JPEGs of `--data`.
#[test]
fn eval_without_data_reads_the_folder_the_run_was_trained_on() {
    let root = tempfile::tempdir().unwrap();
    let (home, runs) = (root.path().join("home"), root.path().join("runs"));
    fs::create_dir_all(&home).unwrap();
    let data = crate::shared_data();
    let small = [
        "train.epochs=1",
        "data.train_per_class=10",
        "data.test_limit=50",
        "data.cache=false",
        "eval.k=5",
    ];
    let out = Command::new(BIN)
        .args(["train", "--name", "r", "--runs"])
        .arg(&runs)
        .arg("--data")
        .arg(&data)
        .args(small)
        .env("HOME", &home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("MEMBANK_DATA")
        .output()
        .unwrap();
    ok(out, "train");
    let recorded = fs::read_to_string(runs.join("r/data_root.txt")).unwrap();
    assert_eq!(
        Path::new(recorded.trim_end()),
        fs::canonicalize(&data).unwrap()
    );
    let out = Command::new(BIN)
        .args(["eval", "--run"])
        .arg(runs.join("r"))
        .env("HOME", &home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("MEMBANK_DATA")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&ok(out, "eval").stdout).into_owned();
    assert!(said.contains("data_root.txt"), "{said}");
    assert!(
        !home.join(".cache/membank/data").exists(),
        "a download started"
    );
}
