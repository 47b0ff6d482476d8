//! Side-by-side comparisons with the tools a user would pick instead (PyTorch, torchvision,
//! FAISS): the Python environment they run in, and the comparison runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cargo, run, workspace_root};

/// `~/.cache/membank/pyenv` (or `MEMBANK_PYENV`): the peers' Python environment, also LibTorch's
/// (`crate::libtorch`).
pub(crate) fn env_dir() -> PathBuf {
    std::env::var_os("MEMBANK_PYENV").map_or_else(
        || {
            let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
            home.join(".cache/membank/pyenv")
        },
        PathBuf::from,
    )
}

/// The Python of the peers' environment, created from `benches/peer/requirements.txt` when
/// missing (torch and torchvision: a ~4 GB download, a few minutes; the time is printed).
pub fn python() -> Result<PathBuf> {
    let dir = env_dir();
    let python = dir.join("bin/python");
    let requirements = workspace_root().join("benches/peer/requirements.txt");
    let stamp = dir.join(".membank-requirements");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| requirements.display().to_string())?;
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!(
        "xtask: setting up the Python peers' environment in {} (torch, torchvision, faiss-cpu: \
         a ~4 GB download, a few minutes)",
        dir.display()
    );
    let started = Instant::now();
    if !python.is_file() {
        let mut venv = Command::new("python3");
        venv.args(["-m", "venv"]).arg(&dir);
        run(venv)?;
    }
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "-q", "-r"])
        .arg(&requirements);
    run(pip)?;
    std::fs::write(&stamp, wanted)?;
    eprintln!(
        "xtask: Python environment ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(python)
}

/// Builds the benchmark example `name` (`benches/examples/`) in release mode with `backend`;
/// returns the binary's path.
pub(crate) fn bench_example(backend: crate::Backend, name: &str) -> Result<PathBuf> {
    let mut build = cargo(&[
        "build",
        "--release",
        "-p",
        "membank-benches",
        "--example",
        name,
    ]);
    backend.select(&mut build)?;
    run(build)?;
    Ok(workspace_root().join("target/release/examples").join(name))
}

/// One JSON line's `views_per_s`.
fn views_per_s(output: &[u8]) -> Result<f64> {
    let text = String::from_utf8_lossy(output);
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("views_per_s"))
        .with_context(|| format!("no result line in: {text}"))?;
    let value = line
        .rsplit("\"views_per_s\":")
        .next()
        .context("views_per_s")?
        .trim()
        .trim_end_matches('}')
        .trim();
    value.parse().with_context(|| format!("in {line}"))
}

fn measure(mut cmd: Command) -> Result<f64> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    views_per_s(&out.stdout)
}

/// The median of `v` (the mean of the middle two for an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The streaming loader against torchvision's `ImageFolder` + `DataLoader` on the same 500×375
/// JPEGs (made from CIFAR-10 under `target/compare/`), RandomResizedCrop to 224, `repeats`
/// alternating rounds; prints every measurement, the medians and the ratios.
pub fn compare_loader(data: &Path, repeats: usize) -> Result<()> {
    let python = python()?;
    let peer = workspace_root().join("benches/peer");
    let folder = workspace_root().join("target/compare/jpeg-500x375");
    if !folder.is_dir() {
        let archive = data.join("cifar10/cifar10-jpeg.tar.gz");
        let mut make = Command::new(&python);
        make.arg(peer.join("make_large_jpegs.py"))
            .arg(&archive)
            .arg(&folder)
            .arg("200");
        run(make)?;
    }
    run(cargo(&[
        "build",
        "--release",
        "-p",
        "membank-benches",
        "--example",
        "loader_views",
    ]))?;
    let ours = workspace_root().join("target/release/examples/loader_views");
    let (batch, batches) = ("64", "30");
    let mut results: Vec<(String, Vec<f64>)> = vec![
        ("membank streaming, 1 thread".into(), vec![]),
        ("membank streaming, 2 threads".into(), vec![]),
        (
            "torchvision ImageFolder+DataLoader, 2 workers".into(),
            vec![],
        ),
    ];
    for round in 0..repeats {
        for (i, threads) in ["1", "2"].iter().enumerate() {
            let mut cmd = Command::new(&ours);
            cmd.arg(&folder).args(["224", batch, threads, batches]);
            let v = measure(cmd)?;
            eprintln!("round {}: {}: {v:.1} views/s", round + 1, results[i].0);
            results[i].1.push(v);
        }
        let mut cmd = Command::new(&python);
        cmd.arg(peer.join("loader_torchvision.py"))
            .arg(&folder)
            .args(["--size", "224", "--batch-size", batch, "--workers", "2"])
            .args(["--batches", batches]);
        let v = measure(cmd)?;
        eprintln!("round {}: {}: {v:.1} views/s", round + 1, results[2].0);
        results[2].1.push(v);
    }
    let peer_median = median(results[2].1.clone());
    println!(
        "\nmedians of {repeats} alternating rounds (views/s, 500×375 JPEG → 224, decode included):"
    );
    for (name, values) in &results {
        let m = median(values.clone());
        println!(
            "  {name:<48} {m:>8.1}   {:.2}× torchvision",
            m / peer_median
        );
    }
    Ok(())
}

/// What `cargo xtask parity` compares.
pub struct ParitySpec {
    /// The image folder (`train/`, `test/`).
    pub data: PathBuf,
    /// membank's config.
    pub config: PathBuf,
    /// View side in pixels.
    pub image_size: usize,
    /// Folder of the runs and reports.
    pub runs: PathBuf,
    /// Name of the comparison.
    pub name: String,
    /// kNN points allowed per epoch.
    pub tolerance: f64,
    /// Seeds 0..seeds on each side (1: the config's own seed).
    pub seeds: usize,
    /// More membank overrides.
    pub overrides: Vec<String>,
}

/// Trains membank on the folder for each seed (unless its run is complete), then
/// `benches/peer/parity.py` trains the peer with each run's resolved recipe and writes the
/// side-by-side report.
pub fn parity(spec: &ParitySpec) -> Result<()> {
    if spec.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let sets_seed = |o: &String| {
        o.split_once('=')
            .is_some_and(|(key, _)| key.trim() == "seed")
    };
    if spec.seeds > 1 && spec.overrides.iter().any(sets_seed) {
        bail!(
            "--seeds {} sets the seeds 0..{}: drop the `seed=` override",
            spec.seeds,
            spec.seeds
        );
    }
    let python = python()?;
    let mut run_dirs = Vec::new();
    for seed in 0..spec.seeds {
        let (run_name, seed_override) = if spec.seeds == 1 {
            (format!("{}-membank", spec.name), None)
        } else {
            (
                format!("{}-membank-seed{seed}", spec.name),
                Some(format!("seed={seed}")),
            )
        };
        train_membank(spec, &run_name, seed_override)?;
        run_dirs.push(spec.runs.join(&run_name));
    }
    let mut cmd = Command::new(python);
    cmd.arg(workspace_root().join("benches/peer/parity.py"));
    for run_dir in &run_dirs {
        cmd.arg("--run").arg(run_dir);
    }
    cmd.arg("--data")
        .arg(&spec.data)
        .arg("--out")
        .arg(spec.runs.join(&spec.name))
        .args(["--tolerance", &spec.tolerance.to_string()]);
    eprintln!("xtask: {}", crate::Shown(&cmd));
    let status = cmd.status().context("cannot start parity.py")?;
    match status.code() {
        Some(0) => Ok(()),
        Some(3) => bail!("parity: not within {} points", spec.tolerance),
        _ => bail!("parity.py failed with {status}"),
    }
}

/// membank's side of a parity comparison: one run on the folder, resumed when interrupted,
/// skipped when complete.
fn train_membank(spec: &ParitySpec, run_name: &str, seed: Option<String>) -> Result<()> {
    let run_dir = spec.runs.join(run_name);
    if !run_dir.join("summary.json").is_file() {
        let resume = run_dir.join("config.toml").is_file();
        let mut cmd = crate::bank_train(crate::Backend::Flex)?;
        cmd.arg("train").arg("--config").arg(&spec.config);
        cmd.arg("--runs").arg(&spec.runs).args(["--name", run_name]);
        if resume {
            cmd.arg("--resume");
        }
        // The peer reads the folder as RGB with CIFAR-10's normalisation: membank does the same.
        cmd.args([
            "data.dataset=image_folder".to_string(),
            format!("data.path={:?}", spec.data.display().to_string()),
            format!("data.image_size={}", spec.image_size),
            "data.channels=3".into(),
            "data.mean=[0.4914, 0.4822, 0.4465]".into(),
            "data.std=[0.247, 0.2435, 0.2616]".into(),
            "data.train_per_class=0".into(),
        ]);
        cmd.args(&spec.overrides);
        cmd.args(seed);
        run(cmd)?;
    }
    Ok(())
}

/// What `cargo xtask parity --step` compares.
pub struct StepParitySpec {
    /// The data root (CIFAR-10 as the config says) or an image folder (`train/`, `test/`).
    pub data: PathBuf,
    /// membank's config.
    pub config: PathBuf,
    /// View side in pixels, for an image folder.
    pub image_size: usize,
    /// Training steps written out and replayed.
    pub steps: usize,
    /// Output folder of membank's steps (replaced when it holds an earlier check's output).
    pub out: PathBuf,
    /// More membank overrides.
    pub overrides: Vec<String>,
}

/// membank's first `steps` training steps written out by `benches/examples/step_parity.rs`,
/// then replayed and compared tensor by tensor by `benches/peer/step_parity.py`.
pub fn step_parity(spec: &StepParitySpec) -> Result<()> {
    let python = python()?;
    if spec.out.join("meta.json").is_file() {
        std::fs::remove_dir_all(&spec.out).with_context(|| spec.out.display().to_string())?;
    }
    let mut cmd = cargo(&[
        "run",
        "--release",
        "-p",
        "membank-benches",
        "--example",
        "step_parity",
        "--",
    ]);
    cmd.arg("--config").arg(&spec.config);
    cmd.arg("--data")
        .arg(&spec.data)
        .arg("--out")
        .arg(&spec.out);
    cmd.args(["--steps", &spec.steps.to_string()]);
    cmd.arg("--");
    if spec.data.join("train").is_dir() && spec.data.join("test").is_dir() {
        // An image folder: all of its training images, views of its size.
        cmd.args([
            "data.dataset=image_folder".to_string(),
            format!("data.path={:?}", spec.data.display().to_string()),
            format!("data.image_size={}", spec.image_size),
            "data.train_per_class=0".into(),
        ]);
    }
    cmd.args(&spec.overrides);
    run(cmd)?;
    let mut cmd = Command::new(python);
    cmd.arg(workspace_root().join("benches/peer/step_parity.py"))
        .arg(&spec.out);
    eprintln!("xtask: {}", crate::Shown(&cmd));
    let status = cmd.status().context("cannot start step_parity.py")?;
    match status.code() {
        Some(0) => Ok(()),
        Some(3) => bail!("step parity: differences beyond float32 noise (see the tables above)"),
        _ => bail!("step_parity.py failed with {status}"),
    }
}
