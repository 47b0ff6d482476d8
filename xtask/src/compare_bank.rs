//! `cargo xtask bench compare bank`: membank's step against the bank alone
//! (`benches/examples/bank_step.rs`: similarities, full-softmax loss in closed form, backward to
//! the features, bank update) against the same step written in PyTorch
//! (`benches/peer/bank_step_torch.py`), on the same inputs, alternating: every measurement, the
//! medians, their ratio, and each side's step against two of its own bare matmuls, after
//! checking that the two compute the same loss, gradient and updated rows.

use std::process::Command;

use anyhow::{Result, bail};
use clap::Parser;

use crate::result_line::{number, run_for_json};
use crate::{Backend, peer, run, workspace_root};

#[derive(Parser)]
#[command(
    name = "cargo xtask bench compare bank",
    about = "membank's step against the bank against the same step in PyTorch, alternating"
)]
struct BankArgs {
    /// Bank rows (N).
    #[arg(long, default_value_t = 50_000)]
    rows: usize,
    /// Row dimension (D).
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Samples per batch (B); the batch has B·K rows.
    #[arg(long, default_value_t = 256)]
    samples: usize,
    /// Views per sample (K).
    #[arg(long, default_value_t = 2)]
    views: usize,
    /// Weight λ of the consistency loss between each sample's views (0: off).
    #[arg(long, default_value_t = 0.0)]
    consistency: f64,
    /// Samples whose bank row is merged with one other row (0: the instance loss; more: the
    /// merged-positives loss over every row's group).
    #[arg(long, default_value_t = 0)]
    merged_pairs: usize,
    /// Alternating rounds.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Timed steps per measurement (each side reports their median).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Compute threads of each side (membank: RAYON_NUM_THREADS and OMP_NUM_THREADS;
    /// PyTorch: torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Largest difference allowed between the two sides' gradients and updated rows, relative to
    /// the largest value of each (float32 rounding of two summation orders).
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
}

/// Parses `args` (after `compare bank`) and runs the comparison with membank on `backend`.
pub(crate) fn compare_bank(backend: Backend, args: &[String]) -> Result<()> {
    let a = BankArgs::parse_from(
        std::iter::once("compare bank".to_string()).chain(args.iter().cloned()),
    );
    if [
        a.rows, a.dim, a.samples, a.views, a.repeats, a.steps, a.threads,
    ]
    .contains(&0)
        || a.samples > a.rows
    {
        bail!("every option must be > 0, and --samples at most --rows");
    }
    if !(a.consistency >= 0.0 && a.consistency.is_finite()) {
        bail!("--consistency {} must be finite and ≥ 0", a.consistency);
    }
    if a.consistency > 0.0 && a.views < 2 {
        bail!("--consistency compares a sample's views: it needs --views 2 or more");
    }
    if a.merged_pairs > a.samples.min(a.rows - a.samples) {
        bail!(
            "--merged-pairs {} must be at most {} (each pair needs a sample and a row outside \
             the batch)",
            a.merged_pairs,
            a.samples.min(a.rows - a.samples)
        );
    }
    let python = peer::python()?;
    let ours = peer::bench_example(backend, "bank_step")?;
    let script = workspace_root().join("benches/peer/bank_step_torch.py");
    let name = format!(
        "n{}-d{}-b{}-k{}-p{}",
        a.rows, a.dim, a.samples, a.views, a.merged_pairs
    );
    let objective = objective_args(&a);
    let inputs = workspace_root().join("target/compare/bank").join(&name);
    let first = inputs.join("membank-first-step");
    let mut make = Command::new(&python);
    make.arg(&script)
        .arg("make")
        .arg("--out")
        .arg(&inputs)
        .args([
            "--rows",
            &a.rows.to_string(),
            "--dim",
            &a.dim.to_string(),
            "--samples",
            &a.samples.to_string(),
            "--views",
            &a.views.to_string(),
            "--merged-pairs",
            &a.merged_pairs.to_string(),
        ]);
    run(make)?;
    eprintln!(
        "xtask: the step against the bank, N = {}, D = {}, B·K = {}·{}, τ 0.1, m 0.5, {}, {} \
         threads each, median of {} steps per measurement",
        a.rows,
        a.dim,
        a.samples,
        a.views,
        loss_name(&a),
        a.threads,
        a.steps
    );
    let (mut ours_ms, mut torch_ms) = (Vec::new(), Vec::new());
    let (mut ours_mm, mut torch_mm) = (Vec::new(), Vec::new());
    let mut ours_products = Vec::new();
    for round in 1..=a.repeats {
        let mut cmd = Command::new(&ours);
        backend.prepare(&mut cmd)?;
        cmd.env("RAYON_NUM_THREADS", a.threads.to_string())
            .env("OMP_NUM_THREADS", a.threads.to_string())
            .arg(&inputs)
            .args([
                "--views",
                &a.views.to_string(),
                "--steps",
                &a.steps.to_string(),
            ])
            .args(&objective);
        if round == 1 {
            cmd.arg("--out").arg(&first);
        }
        let r = run_for_json(cmd)?;
        let (s, m) = (number(&r, "step_ms")?, number(&r, "matmul_ms")?);
        eprintln!("round {round}: membank {s:>8.1} ms a step, {m:>7.1} ms a bare matmul");
        ours_ms.push(s);
        ours_mm.push(m);
        // The host step's own two products (null on a GPU backend).
        if let Some(p) = r.get("products_ms").and_then(serde_json::Value::as_f64) {
            ours_products.push(p);
        }

        let mut cmd = Command::new(&python);
        cmd.arg(&script).arg("step").arg(&inputs).args([
            "--views",
            &a.views.to_string(),
            "--steps",
            &a.steps.to_string(),
            "--threads",
            &a.threads.to_string(),
        ]);
        cmd.args(&objective);
        if round == 1 {
            cmd.arg("--check").arg(&first);
        }
        let r = run_for_json(cmd)?;
        let (s, m) = (number(&r, "step_ms")?, number(&r, "matmul_ms")?);
        eprintln!("round {round}: PyTorch {s:>8.1} ms a step, {m:>7.1} ms a bare matmul");
        torch_ms.push(s);
        torch_mm.push(m);
        if round == 1 {
            check_agreement(&r, a.tolerance)?;
        }
    }
    let (s, t) = (peer::median(ours_ms), peer::median(torch_ms));
    let (sm, tm) = (peer::median(ours_mm), peer::median(torch_mm));
    println!(
        "\nmedians of {} alternating rounds (N = {}, D = {}, B·K = {}, {}, membank on {}, {} \
         threads each):",
        a.repeats,
        a.rows,
        a.dim,
        a.samples * a.views,
        loss_name(&a),
        backend.feature(),
        a.threads
    );
    println!(
        "  {:>9} {:>10} {:>12} {:>20}",
        "", "step (ms)", "matmul (ms)", "step / two matmuls"
    );
    println!(
        "  {:>9} {s:>10.1} {sm:>12.1} {:>19.2}×",
        "membank",
        s / (2.0 * sm)
    );
    println!(
        "  {:>9} {t:>10.1} {tm:>12.1} {:>19.2}×",
        "PyTorch",
        t / (2.0 * tm)
    );
    if !ours_products.is_empty() {
        let p = peer::median(ours_products);
        println!(
            "  membank's step / its own two products ({p:.1} ms: the `gemm` crate into kept \
             buffers, bank_core::host_gemm): {:.2}×",
            s / p
        );
    }
    println!("  membank's speed / PyTorch's: {:.2}×", t / s);
    Ok(())
}

/// The loss options both sides take: `--consistency λ` and `--merged` where asked for.
fn objective_args(a: &BankArgs) -> Vec<String> {
    let mut args = Vec::new();
    if a.consistency > 0.0 {
        args.extend(["--consistency".to_string(), a.consistency.to_string()]);
    }
    if a.merged_pairs > 0 {
        args.push("--merged".to_string());
    }
    args
}

/// The loss, in words: the instance loss or merged positives, and the consistency weight.
fn loss_name(a: &BankArgs) -> String {
    let positives = if a.merged_pairs > 0 {
        format!("merged positives ({} pairs)", a.merged_pairs)
    } else {
        "instance loss".to_string()
    };
    if a.consistency > 0.0 {
        format!("{positives} + consistency λ {}", a.consistency)
    } else {
        positives
    }
}

/// Fails loudly unless both sides computed the same first step: loss, `∂L/∂f` and updated rows
/// within `tolerance` (relative to the largest value of each; the loss relative to itself).
fn check_agreement(torch: &serde_json::Value, tolerance: f64) -> Result<()> {
    let grad = number(torch, "grad_rel_diff")?;
    let rows = number(torch, "rows_rel_diff")?;
    let loss = number(torch, "loss_diff")? / number(torch, "loss")?.abs().max(1e-12);
    eprintln!(
        "xtask: first step, membank against PyTorch: ∂L/∂f within {grad:.2e}, updated rows within \
         {rows:.2e}, loss within {loss:.2e} (relative)"
    );
    // A NaN fails too.
    if [grad, rows, loss]
        .iter()
        .any(|d| d.is_nan() || *d > tolerance)
    {
        bail!(
            "membank's and PyTorch's steps disagree: ∂L/∂f {grad:.2e}, updated rows {rows:.2e}, \
             loss {loss:.2e} (relative; at most {tolerance:.0e} allowed)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torch(grad: f64, rows: f64, loss_diff: f64) -> serde_json::Value {
        serde_json::json!({"grad_rel_diff": grad, "rows_rel_diff": rows, "loss": 2.0,
            "loss_diff": loss_diff})
    }

    #[test]
    fn disagreeing_steps_fail_loudly() {
        assert!(check_agreement(&torch(1e-6, 1e-7, 1e-7), 1e-4).is_ok());
        assert!(check_agreement(&torch(1e-4, 1e-4, 2e-4), 1e-4).is_ok());
        let grad = check_agreement(&torch(2e-4, 0.0, 0.0), 1e-4).unwrap_err();
        assert!(grad.to_string().contains("∂L/∂f 2.00e-4"), "{grad}");
        assert!(check_agreement(&torch(0.0, 2e-4, 0.0), 1e-4).is_err());
        assert!(check_agreement(&torch(0.0, 0.0, 4e-4), 1e-4).is_err());
        assert!(check_agreement(&torch(f64::NAN, 0.0, 0.0), 1e-4).is_err());
        assert!(check_agreement(&serde_json::json!({"loss": 2.0}), 1e-4).is_err());
    }
}
