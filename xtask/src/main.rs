//! `cargo xtask`: project automation. Each subcommand forwards to cargo or to a real binary;
//! nothing here knows the method.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

mod compare_bank;
mod compare_search;
mod compare_step;
mod libtorch;
mod peer;
#[path = "../../crates/bank-train/src/report.rs"]
mod report;
mod result_line;

#[derive(Parser)]
#[command(about = "membank project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Train with `bank-train` (release build with the chosen backend). Overrides after `--`,
    /// e.g. `cargo xtask train -- optim.lr=0.05`; `--variant vanilla` for NPID.
    Train {
        /// Backend to build with.
        #[arg(long, value_enum, default_value_t = Backend::Flex)]
        backend: Backend,
        /// TOML configuration (default: the full method's CPU recipe, 30 epochs; the 8-epoch
        /// vanilla recipe is `configs/cifar10_small_cpu.toml`). A `--resume` of a `--name`d run
        /// reads the run's own configuration and needs none.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data folder (else MEMBANK_DATA, else ~/.cache/membank/data, downloaded when missing).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Run name (default: the config's).
        #[arg(long)]
        name: Option<String>,
        /// Folder of the run folders (default: `runs/` in the workspace).
        #[arg(long)]
        runs: Option<PathBuf>,
        /// Continue the run from its newest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Data-parallel devices, comma-separated (`cpu,cpu`, `cuda:0,cuda:1`).
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// One arm of the ablation instead of the recipe as written: vanilla (NPID: K = 1, no
        /// consistency, no merging), views (the recipe's K views), views-consistency or full
        /// (`k<K>`, `k<K>-consistency` with the recipe's K also name the K-view arms).
        #[arg(long)]
        variant: Option<String>,
        /// Config overrides `section.field=value`.
        #[arg(last = true)]
        overrides: Vec<String>,
    },
    /// The method's ablation: vanilla NPID, K views, + consistency, + merging (the full method),
    /// each over `--seeds` seeds as ordinary runs under `RUNS/<recipe>-ablation/` (finished runs
    /// skipped, interrupted ones resumed), then `ablation.md` and `ablation.png` there.
    Ablation {
        /// Backend to build with.
        #[arg(long, value_enum, default_value_t = Backend::Flex)]
        backend: Backend,
        /// TOML recipe.
        #[arg(long, default_value = "configs/cifar10_small_cpu_long.toml")]
        config: PathBuf,
        /// Data folder.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Folder of the ablation folder (default: `runs/` in the workspace).
        #[arg(long)]
        runs: Option<PathBuf>,
        /// Seeds per variant.
        #[arg(long, default_value_t = 3)]
        seeds: usize,
        /// Variants, comma-separated: vanilla, views, views-consistency, full.
        #[arg(long, default_value = "vanilla,views,views-consistency,full")]
        variants: String,
        /// Only write the report from the finished runs.
        #[arg(long)]
        report_only: bool,
        /// Do not evaluate the linear probe of finished runs that have none (by default each
        /// one's final checkpoint is, for the report's linear-probe columns).
        #[arg(long)]
        no_linear_probe: bool,
        /// Config overrides `section.field=value` for every run.
        #[arg(last = true)]
        overrides: Vec<String>,
    },
    /// Evaluate a run's newest checkpoint (`--protocol knn|linear|retrieval|all`, default knn).
    Eval {
        /// Backend to build with.
        #[arg(long, value_enum, default_value_t = Backend::Flex)]
        backend: Backend,
        /// The run folder (default: the one `cargo xtask train` makes).
        #[arg(long, default_value = DEFAULT_RUN)]
        run: PathBuf,
        /// Data folder.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Protocols, comma-separated (passed to `bank-train eval --protocol`).
        #[arg(long, default_value = "knn")]
        protocol: String,
        /// One of the run's checkpoint folders (`RUN/checkpoints/epoch-NNNN`) instead of the
        /// newest.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Where the run's data is now, or how to evaluate (`data.path=…`, `data.eval_path=…`,
        /// `eval.k=…`; repeatable; passed to `bank-train eval --set`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Demonstrate the bank and the losses: learn embeddings of synthetic "images" (release build).
    Demo {
        /// Backend to build with.
        #[arg(long, value_enum, default_value_t = Backend::Flex)]
        backend: Backend,
        /// Arguments passed to the demo (see `cargo xtask demo -- --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: the workspace on the CPU backends, then the tensor crates' tests on wgpu,
    /// then on LibTorch's CPU device when the Python environment with torch exists
    /// (`~/.cache/membank/pyenv`; this command does not create it).
    Test {
        /// Skip the wgpu run (which needs a Vulkan driver: Debian's mesa-vulkan-drivers).
        #[arg(long)]
        cpu_only: bool,
        /// Skip the LibTorch run even when the Python environment exists.
        #[arg(long)]
        no_tch: bool,
        /// Also run the tensor crates' tests on CUDA (device 0): needs an NVIDIA GPU with its
        /// driver, and the CUDA toolkit's NVRTC and headers (CUDA_PATH, else /usr/local/cuda).
        #[arg(long)]
        cuda: bool,
    },
    /// SIGKILL `bank-train` at random moments and inside checkpoint writes, resume it each time,
    /// and compare its metrics and final bank with an uninterrupted run (the suite's kill test,
    /// longer: `crates/bank-train/tests/it/process.rs`).
    Soak {
        /// Kills that must land.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Epochs of the run.
        #[arg(long, default_value_t = 8)]
        epochs: usize,
        /// Training images per class (10 classes) of the small image folder it trains on.
        #[arg(long, default_value_t = 8)]
        per_class: usize,
    },
    /// membank and its PyTorch peer (`benches/peer/npid.py`) trained with the same recipe on the
    /// same image folder (`train/<class>/`, `test/<class>/`; `benches/peer/make_datasets.py` makes
    /// six): training loss and kNN top-1 against the bank per epoch side by side, and kNN
    /// against recomputed features, written to `RUNS/NAME-parity.md`. Exits 3 when an epoch
    /// differs by more than `--tolerance` points. Finished runs are reused.
    ///
    /// `--step`: the deterministic step check instead. membank's real training steps (its
    /// config, model, SGD, bank and the first `--steps` batches of its own loader) are written
    /// out (`benches/examples/step_parity.rs`), then `benches/peer/step_parity.py` replays each
    /// step in PyTorch (float32 and float64) from the same state and batches and compares every
    /// parameter, BatchNorm running statistic, the bank, the loss, the learning rate and the
    /// test embeddings; it prints the tables and exits 3 beyond float32 noise. `--data` is the
    /// data root (default `../shared/data`, CIFAR-10) or an image folder (`train/`, `test/`).
    Parity {
        /// The image folder both train on (with `--step`: a data root or an image folder).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The deterministic step-parity check instead of whole training runs.
        #[arg(long)]
        step: bool,
        /// Steps of the step check.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// membank's recipe (the peer gets the same values from the run's resolved config).
        #[arg(long, default_value = "configs/cifar10_small_cpu.toml")]
        config: PathBuf,
        /// Side of the views (the folder's image size, e.g. 32 for CIFAR, 28 for MNIST-like sets).
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        /// Folder of the runs and reports.
        #[arg(long, default_value = "runs/parity")]
        runs: PathBuf,
        /// Name of this comparison (default: the data folder's name).
        #[arg(long)]
        name: Option<String>,
        /// kNN top-1 points allowed between the two at any epoch.
        #[arg(long, default_value_t = 2.0)]
        tolerance: f64,
        /// Above 1: seeds 0..N on each side, the tolerance applied to the per-epoch means over
        /// the seeds (each seed's table is in the report too). 1: the config's own seed.
        #[arg(long, default_value_t = 1, conflicts_with = "step")]
        seeds: usize,
        /// More membank overrides `section.field=value` (e.g. `train.epochs=30`, `seed=1`).
        #[arg(last = true)]
        overrides: Vec<String>,
    },
    /// Property-based fuzzing (proptest) of every reader of outside bytes: bank files, CIFAR and
    /// STL-10 binaries, tar / tar.gz, image decoding, checkpoints, checksum lists, configs. Each
    /// target runs for `--minutes`, one after the other.
    Fuzz {
        /// Minutes per target.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Run the criterion benchmarks with one backend; reports land in target/criterion.
    /// `cargo xtask bench compare loader|step|search|bank ...` instead runs membank (step, search
    /// and bank step with this backend) and its Python peer side by side (the peers' environment
    /// is created on first use).
    Bench {
        /// Backend to build with.
        #[arg(long, value_enum, default_value_t = Backend::Flex)]
        backend: Backend,
        /// Arguments passed to criterion (e.g. a benchmark name filter), or `compare WHAT`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The burn backends, one Cargo feature each.
#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Ndarray,
    Flex,
    Wgpu,
    Cuda,
    /// LibTorch on its CPU device (burn's default device), linked against the torch of the
    /// peers' Python environment.
    Tch,
}

impl Backend {
    fn feature(self) -> &'static str {
        match self {
            Self::Ndarray => "ndarray",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            Self::Tch => "tch",
        }
    }

    /// Makes cargo command `cmd` build with this backend: its environment ([`Backend::prepare`])
    /// and its feature. flex is every crate's default, so it is built with the default features
    /// (no flag): the same feature set as a plain `cargo build`/`cargo test` by hand and the
    /// other xtask commands, which then share one build instead of rebuilding each other's
    /// crates. Every other backend replaces the default.
    fn select(self, cmd: &mut Command) -> Result<()> {
        self.prepare(cmd)?;
        if !matches!(self, Self::Flex) {
            cmd.args(["--no-default-features", "--features", self.feature()]);
        }
        Ok(())
    }

    /// Sets up what a cargo command building with this backend needs (for tch:
    /// [`libtorch::setup`], which creates the Python environment when missing).
    fn prepare(self, cmd: &mut Command) -> Result<()> {
        match self {
            Self::Tch => libtorch::setup(cmd),
            Self::Ndarray | Self::Flex | Self::Wgpu | Self::Cuda => Ok(()),
        }
    }
}

/// The recipe `cargo xtask train` trains when given no `--config`.
const DEFAULT_RECIPE: &str = "configs/cifar10_small_cpu_long.toml";

/// The run folder `cargo xtask train` makes from [`DEFAULT_RECIPE`] (its `name`).
const DEFAULT_RUN: &str = "runs/cifar10_small_cpu_long";

/// Whether [`run`] waits for a program now: Ctrl-C (sent to the whole foreground process group)
/// is then that program's to handle. bank-train's training stops after the step it is in, with
/// a checkpoint: xtask must wait for it rather than end first and leave it printing after the
/// shell's prompt.
static WAITING: AtomicBool = AtomicBool::new(false);

fn main() -> std::process::ExitCode {
    let _ = ctrlc::set_handler(|| {
        if !WAITING.load(Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    let Err(err) = run_task(Cli::parse().task) else {
        return std::process::ExitCode::SUCCESS;
    };
    match passed_on(&err) {
        Some(code) => std::process::ExitCode::from(code),
        None => {
            report::report(&err);
            std::process::ExitCode::FAILURE
        }
    }
}

/// The exit code to end with, silently, when a program xtask ran failed and has said why itself
/// (bank-train's error, cargo's): nothing of ours to add. `None` for our own errors, a program
/// ended by a signal (it said nothing), or a failure we added context to.
fn passed_on(err: &anyhow::Error) -> Option<u8> {
    let failed = err.downcast_ref::<ChildFailed>()?;
    let code = failed.status.code().filter(|_| err.chain().count() == 1)?;
    Some(u8::try_from(code).unwrap_or(1))
}

/// A program xtask ran ended unsuccessfully (its status has no exit code when a signal ended
/// it).
#[derive(Debug)]
pub(crate) struct ChildFailed {
    command: String,
    status: std::process::ExitStatus,
}

impl std::fmt::Display for ChildFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed with {}", self.command, self.status)
    }
}

impl std::error::Error for ChildFailed {}

fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Train {
            backend,
            config,
            data,
            name,
            runs,
            resume,
            devices,
            variant,
            overrides,
        } => {
            let mut cmd = bank_train(backend)?;
            cmd.arg("train");
            // Not the default recipe for a named run resumed: bank-train would warn that it
            // differs from the run's configuration, which the run keeps anyway.
            let runs = runs
                .map(|r| std::env::current_dir().map(|d| d.join(r)))
                .transpose()?;
            let has_config = |name: &String| {
                let folder = runs
                    .clone()
                    .unwrap_or_else(|| workspace_root().join("runs"));
                folder.join(name).join("config.toml").is_file()
            };
            let config = match config {
                Some(config) => Some(config),
                None if resume && name.as_ref().is_some_and(has_config) => None,
                None => Some(PathBuf::from(DEFAULT_RECIPE)),
            };
            if let Some(config) = config {
                cmd.arg("--config").arg(absolute(&config)?);
            }
            if let Some(variant) = variant {
                cmd.args(["--variant", &variant]);
            }
            if let Some(data) = data {
                cmd.arg("--data").arg(absolute(&data)?);
            }
            if let Some(name) = name {
                cmd.args(["--name", &name]);
            }
            if let Some(runs) = runs {
                cmd.arg("--runs").arg(runs);
            }
            if resume {
                cmd.arg("--resume");
            }
            if !devices.is_empty() {
                cmd.arg("--devices").arg(devices.join(","));
            }
            cmd.args(overrides.iter().map(|o| with_absolute_path(o)));
            run(cmd)
        }
        Task::Ablation {
            backend,
            config,
            data,
            runs,
            seeds,
            variants,
            report_only,
            no_linear_probe,
            overrides,
        } => {
            let mut cmd = bank_train(backend)?;
            cmd.arg("ablation").arg("--config").arg(absolute(&config)?);
            if let Some(data) = data {
                cmd.arg("--data").arg(absolute(&data)?);
            }
            if let Some(runs) = runs {
                cmd.arg("--runs").arg(std::env::current_dir()?.join(runs));
            }
            cmd.args(["--seeds", &seeds.to_string(), "--variants", &variants]);
            if report_only {
                cmd.arg("--report-only");
            }
            if no_linear_probe {
                cmd.arg("--no-linear-probe");
            }
            cmd.args(overrides.iter().map(|o| with_absolute_path(o)));
            run(cmd)
        }
        Task::Eval {
            backend,
            run: dir,
            data,
            protocol,
            checkpoint,
            set,
        } => {
            let mut cmd = bank_train(backend)?;
            cmd.arg("eval").arg("--run").arg(absolute(&dir)?);
            cmd.arg("--protocol").arg(protocol);
            for field in set {
                cmd.arg("--set").arg(with_absolute_path(&field));
            }
            if let Some(data) = data {
                cmd.arg("--data").arg(absolute(&data)?);
            }
            if let Some(checkpoint) = checkpoint {
                // A bare checkpoint name (`epoch-0003`) is bank-train's to find in the run.
                let found = checkpoint.exists() || workspace_root().join(&checkpoint).exists();
                if found {
                    cmd.arg("--checkpoint").arg(absolute(&checkpoint)?);
                } else {
                    cmd.arg("--checkpoint").arg(checkpoint);
                }
            }
            run(cmd)
        }
        Task::Demo { backend, args } => {
            let mut cmd = cargo(&["run", "--release", "-p", "bank-losses", "--example", "demo"]);
            backend.select(&mut cmd)?;
            cmd.arg("--").args(args);
            run(cmd)
        }
        Task::Test {
            cpu_only,
            no_tch,
            cuda,
        } => {
            run(cargo(&["test", "--workspace"]))?;
            if cpu_only {
                eprintln!("xtask: skipping the wgpu tests (--cpu-only)");
            } else {
                ensure_vulkan_driver()?;
                run(tensor_crate_tests(Backend::Wgpu))?;
            }
            if cuda {
                run(tensor_crate_tests(Backend::Cuda))?;
            }
            if no_tch {
                eprintln!("xtask: skipping the LibTorch (tch) tests (--no-tch)");
                return Ok(());
            }
            let Some(python) = libtorch::existing_python() else {
                eprintln!(
                    "xtask: skipping the LibTorch (tch) tests: no Python environment with torch \
                     in {} (any `--backend tch` command creates it: a ~4 GB download)",
                    peer::env_dir().display()
                );
                return Ok(());
            };
            let mut cmd = tensor_crate_tests(Backend::Tch);
            libtorch::configure(&mut cmd, &python)?;
            run(cmd)?;
            // bank-train's own LibTorch path (ATen's conv → BatchNorm → ReLU units).
            let mut cmd = cargo(&["test", "-p", "bank-train", "--lib", "--features", "tch"]);
            cmd.arg("model::host");
            libtorch::configure(&mut cmd, &python)?;
            run(cmd)
        }
        Task::Bench { backend, args } if args.first().is_some_and(|a| a == "compare") => {
            compare(backend, &args[1..])
        }
        Task::Soak {
            kills,
            epochs,
            per_class,
        } => {
            let mut cmd = cargo(&["test", "-p", "bank-train", "--test", "it", "sigkilled"]);
            cmd.args(["--", "--nocapture"])
                .env("MEMBANK_SOAK_KILLS", kills.to_string())
                .env("MEMBANK_SOAK_EPOCHS", epochs.to_string())
                .env("MEMBANK_SOAK_PER_CLASS", per_class.to_string());
            run(cmd)
        }
        Task::Parity {
            data,
            step,
            steps,
            config,
            image_size,
            runs,
            name,
            tolerance,
            seeds,
            overrides,
        } => {
            if step {
                let data = absolute(&data.unwrap_or_else(|| "../shared/data".into()))?;
                let runs = std::env::current_dir()?.join(runs);
                return peer::step_parity(&peer::StepParitySpec {
                    data,
                    config: absolute(&config)?,
                    image_size,
                    steps,
                    out: runs.join(format!("{}-step", name.as_deref().unwrap_or("step"))),
                    overrides,
                });
            }
            let data = absolute(&data.context("--data is required (the image folder)")?)?;
            let name = match name {
                Some(n) => n,
                None => data
                    .file_name()
                    .context("--data names no folder")?
                    .to_string_lossy()
                    .into_owned(),
            };
            let runs = std::env::current_dir()?.join(runs);
            let spec = peer::ParitySpec {
                data,
                config: absolute(&config)?,
                image_size,
                runs,
                name,
                tolerance,
                seeds,
                overrides,
            };
            peer::parity(&spec)
        }
        Task::Fuzz { minutes } => {
            if !(minutes > 0.0 && minutes.is_finite()) {
                bail!("--minutes must be > 0, not {minutes}");
            }
            let mut cmd = cargo(&[
                "test",
                "-p",
                "bank-core",
                "-p",
                "bank-data",
                "-p",
                "bank-train",
            ]);
            cmd.args([
                "--test",
                "it",
                "fuzz_",
                "--",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MEMBANK_FUZZ_SECONDS", (minutes * 60.0).to_string());
            run(cmd)
        }
        Task::Bench { backend, args } => {
            let mut cmd = cargo(&["bench", "-p", "membank-benches"]);
            backend.select(&mut cmd)?;
            cmd.arg("--").args(args);
            run(cmd)
        }
    }
}

/// `cargo xtask bench compare WHAT [--data DIR] [--repeats N]`; `step`, `search` and `bank` parse
/// their own options (`cargo xtask bench compare step --help`).
fn compare(backend: Backend, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("step") => return compare_step::compare_step(backend, &args[1..]),
        Some("search") => return compare_search::compare_search(backend, &args[1..]),
        Some("bank") => return compare_bank::compare_bank(backend, &args[1..]),
        _ => {}
    }
    let mut data = workspace_root().join("../shared/data");
    let mut repeats = 3;
    let mut what = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => data = absolute(Path::new(it.next().context("--data DIR")?))?,
            "--repeats" => repeats = it.next().context("--repeats N")?.parse()?,
            w => what = Some(w.to_string()),
        }
    }
    match what.as_deref() {
        Some("loader") => peer::compare_loader(&data, repeats),
        other => bail!("compare what? {other:?} (available: loader, step, search, bank)"),
    }
}

/// `cargo run --release -p bank-train` with one backend ([`Backend::select`]), arguments to
/// follow.
pub(crate) fn bank_train(backend: Backend) -> Result<Command> {
    let mut cmd = cargo(&["run", "--release", "-p", "bank-train"]);
    backend.select(&mut cmd)?;
    cmd.arg("--");
    Ok(cmd)
}

/// `cargo test` of the tensor crates (bank-core, bank-losses, bank-mining) with `backend`'s
/// feature on each: their generic tests then run on that backend alone
/// (`bank-core/tests/it/common.rs`). Library and integration tests only: the CPU run already
/// built the examples.
fn tensor_crate_tests(backend: Backend) -> Command {
    let crates = ["bank-core", "bank-losses", "bank-mining"];
    let mut cmd = cargo(&["test"]);
    for c in crates {
        cmd.args(["-p", c]);
    }
    let features: Vec<String> = crates
        .iter()
        .map(|c| format!("{c}/{}", backend.feature()))
        .collect();
    cmd.args(["--lib", "--tests", "--features", &features.join(",")]);
    cmd
}

/// `data.path=…` or `data.eval_path=…` with a relative path that exists from where the user
/// ran `cargo xtask` made absolute: bank-train runs in the workspace root, where the path would
/// name something else. Any other override as given.
fn with_absolute_path(set: &str) -> String {
    let Some((key, value)) = set.split_once('=') else {
        return set.to_string();
    };
    if !matches!(key.trim(), "data.path" | "data.eval_path") {
        return set.to_string();
    }
    let path = value.trim().trim_matches(|c| c == '"' || c == '\'');
    let Ok(here) = std::env::current_dir() else {
        return set.to_string();
    };
    if Path::new(path).is_relative() && here.join(path).exists() {
        let full = here.join(path).display().to_string().replace('\\', "\\\\");
        return format!("{}=\"{full}\"", key.trim());
    }
    set.to_string()
}

/// Paths given by the user are relative to where they ran `cargo xtask` (cargo then runs the
/// binary in the workspace root); a path that does not exist there is taken from the root.
fn absolute(path: &Path) -> Result<PathBuf> {
    let here = std::env::current_dir()?.join(path);
    Ok(if here.exists() {
        here
    } else {
        workspace_root().join(path)
    })
}

pub(crate) fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(workspace_root());
    // `cargo xtask` runs this binary with the xtask package's variables (CARGO_MANIFEST_DIR,
    // CARGO_PKG_NAME, …). A child cargo passes them on to build scripts, and ring's records
    // CARGO_MANIFEST_DIR: every xtask build then rebuilt ring and what depends on it (ureq,
    // bank-data, bank-train) after a hand-typed cargo build, and the other way round.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_package_variable) {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Whether `name` is one of the variables cargo sets for running a package's binary (as
/// opposed to the user's own settings, such as `CARGO_HOME` or `CARGO_TARGET_DIR`).
fn is_package_variable(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR" | "CARGO_MANIFEST_PATH" | "CARGO_CRATE_NAME" | "CARGO_BIN_NAME"
        )
}

/// The checkout `cargo xtask` runs in: cargo's `CARGO_MANIFEST_DIR` of this run (the xtask
/// package's folder), else the one it was compiled in. Not the compiled-in path first: a build
/// reused from another checkout (a copied `target/`) would work on that checkout instead.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

pub(crate) fn run(mut cmd: Command) -> Result<()> {
    eprintln!("xtask: {}", Shown(&cmd));
    WAITING.store(true, Ordering::SeqCst);
    let status = cmd.status();
    WAITING.store(false, Ordering::SeqCst);
    let status = status.with_context(|| format!("cannot start {}", Shown(&cmd)))?;
    if !status.success() {
        return Err(ChildFailed {
            command: Shown(&cmd).to_string(),
            status,
        }
        .into());
    }
    Ok(())
}

/// A command as a shell takes it: `cd DIR && NAME=value … program args`, leaving out the
/// variables it removes ([`cargo`]'s package variables), which `{:?}` would list one by one.
pub(crate) struct Shown<'a>(pub(crate) &'a Command);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cmd = self.0;
        if let Some(dir) = cmd.get_current_dir() {
            write!(f, "cd {dir:?} && ")?;
        }
        for (name, value) in cmd.get_envs() {
            if let Some(value) = value {
                write!(f, "{}={value:?} ", name.to_string_lossy())?;
            }
        }
        write!(f, "{:?}", cmd.get_program())?;
        cmd.get_args().try_for_each(|a| write!(f, " {a:?}"))
    }
}

/// wgpu needs a Vulkan driver; on a fresh Debian machine (as root) install the software one.
fn ensure_vulkan_driver() -> Result<()> {
    let icd_dirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];
    let has_driver = icd_dirs
        .iter()
        .any(|d| std::fs::read_dir(d).is_ok_and(|mut entries| entries.any(|e| e.is_ok())));
    if has_driver {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !is_root || !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "no Vulkan driver found for the wgpu tests: install one (Debian: `apt-get install \
             mesa-vulkan-drivers`) or run `cargo xtask test --cpu-only`"
        );
    }
    eprintln!(
        "xtask: installing the software Vulkan driver (mesa-vulkan-drivers) for the wgpu tests"
    );
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    run(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "mesa-vulkan-drivers"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(install)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Result<()> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        run(cmd)
    }

    #[test]
    fn a_failed_program_passes_its_exit_code_on_and_nothing_else() {
        assert!(sh("exit 0").is_ok());
        let err = sh("exit 3").unwrap_err();
        assert_eq!(passed_on(&err), Some(3));
        assert!(err.to_string().ends_with("exit status: 3"), "{err}");
        // With our context on top, or ended by a signal (it printed nothing): reported in full.
        assert_eq!(passed_on(&err.context("running the peer")), None);
        let killed = sh("kill -9 $$").unwrap_err();
        assert_eq!(passed_on(&killed), None, "{killed}");
        assert!(killed.to_string().contains("signal"), "{killed}");
        assert_eq!(passed_on(&anyhow::anyhow!("--minutes must be > 0")), None);
    }

    /// `cargo xtask eval` with no `--run` evaluates what `cargo xtask train` trained.
    #[test]
    fn the_default_run_is_the_default_recipe_s_run_folder() {
        let recipe = std::fs::read_to_string(workspace_root().join(DEFAULT_RECIPE)).unwrap();
        let name = recipe
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"');
        assert_eq!(Path::new(DEFAULT_RUN), Path::new("runs").join(name));
    }

    /// bank-train runs in the workspace root: a relative data path that exists from where
    /// xtask was started is passed on absolute, anything else as given.
    #[test]
    fn relative_data_paths_are_passed_on_from_where_xtask_runs() {
        let here = std::env::current_dir().unwrap().join("src");
        let want = format!("data.path=\"{}\"", here.display());
        assert_eq!(with_absolute_path("data.path=src"), want);
        assert_eq!(with_absolute_path("data.path=\"src\""), want);
        let eval = format!("data.eval_path=\"{}\"", here.display());
        assert_eq!(with_absolute_path(" data.eval_path = 'src' "), eval);
        for unchanged in [
            "data.path=\"no-such-folder\"",
            "eval.k=3",
            "name=src",
            "src",
        ] {
            assert_eq!(with_absolute_path(unchanged), unchanged);
        }
    }
}
