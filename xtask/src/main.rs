//! `cargo xtask`: project automation. Each subcommand forwards to cargo or to a real binary;
//! nothing here knows the method.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "membank project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Train with `bank-train` (release build with the chosen backend). Overrides after `--`,
    /// e.g. `cargo xtask train -- train.views=2 method.consistency=0.5`.
    Train {
        /// Backend to build with.
        #[arg(long, value_enum, default_value_t = Backend::Flex)]
        backend: Backend,
        /// TOML configuration.
        #[arg(long, default_value = "configs/cifar10_small_cpu.toml")]
        config: PathBuf,
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
        /// Config overrides `section.field=value`.
        #[arg(last = true)]
        overrides: Vec<String>,
    },
    /// Evaluate a run's newest checkpoint (kNN against the bank and recomputed features).
    Eval {
        /// Backend to build with.
        #[arg(long, value_enum, default_value_t = Backend::Flex)]
        backend: Backend,
        /// The run folder.
        #[arg(long)]
        run: PathBuf,
        /// Data folder.
        #[arg(long)]
        data: Option<PathBuf>,
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
    /// Run every test: the workspace on the CPU backends, then the tensor crates' tests on wgpu.
    Test {
        /// Skip the wgpu run (which needs a Vulkan driver: Debian's mesa-vulkan-drivers).
        #[arg(long)]
        cpu_only: bool,
    },
    /// Run the criterion benchmarks with one backend; reports land in target/criterion.
    Bench {
        /// Backend to build with.
        #[arg(long, value_enum, default_value_t = Backend::Flex)]
        backend: Backend,
        /// Arguments passed to criterion (e.g. a benchmark name filter).
        #[arg(last = true)]
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
}

impl Backend {
    fn feature(self) -> &'static str {
        match self {
            Self::Ndarray => "ndarray",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Train {
            backend,
            config,
            data,
            name,
            runs,
            resume,
            overrides,
        } => {
            let mut cmd = bank_train(backend);
            cmd.arg("train").arg("--config").arg(absolute(&config)?);
            if let Some(data) = data {
                cmd.arg("--data").arg(absolute(&data)?);
            }
            if let Some(name) = name {
                cmd.args(["--name", &name]);
            }
            if let Some(runs) = runs {
                cmd.arg("--runs").arg(std::env::current_dir()?.join(runs));
            }
            if resume {
                cmd.arg("--resume");
            }
            cmd.args(overrides);
            run(cmd)
        }
        Task::Eval {
            backend,
            run: dir,
            data,
        } => {
            let mut cmd = bank_train(backend);
            cmd.arg("eval").arg("--run").arg(absolute(&dir)?);
            if let Some(data) = data {
                cmd.arg("--data").arg(absolute(&data)?);
            }
            run(cmd)
        }
        Task::Demo { backend, args } => {
            let mut cmd = cargo(&["run", "--release", "-p", "bank-losses", "--example", "demo"]);
            cmd.args([
                "--no-default-features",
                "--features",
                backend.feature(),
                "--",
            ])
            .args(args);
            run(cmd)
        }
        Task::Test { cpu_only } => {
            run(cargo(&["test", "--workspace"]))?;
            if cpu_only {
                eprintln!("xtask: skipping the wgpu tests (--cpu-only)");
                return Ok(());
            }
            ensure_vulkan_driver()?;
            let mut cmd = cargo(&[
                "test",
                "-p",
                "bank-core",
                "-p",
                "bank-losses",
                "-p",
                "bank-mining",
            ]);
            // Library and integration tests only: the CPU run already built the examples.
            cmd.args(["--lib", "--tests", "--features"]);
            cmd.arg("bank-core/wgpu,bank-losses/wgpu,bank-mining/wgpu");
            run(cmd)
        }
        Task::Bench { backend, args } => {
            let mut cmd = cargo(&["bench", "-p", "membank-benches", "--no-default-features"]);
            cmd.args(["--features", backend.feature(), "--"]).args(args);
            run(cmd)
        }
    }
}

/// `cargo run --release -p bank-train` with one backend feature, arguments to follow.
fn bank_train(backend: Backend) -> Command {
    let mut cmd = cargo(&[
        "run",
        "--release",
        "-p",
        "bank-train",
        "--no-default-features",
    ]);
    cmd.args(["--features", backend.feature(), "--"]);
    cmd
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

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(workspace_root());
    cmd
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(mut cmd: Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
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
