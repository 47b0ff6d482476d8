//! `cargo xtask bench compare step`: membank's training step (`benches/examples/step_views.rs`)
//! against the same step in PyTorch (`benches/peer/step_torch.py`), alternating, on synthetic
//! batches: every measurement, the medians and their ratio per (architecture, K), and both
//! sides' first-step loss checked against its value at initialisation.

use std::process::Command;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};

use crate::result_line::{number, run_for_json};
use crate::{Backend, peer, workspace_root};

/// Embedding dimension and temperature of both sides (membank's defaults).
const DIM: usize = 128;
const TAU: f64 = 0.1;

/// The architectures both sides build.
#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    /// The small CNN of the CPU recipe.
    #[value(name = "small_cnn")]
    SmallCnn,
    /// ResNet-18 with the CIFAR stem.
    #[value(name = "resnet18")]
    Resnet18,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Self::SmallCnn => "small_cnn",
            Self::Resnet18 => "resnet18",
        }
    }

    /// Timed steps when `--steps` is not given: a few seconds to a minute per measurement on
    /// two cores.
    fn default_steps(self) -> usize {
        match self {
            Self::SmallCnn => 20,
            Self::Resnet18 => 4,
        }
    }

    /// Untimed steps when `--warmup` is not given: enough for both sides to settle (thread
    /// pools, allocator, oneDNN's primitive caches). The small CNN's steps last about 0.1 s on
    /// two cores, and after 2 of them its rounds still swung by a quarter (stop 31: 0.96–1.26×
    /// on tch); 20 take about 2 s. ResNet-18's 2 take 5–10 s.
    fn default_warmup(self) -> usize {
        match self {
            Self::SmallCnn => 20,
            Self::Resnet18 => 2,
        }
    }
}

#[derive(Parser)]
#[command(
    name = "cargo xtask bench compare step",
    about = "membank's training step against the same step in PyTorch, alternating"
)]
struct StepArgs {
    /// Alternating rounds per case.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Architectures, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "small_cnn,resnet18"
    )]
    arch: Vec<Arch>,
    /// Views per sample (K), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    views: Vec<usize>,
    /// Samples per batch (B).
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Bank rows (N).
    #[arg(long, default_value_t = 5000)]
    bank: usize,
    /// Timed steps per measurement (default: 20 for the small CNN, 4 for ResNet-18).
    #[arg(long)]
    steps: Option<usize>,
    /// Untimed warm-up steps before them (default: 20 for the small CNN, 2 for ResNet-18).
    #[arg(long)]
    warmup: Option<usize>,
    /// Compute threads of each side (membank: RAYON_NUM_THREADS and OMP_NUM_THREADS;
    /// PyTorch: torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// One case's measurements.
struct Case {
    label: String,
    membank: Vec<f64>,
    pytorch: Vec<f64>,
    first_loss: [f64; 2],
}

/// `ln E[exp(u/τ)]` for `u = f·v`, f a fixed unit vector and v uniform on the unit sphere of
/// R^d: u has density ∝ (1 − u²)^((d−3)/2) on [−1, 1] (Simpson's rule, in log space).
fn log_mean_exp_on_sphere(d: usize, tau: f64) -> f64 {
    let a = (d as f64 - 3.0) / 2.0;
    let intervals = 20_000;
    let h = 2.0 / intervals as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..=intervals {
        let u = -1.0 + i as f64 * h;
        let base = if a == 0.0 {
            1.0
        } else {
            (a * (1.0 - u * u).max(0.0).ln()).exp()
        };
        let w = match i {
            0 => 1.0,
            i if i == intervals => 1.0,
            i if i % 2 == 1 => 4.0,
            _ => 2.0,
        };
        num += w * base * (u / tau).exp();
        den += w * base;
    }
    (num / den).ln()
}

/// The expected first-step loss with random unit bank rows, whatever the (unit) features:
/// `ln N + ln E[exp(f·v/τ)]` (the own row's logit has mean 0; the log-sum-exp over N rows is
/// within ~1e-4 of the log of its mean at N = 5,000), and a tolerance of four standard errors
/// of the mean own-row logit over `samples` independent samples (sd of f·v/τ ≈ 1/(τ√D)).
pub(crate) fn expected_first_loss(n: usize, d: usize, tau: f64, samples: usize) -> (f64, f64) {
    let mean = (n as f64).ln() + log_mean_exp_on_sphere(d, tau);
    let tolerance = 4.0 / (tau * (d as f64).sqrt() * (samples as f64).sqrt());
    (mean, tolerance)
}

fn threads_env(cmd: &mut Command, threads: usize) {
    cmd.env("RAYON_NUM_THREADS", threads.to_string())
        .env("OMP_NUM_THREADS", threads.to_string());
}

/// Parses `args` (after `compare step`) and runs the comparison with membank on `backend`.
pub(crate) fn compare_step(backend: Backend, args: &[String]) -> Result<()> {
    let a = StepArgs::parse_from(
        std::iter::once("compare step".to_string()).chain(args.iter().cloned()),
    );
    if a.repeats == 0
        || a.batch == 0
        || a.views.contains(&0)
        || a.threads == 0
        || a.steps == Some(0)
    {
        bail!("--repeats, --batch, --views, --threads and --steps must be > 0");
    }
    if a.batch > a.bank {
        bail!(
            "--batch {} exceeds --bank {}: a batch holds distinct samples",
            a.batch,
            a.bank
        );
    }
    let python = peer::python()?;
    let ours = peer::bench_example(backend, "step_views")?;
    let peer_script = workspace_root().join("benches/peer/step_torch.py");
    let (expected, tolerance) = expected_first_loss(a.bank, DIM, TAU, a.batch);
    eprintln!(
        "xtask: B = {}, N = {}, D = {DIM}, τ = {TAU}, {} threads each; synthetic batches, no \
         augmentation on the step thread; consistency 0; warm-up steps excluded: {}",
        a.batch,
        a.bank,
        a.threads,
        a.warmup.map_or_else(
            || format!(
                "{} (small CNN), {} (ResNet-18)",
                Arch::SmallCnn.default_warmup(),
                Arch::Resnet18.default_warmup()
            ),
            |w| w.to_string()
        )
    );
    let mut cases = Vec::new();
    for &arch in &a.arch {
        for &k in &a.views {
            let steps = a.steps.unwrap_or_else(|| arch.default_steps()).to_string();
            let warmup = a
                .warmup
                .unwrap_or_else(|| arch.default_warmup())
                .to_string();
            let label = format!("{} K={k}", arch.name());
            let mut case = Case {
                label,
                membank: vec![],
                pytorch: vec![],
                first_loss: [0.0; 2],
            };
            let common = [
                "--arch".to_string(),
                arch.name().into(),
                "--views".into(),
                k.to_string(),
                "--batch".into(),
                a.batch.to_string(),
                "--bank".into(),
                a.bank.to_string(),
                "--steps".into(),
                steps.clone(),
                "--warmup".into(),
                warmup.clone(),
            ];
            for round in 1..=a.repeats {
                let mut cmd = Command::new(&ours);
                backend.prepare(&mut cmd)?;
                threads_env(&mut cmd, a.threads);
                cmd.args(&common);
                let ours_result = run_for_json(cmd)?;
                let mut cmd = Command::new(&python);
                cmd.arg(&peer_script)
                    .args(&common)
                    .args(["--threads", &a.threads.to_string()]);
                let peer_result = run_for_json(cmd)?;
                for (i, (side, r)) in [("membank", &ours_result), ("PyTorch", &peer_result)]
                    .iter()
                    .enumerate()
                {
                    let v = number(r, "views_per_s")?;
                    let loss = number(r, "first_loss")?;
                    eprintln!(
                        "round {round}: {}: {side:<8} {v:>9.1} views/s  (first-step loss {loss:.4})",
                        case.label
                    );
                    if i == 0 {
                        case.membank.push(v)
                    } else {
                        case.pytorch.push(v)
                    }
                    case.first_loss[i] = loss;
                }
            }
            cases.push(case);
        }
    }
    report(&a, backend, &cases, expected, tolerance)
}

/// Prints the medians and ratios; fails when a first-step loss is off its expected value.
fn report(
    a: &StepArgs,
    backend: Backend,
    cases: &[Case],
    expected: f64,
    tolerance: f64,
) -> Result<()> {
    println!(
        "\nmedians of {} alternating rounds (views/s; membank on {}, B = {}, N = {}, {} threads each, \
         synthetic batches, no augmentation on the step thread, consistency 0):",
        a.repeats,
        backend.feature(),
        a.batch,
        a.bank,
        a.threads
    );
    println!(
        "  {:<16} {:>10} {:>10} {:>16}   first-step loss membank / PyTorch",
        "case", "membank", "PyTorch", "membank/PyTorch"
    );
    let mut off = Vec::new();
    for c in cases {
        let (m, p) = (
            peer::median(c.membank.clone()),
            peer::median(c.pytorch.clone()),
        );
        println!(
            "  {:<16} {m:>10.1} {p:>10.1} {:>15.2}×   {:.4} / {:.4}",
            c.label,
            m / p,
            c.first_loss[0],
            c.first_loss[1]
        );
        for (side, loss) in ["membank", "PyTorch"].iter().zip(c.first_loss) {
            if (loss - expected).abs() > tolerance {
                off.push(format!("{}: {side}'s first-step loss {loss:.4}", c.label));
            }
        }
    }
    println!(
        "  expected first-step loss with random unit bank rows: ln N + ln E[exp(f·v/τ)] = \
         {expected:.4} ± {tolerance:.3} (ln N = {:.4})",
        (a.bank as f64).ln()
    );
    if !off.is_empty() {
        bail!(
            "first-step loss off {expected:.4} ± {tolerance:.3}: {}",
            off.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the sphere of R³, f·v is uniform on [−1, 1]: E[exp(u/τ)] = τ·sinh(1/τ).
    #[test]
    fn log_mean_exp_on_the_2_sphere_is_the_closed_form() {
        for tau in [0.5f64, 0.1] {
            let want = (tau * (1.0 / tau).sinh()).ln();
            let got = log_mean_exp_on_sphere(3, tau);
            assert!((got - want).abs() < 1e-6, "τ {tau}: {got} vs {want}");
        }
    }

    fn case(label: &str, first_loss: [f64; 2]) -> Case {
        Case {
            label: label.into(),
            membank: vec![100.0],
            pytorch: vec![200.0],
            first_loss,
        }
    }

    /// A first-step loss off its expected value fails the command, naming the case and side.
    #[test]
    fn a_first_step_loss_off_its_expected_value_fails() {
        let a = StepArgs::parse_from(["compare step"]);
        let (e, t) = expected_first_loss(a.bank, DIM, TAU, a.batch);
        let ok = [case("small_cnn K=1", [e - 0.9 * t, e + 0.9 * t])];
        assert!(report(&a, Backend::Flex, &ok, e, t).is_ok());
        let off = [case("small_cnn K=1", [e, e + 1.1 * t])];
        let err = report(&a, Backend::Flex, &off, e, t)
            .unwrap_err()
            .to_string();
        assert!(err.contains("small_cnn K=1: PyTorch's"), "{err}");
        assert!(!err.contains("membank's"), "{err}");
    }

    /// In high dimension f·v is nearly N(0, 1/D): ln E[exp(u/τ)] → 1/(2Dτ²) (from below: the
    /// sphere's marginal has lighter tails).
    #[test]
    fn log_mean_exp_approaches_the_gaussian_value() {
        let gauss = 1.0 / (2.0 * 128.0 * 0.01);
        let got = log_mean_exp_on_sphere(128, 0.1);
        assert!(got < gauss && gauss - got < 0.02, "{got} vs {gauss}");
    }
}
