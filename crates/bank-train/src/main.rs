//! `bank-train`: train an embedding network with a memory bank, or evaluate a trained run.

/// `println!` that goes on when stdout is closed (`| head`, a pager quit, a `tee` that died):
/// what the run prints is also in its folder, so losing the terminal must not end the training.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that goes on when stderr is closed (see `say!`).
macro_rules! say_err {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

mod report;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use bank_train::metrics::EpochMetrics;
use bank_train::protocols::commands::{self, Split};
use bank_train::protocols::{Protocol, runner};
use bank_train::{Progress, RunOptions, TrainConfig, ablation, data_source};
use burn::backend::Autodiff;
use burn::prelude::*;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// The inner backend, chosen by Cargo feature (cuda > tch > wgpu > flex > ndarray).
#[cfg(feature = "cuda")]
type Inner = burn::backend::Cuda;
#[cfg(all(feature = "tch", not(feature = "cuda")))]
type Inner = burn::backend::LibTorch;
#[cfg(all(feature = "wgpu", not(any(feature = "tch", feature = "cuda"))))]
type Inner = burn::backend::Wgpu;
#[cfg(all(
    feature = "flex",
    not(any(feature = "wgpu", feature = "tch", feature = "cuda"))
))]
type Inner = burn::backend::Flex;
#[cfg(all(
    feature = "ndarray",
    not(any(feature = "flex", feature = "wgpu", feature = "tch", feature = "cuda"))
))]
type Inner = burn::backend::NdArray;
type Train = Autodiff<Inner>;

/// mimalloc instead of glibc's malloc. glibc maps each allocation over its threshold (at most
/// 32 MiB) afresh and returns it on free, so every step faulted its largest tensors in again,
/// page by page: on flex the small CNN's step at K = 2 ran at 638 views/s with glibc's malloc
/// and at 1,189 with mimalloc (`docs/results.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "membank: unsupervised embeddings by instance discrimination with a memory bank"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train: `bank-train train --config configs/cifar10_small_cpu.toml [--set optim.lr=0.1]`.
    Train {
        /// TOML configuration (without it: every field's default, the small CPU recipe's settings
        /// on all training images; `configs/cifar10_small_cpu.toml` keeps 500 per class).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data folder (else MEMBANK_DATA, else ~/.cache/membank/data, downloaded when missing).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Folder that holds the run folders.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Run name (overrides `name` in the config).
        #[arg(long)]
        name: Option<String>,
        /// Continue the run from its newest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Data-parallel devices, comma-separated (`cpu,cpu` or `cuda:0,cuda:1`): sets
        /// `train.devices`.
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// Train one arm of the ablation instead of the recipe as written: `vanilla` (NPID:
        /// K = 1, no consistency, no merging), `views` (K views), `views-consistency` or
        /// `full`, with K, λ and the merge schedule of the recipe and its overrides (as
        /// `ablation` does; `k<K>` and `k<K>-consistency` with the recipe's K name the same
        /// arms). The run is named `<recipe name>-<variant>` unless `--name` says otherwise.
        #[arg(long)]
        variant: Option<String>,
        /// A config override `section.field=value` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// More overrides, `section.field=value`.
        #[arg(value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Ablation: every variant × seed as an ordinary run under `RUNS/<recipe>-ablation/`
    /// (finished runs skipped, interrupted ones resumed), then `ablation.md` and `ablation.png`.
    Ablation {
        /// TOML recipe (without it: every field's default, as for `train`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data folder, as for `train`.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Folder that holds the ablation folder.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Seeds per variant, counted from the recipe's `seed`.
        #[arg(long, default_value_t = 3)]
        seeds: usize,
        /// Variants, comma-separated: vanilla, views, views-consistency, full (`k<K>` and
        /// `k<K>-consistency`, with the recipe's K, name the K-view arms too).
        #[arg(long, default_value = "vanilla,views,views-consistency,full")]
        variants: String,
        /// Only write the report from the runs that have finished; train nothing.
        #[arg(long)]
        report_only: bool,
        /// Do not evaluate the linear probe of finished runs that have none. By default each
        /// one's final checkpoint is evaluated as `eval --protocol linear` does (results in
        /// `eval/epoch-NNNN/eval.json`; seconds on the CPU recipes) for the report's linear-probe
        /// columns.
        #[arg(long)]
        no_linear_probe: bool,
        /// Overrides `section.field=value` for every run.
        #[arg(value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Evaluate a run's newest checkpoint (or `--checkpoint`) with the chosen protocols.
    Eval {
        /// The run folder (`runs/<name>`).
        #[arg(long)]
        run: PathBuf,
        /// Where the run's data is now, or how to evaluate: `data.path=…`, `data.eval_path=…`,
        /// `eval.k=…` (repeatable; fields that shape the training are refused).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Data folder, as for `train`.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Protocols (repeatable or comma-separated): knn, linear, retrieval, all.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "knn")]
        protocol: Vec<Protocol>,
        /// A checkpoint folder (`runs/<name>/checkpoints/epoch-NNNN`) instead of the newest.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Export features, labels, class names and sources as safetensors and .npy files.
    Export {
        /// The run folder (`runs/<name>`).
        #[arg(long)]
        run: PathBuf,
        /// Where the run's data is now, or how to evaluate: `data.path=…`, `data.eval_path=…`,
        /// `eval.k=…` (repeatable; fields that shape the training are refused).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Data folder, as for `train`.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Which rows: the training images, the test images, or the bank rows.
        #[arg(long, value_enum)]
        split: Split,
        /// Output: `FILE.safetensors` plus `FILE.<name>.npy` beside it.
        #[arg(long)]
        out: PathBuf,
        /// A checkpoint folder instead of the newest.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
}

/// Progress bars on the terminal, and one plain line per epoch on stdout.
struct Bars {
    bar: Option<ProgressBar>,
    epochs: usize,
}

impl Progress for Bars {
    fn epoch_start(&mut self, epoch: usize, steps: usize, done: usize) {
        if !std::io::stderr().is_terminal() {
            return; // Bars only on a terminal; a log file gets the plain epoch lines.
        }
        // Styled before anything is drawn (no default-style bar flashes first). A resume from a
        // mid-epoch checkpoint starts the bar where that checkpoint was, and its ETA counts from
        // there (not from the jump to `done`).
        let bar = ProgressBar::new(steps as u64).with_style(
            ProgressStyle::with_template("{prefix} [{bar:25}] {pos}/{len} {msg} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, self.epochs));
        bar.set_position(done as u64);
        bar.tick();
        bar.reset_eta();
        self.bar = Some(bar);
    }

    fn step(&mut self, loss: f64, views_per_s: f64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {loss:.4}  {views_per_s:.0} views/s"));
            bar.inc(1);
        }
    }

    fn epoch_end(&mut self, m: &EpochMetrics) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let against = [("bank", m.knn_bank), ("recomputed", m.knn_recomputed)];
        let knn = against
            .iter()
            .find_map(|(what, k)| k.map(|k| (what, k)))
            .map_or(String::new(), |(what, k)| {
                format!(
                    "  kNN({what}) top-1 {:.2}% top-5 {:.2}%",
                    100.0 * k.top1,
                    100.0 * k.top5
                )
            });
        let merge = m.merge.as_ref().map_or(String::new(), |r| {
            format!(
                "  merged {} pairs → {} groups (largest {}, purity {})",
                r.pairs_merged,
                r.groups,
                r.largest_group,
                r.purity
                    .map_or("-".into(), |p| format!("{:.1}%", 100.0 * p))
            )
        });
        say!(
            "epoch {:>3}/{}  loss {:.4}  lr {:.5}  {:.0} img/s, {:.0} views/s ({:.0} s){knn}{merge}",
            m.epoch,
            self.epochs,
            m.loss,
            m.lr,
            m.images_per_s,
            m.views_per_s,
            m.train_seconds
        );
    }

    fn note(&mut self, line: &str) {
        match &self.bar {
            // Above the bar, not appended to its line.
            Some(bar) => bar.println(line),
            None => say!("{line}"),
        }
    }

    fn stop_requested(&self) -> bool {
        STOP.load(Ordering::SeqCst)
    }
}

/// Set by the first Ctrl-C of a training: the run stops after the step it is in, with a
/// checkpoint there.
static STOP: AtomicBool = AtomicBool::new(false);

/// Ctrl-C during training: the first asks the run to stop with a checkpoint
/// ([`Progress::stop_requested`]), the second ends the process at once.
fn stop_on_ctrl_c() {
    let installed = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            say_err!("\nstopped at once: the run resumes from its last checkpoint");
            std::process::exit(130);
        }
        say_err!(
            "\nstopping at the end of the step (or evaluation) running now, with a checkpoint \
             there (Ctrl-C again stops at once)"
        );
    });
    if let Err(e) = installed {
        tracing::warn!("Ctrl-C stops the run without a checkpoint: {e}");
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            report::report(&err);
            let stopped = err.chain().any(|c| {
                matches!(
                    c.downcast_ref::<bank_train::Error>(),
                    Some(bank_train::Error::Interrupted { .. })
                )
            });
            if stopped {
                // 128 + SIGINT, as a shell reports a process Ctrl-C ended.
                std::process::ExitCode::from(130)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,bank_data=info".into()),
        )
        .with_writer(std::io::stderr)
        // Its own report of a failed write is an `eprintln!`, which panics on a closed stderr.
        .log_internal_errors(false)
        // Colour codes only on a terminal: logs sent to a file or a pipe stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if !bank_train::malloc::keep_freed_memory() {
        tracing::debug!("glibc's malloc settings not (all) applied");
    }
    match Cli::parse().command {
        Command::Train {
            config,
            data,
            runs,
            name,
            resume,
            devices,
            variant,
            mut set,
            overrides,
        } => {
            set.extend(overrides);
            // Each override with the option it came from: one field set to two values by two
            // options is refused.
            let mut sourced: Vec<(String, String)> = set
                .iter()
                .map(|o| ("an override".into(), o.clone()))
                .collect();
            if !devices.is_empty() {
                sourced.push(("--devices".into(), format!("train.devices={devices:?}")));
            }
            if let Some(name) = &name {
                sourced.push(("--name".into(), format!("name=\"{name}\"")));
            }
            let pairs: Vec<(&str, &str)> = sourced
                .iter()
                .map(|(s, o)| (s.as_str(), o.as_str()))
                .collect();
            bank_train::config::check_override_conflicts(&pairs)?;
            let mut set: Vec<String> = sourced.into_iter().map(|(_, o)| o).collect();
            if let Some(variant) = variant {
                // The arm of the recipe as the file and every override above define it: its
                // settings win (`--set train.views=4 --variant vanilla` trains K = 1 with the
                // rest of a K = 4 recipe), and the run is `<recipe name>-<variant>` unless
                // `--name`.
                let recipe = TrainConfig::load(config.as_deref(), &set)?;
                let variant = ablation::Variant::parse(
                    &variant,
                    ablation::Variant::views(&recipe),
                    "--variant",
                )?;
                set.extend(variant.overrides(&recipe));
                if name.is_none() {
                    set.push(format!("name=\"{}-{variant}\"", recipe.name));
                }
            }
            train(config.as_deref(), data.as_deref(), &runs, resume, &set)
        }
        Command::Ablation {
            config,
            data,
            runs,
            seeds,
            variants,
            report_only,
            no_linear_probe,
            overrides,
        } => {
            let recipe = TrainConfig::load(config.as_deref(), &overrides)?;
            let variants =
                ablation::Variant::parse_list(&variants, ablation::Variant::views(&recipe))?;
            let plan =
                ablation::AblationPlan::new(config.as_deref(), &overrides, variants, seeds, &runs)?;
            if !report_only {
                train_ablation(&plan, data.as_deref())?;
                if !no_linear_probe {
                    probe_ablation(&plan, data.as_deref())?;
                }
            }
            report_ablation(&plan)
        }
        Command::Eval {
            run,
            data,
            set,
            protocol,
            checkpoint,
        } => eval(
            &run,
            data.as_deref(),
            checkpoint.as_deref(),
            &set,
            &protocol,
        ),
        Command::Export {
            run,
            data,
            set,
            split,
            out,
            checkpoint,
        } => export(
            &run,
            data.as_deref(),
            checkpoint.as_deref(),
            &set,
            (split, &out),
        ),
    }
}

fn train(
    config_path: Option<&Path>,
    data: Option<&Path>,
    runs: &Path,
    resume: bool,
    overrides: &[String],
) -> Result<()> {
    let mut config = TrainConfig::load(config_path, overrides)?;
    let run_dir = bank_train::run_dir(runs, &config);
    let saved = run_dir.join("config.toml");
    if resume && saved.exists() {
        // A resumed run keeps the configuration it was started with (plus these overrides),
        // also when it stopped before its first checkpoint; a config file that says otherwise
        // is named in a warning.
        let run_config = TrainConfig::load(Some(&saved), overrides)
            .with_context(|| format!("reading the run's config {}", saved.display()))?;
        if let Some(path) = config_path {
            warn_config_file_ignored(path, &saved, &run_config, &config);
        }
        config = run_config;
    }
    // Refused before the data is read (decoding a dataset takes a minute the first time).
    if let Some(memory) = host_memory() {
        bank_train::feasibility::check_step_memory(&config, memory)?;
    }
    bank_train::run_folder::RunFolder::open(&run_dir, resume)?;
    let root = run_data_root(&run_dir, data, &config)?;
    match &config.data.path {
        Some(path) => say!("data: {} ({:?})", path.display(), config.data.dataset),
        None => say!("data: {}", root.display()),
    }
    let data = data_source::open(&config.data, &root)?;
    let device = Default::default();
    say!(
        "backend {} · {:?} · {} train / {} test images · {}×{} px, {} channel(s) · B {} × K {} · {} epochs · run {}",
        <Inner as Backend>::name(&device),
        config.model.arch,
        data.train.len(),
        data.eval.as_ref().map_or(0, |e| e.queries.len()),
        data.view.image_size,
        data.view.image_size,
        data.view.channels,
        config.train.batch_size,
        config.train.views,
        config.train.epochs,
        run_dir.display()
    );
    let merging = merging_in_words(&config);
    if merging.starts_with("on, but") {
        say_err!("warning: merging is {merging} (merge.schedule.start_epoch counts from 0)");
    }
    let mut bars = Bars {
        bar: None,
        epochs: config.train.epochs,
    };
    // From here on (not while the data is read: there Ctrl-C just ends the process).
    stop_on_ctrl_c();
    let summary = bank_train::train::<Train>(
        &config,
        &data,
        &RunOptions {
            run_dir: run_dir.clone(),
            resume,
        },
        &device,
        &mut bars,
    )?;
    say!("{}", serde_json::to_string_pretty(&summary)?);
    // What the run folder holds now (a resumed finished run rewrites only summary.json), the
    // optional files (protocols, pictures) when present.
    let files: Vec<&str> = [
        "config.toml",
        "data.json",
        "data_root.txt",
        "metrics.jsonl",
        "training.png",
        "summary.json",
        "protocols.json",
        "retrieval.png",
        "merges.png",
        "checkpoints/",
    ]
    .into_iter()
    .filter(|f| run_dir.join(f).exists())
    .collect();
    say!("run folder: {}/{{{}}}", run_dir.display(), files.join(","));
    Ok(())
}

/// The memory the backend computes in, in bytes, when it is the machine's (flex, ndarray,
/// LibTorch on its default CPU device): the smaller of the physical memory and the cgroup's
/// limit. `None` for a GPU backend.
fn host_memory() -> Option<u64> {
    if cfg!(any(feature = "cuda", feature = "wgpu")) {
        return None;
    }
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    let total = system.total_memory();
    let limit = system.cgroup_limits().map_or(u64::MAX, |c| c.total_memory);
    Some(total.min(limit)).filter(|&m| m > 0)
}

/// A config file given with `--resume` that differs from the run's own `config.toml` (both with
/// the resume's overrides) is ignored, as a resume keeps the configuration the run was started
/// with: says so, with the fields, rather than letting an edited file go unused without a word.
/// Not an error: a run started with overrides differs from its file, and resuming it with the
/// same file is how it is continued.
fn warn_config_file_ignored(file: &Path, saved: &Path, run: &TrainConfig, given: &TrainConfig) {
    // A field the file leaves unset that the run has is one the run resolved when it started
    // (the normalisation measured on the images), not a change.
    let changes: Vec<_> = bank_train::resume::config_changes(run, given)
        .into_iter()
        .filter(|c| c.new != "unset")
        .collect();
    let Some(first) = changes.first() else {
        return;
    };
    let fields: Vec<String> = changes
        .iter()
        .map(|c| format!("`{}` (run {}, file {})", c.field, c.old, c.new))
        .collect();
    say_err!(
        "warning: {} differs from the run's {} in {}; a resumed run keeps its own configuration: \
         to change a field, pass it as an override (e.g. `-- {}={}` after the options)",
        file.display(),
        saved.display(),
        fields.join(", "),
        first.field,
        first.new
    );
}

/// Trains every run of `plan` that has not finished.
fn train_ablation(plan: &ablation::AblationPlan, data: Option<&Path>) -> Result<()> {
    let runs = plan.runs()?;
    let root = data_source::data_root(data)?;
    let data = data_source::open(&plan.recipe().data, &root)?;
    let device = Default::default();
    stop_on_ctrl_c();
    for (i, run) in runs.iter().enumerate() {
        say!(
            "ablation run {}/{}: {} (K {}, λ {}, merging {})",
            i + 1,
            runs.len(),
            run.dir.display(),
            run.config.train.views,
            run.config.method.consistency,
            merging_in_words(&run.config)
        );
        let mut bars = Bars {
            bar: None,
            epochs: run.config.train.epochs,
        };
        let outcome = run
            .execute::<Train>(&data, &device, &mut bars)
            .with_context(|| format!("ablation run {}", run.dir.display()))?;
        if outcome == ablation::Outcome::Skipped {
            say!("  finished before: skipped");
        }
    }
    Ok(())
}

/// The linear probe of every finished run of `plan` that has none (neither in its
/// `protocols.json` nor for its final checkpoint), evaluated as `bank-train eval --run RUN
/// --checkpoint epoch-NNNN --protocol linear` does. Runs without a final checkpoint, or whose
/// data has no labelled test images, are named and left without one.
fn probe_ablation(plan: &ablation::AblationPlan, data: Option<&Path>) -> Result<()> {
    for run in plan.runs()? {
        let Some(record) = ablation::RunRecord::read(&run)? else {
            continue;
        };
        if record.linear.is_some() {
            continue;
        }
        if record.summary.test_images == 0 {
            say!(
                "note: {} was trained without labelled test images: no linear probe for it",
                run.dir.display()
            );
            continue;
        }
        let final_name = bank_train::checkpoint::name(run.config.train.epochs, 0);
        let checkpoint = run.dir.join("checkpoints").join(&final_name);
        if !checkpoint.is_dir() {
            say!(
                "note: {} has no final checkpoint ({final_name}): no linear probe for it",
                run.dir.display()
            );
            continue;
        }
        say!("ablation run {}: linear probe", run.dir.display());
        eval(&run.dir, data, Some(&checkpoint), &[], &[Protocol::Linear]).with_context(|| {
            format!(
                "linear probe of ablation run {} (--no-linear-probe writes the report \
                     without it)",
                run.dir.display()
            )
        })?;
    }
    Ok(())
}

/// Writes `ablation.md` and `ablation.png` from the finished runs of `plan`.
fn report_ablation(plan: &ablation::AblationPlan) -> Result<()> {
    let runs = plan.runs()?;
    let report = ablation::AblationReport::collect(&plan.recipe().name, &runs)?;
    if report.variants.iter().all(|v| v.runs.is_empty()) {
        // A mistyped --runs or --config finds nothing: an empty table would look like success.
        bail!(
            "no finished run of the ablation under {} (looked for {}, …); nothing written: \
             check --runs, --config and the overrides the runs were trained with",
            plan.root().display(),
            runs.first()
                .map_or(String::new(), |r| r.dir.display().to_string())
        );
    }
    std::fs::create_dir_all(plan.root()).with_context(|| plan.root().display().to_string())?;
    let written = ablation::write(&report, plan.root())?;
    say!("{}", report.markdown().trim_end());
    for file in written {
        say!("written: {}", file.display());
    }
    Ok(())
}

/// The data folder for the run in `run_dir`: `--data` when given, else the folder the run
/// recorded when it read its data (`data_root.txt`, when it still exists: `eval` without `--data`
/// once downloaded CIFAR-10's binaries next to a run trained on its JPEGs), else
/// `MEMBANK_DATA` or the default. Says which, or that `--data` goes unused because `data.path`
/// names the images absolutely.
fn run_data_root(run_dir: &Path, data: Option<&Path>, config: &TrainConfig) -> Result<PathBuf> {
    let absolute = config.data.path.as_deref().filter(|p| p.is_absolute());
    if let (Some(path), Some(flag)) = (absolute, data) {
        say!(
            "note: --data {} is not used: data.path names the images ({}; --set data.path=DIR \
             reads others)",
            flag.display(),
            path.display()
        );
    }
    if data.is_none()
        && let Some(root) = bank_train::run_folder::recorded_data_root(run_dir)
    {
        if config.data.path.is_none() {
            say!(
                "data folder: {} (the run's, from {}; --data reads another)",
                root.display(),
                bank_train::run_folder::DATA_ROOT_FILE
            );
        }
        return Ok(root);
    }
    Ok(data_source::data_root(data)?)
}

/// "off", "on", or, when the schedule's first round comes too late for any epoch to train with
/// merged positives, "on, but no epoch trains merged (first round after epoch E of N)".
fn merging_in_words(config: &TrainConfig) -> String {
    if !config.merge.enabled {
        return "off".into();
    }
    let first = config.merge.schedule.start_epoch + 1;
    if first >= config.train.epochs {
        format!(
            "on, but no epoch trains merged: the first round comes after epoch {first} of {}",
            config.train.epochs
        )
    } else {
        "on".into()
    }
}

/// `RUN/eval/<checkpoint folder name>/`, and with `--set` overrides a folder of their own inside
/// it, named by them (sorted; characters other than letters, digits and `._=,+-` written
/// `%XX`; a hash when long): results measured with other settings or data sit beside the run's
/// own, never mixed into them.
fn eval_folder(run: &Path, checkpoint: &Path, set: &[String]) -> PathBuf {
    use sha2::{Digest, Sha256};
    let dir = run
        .join("eval")
        .join(checkpoint.file_name().unwrap_or_default());
    if set.is_empty() {
        return dir;
    }
    let mut sorted = set.to_vec();
    sorted.sort();
    let kept = |b: u8| b.is_ascii_alphanumeric() || b"._=,+-".contains(&b);
    let name: String = sorted
        .join(",")
        .bytes()
        .map(|b| {
            if kept(b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if name.len() <= 120 && !name.starts_with('.') {
        return dir.join(name);
    }
    let hash = Sha256::digest(name.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("set-{hex}"))
}

/// The `--set` overrides that make an evaluation other than the run's own: as they take effect,
/// however they were spelled ([`bank_train::config::effective_overrides`]), leaving out those
/// that repeat the run's own value (`--set eval.k=5` on a run with k = 5).
fn settings_overrides(run: &Path, set: &[String]) -> Result<Vec<String>> {
    let saved = run.join("config.toml");
    let own = TrainConfig::load(Some(&saved), &[])?;
    let mut kept = Vec::new();
    for o in bank_train::config::effective_overrides(set)? {
        let with = TrainConfig::load(Some(&saved), std::slice::from_ref(&o))?;
        if !bank_train::resume::config_changes(&own, &with).is_empty() {
            kept.push(o);
        }
    }
    Ok(kept)
}

fn eval(
    run: &Path,
    data: Option<&Path>,
    chosen: Option<&Path>,
    set: &[String],
    protocols: &[Protocol],
) -> Result<()> {
    let device = Default::default();
    let loaded = commands::load_run::<Train>(run, chosen, set, &device)?;
    let (config, ckpt, bank) = (&loaded.config, &loaded.checkpoint, &loaded.bank);
    // The same path however the checkpoint was named (relative, absolute, through xtask).
    let canonical = ckpt
        .canonicalize()
        .with_context(|| ckpt.display().to_string())?;
    // One folder per checkpoint evaluated (`RUN/eval/<checkpoint folder name>/`), so evaluating
    // another checkpoint never replaces this one's results; a protocol run again replaces only
    // its own entry.
    let effective = settings_overrides(run, set)?;
    let out_dir = eval_folder(run, &canonical, &effective);
    let file = out_dir.join("eval.json");
    let earlier = runner::read_report(&file)?;
    let data = data_source::open(&config.data, &run_data_root(run, data, config)?)?;
    let Some(eval_sets) = &data.eval else {
        bail!(
            "{}: the run's data has no labelled evaluation set (name a labelled folder: --set \
             data.eval_path=FOLDER)",
            run.display()
        );
    };
    bank_train::data_identity::check(run, &*data.train)?;
    // The settings against the data as training checks them, for the protocols asked for now:
    // `eval.k` (which `--set` may change) against the reference images when kNN runs.
    let mut asked = config.clone();
    asked.eval.protocols = protocols.to_vec();
    if !Protocol::Knn.wanted(protocols) {
        (asked.eval.every_epochs, asked.eval.recompute_at_end) = (0, false);
    }
    bank_train::feasibility::check_against_data(&asked, &data)?;
    bank_train::feasibility::check_bank_against_data(
        &ckpt.join("bank.safetensors"),
        (bank.num_rows(), bank.dim()),
        config,
        &data,
    )?;
    say!("checkpoint {}", ckpt.display());
    let inputs = runner::Inputs::<Train> {
        model: &loaded.model,
        bank: Some(bank),
        eval: eval_sets,
        view: &data.view,
        config,
        out_dir: &out_dir,
    };
    let mut report = runner::run(protocols, &inputs, &device, &mut |line| say!("{line}"))?;
    report.checkpoint = Some(canonical.display().to_string());
    report.settings = Some(runner::EvalSettings {
        k: config.eval.k,
        references: eval_sets.reference.len(),
        queries: eval_sets.queries.len(),
        overrides: effective,
        images: Some(runner::EvalSettings::images_of(eval_sets)),
    });
    for line in runner::lines(&report, config) {
        say!("{line}");
    }
    if let Some(earlier) = earlier {
        if earlier.settings != report.settings {
            // The data under the same settings folder changed (other images, another number
            // of them): its results are not this evaluation's, and are not kept.
            let counts = |s: &Option<runner::EvalSettings>| {
                s.as_ref().map_or("unrecorded".to_string(), |s| {
                    let images = s.images.as_deref().unwrap_or("unrecorded");
                    format!(
                        "k {}, {} references, {} queries, images {images}",
                        s.k, s.references, s.queries
                    )
                })
            };
            say!(
                "note: {} held results measured with other settings ({}; now {}): replaced, \
                 not merged",
                file.display(),
                counts(&earlier.settings),
                counts(&report.settings)
            );
        }
        report = report.keeping(earlier);
    }
    // Made only now (or by `retrieval.png`), so an evaluation that fails or is interrupted
    // leaves no empty settings folder behind.
    std::fs::create_dir_all(&out_dir).with_context(|| out_dir.display().to_string())?;
    runner::write_report(&file, &report)?;
    say!("written: {}", file.display());
    Ok(())
}

fn export(
    run: &Path,
    data: Option<&Path>,
    chosen: Option<&Path>,
    set: &[String],
    (split, out): (Split, &Path),
) -> Result<()> {
    // An earlier export is refused before the checkpoint and the data are read.
    bank_train::protocols::export::check_free(out)?;
    let device = Default::default();
    let loaded = commands::load_run::<Train>(run, chosen, set, &device)?;
    let data = data_source::open(
        &loaded.config.data,
        &run_data_root(run, data, &loaded.config)?,
    )?;
    // Every split, not only the bank: features of another data set would be exported silently.
    bank_train::data_identity::check(run, &*data.train)?;
    bank_train::feasibility::check_bank_against_data(
        &loaded.checkpoint.join("bank.safetensors"),
        (loaded.bank.num_rows(), loaded.bank.dim()),
        &loaded.config,
        &data,
    )?;
    say!("checkpoint {}", loaded.checkpoint.display());
    for file in commands::export_run(&loaded, &data, split, out, &device)? {
        say!("written: {}", file.display());
    }
    Ok(())
}
