//! `cargo xtask bench compare search`: membank's all-rows exact top-k search
//! (`benches/examples/search_topk.rs`, bank-mining's `nearest_neighbours`) against FAISS's
//! `IndexFlatIP` (`benches/peer/search_faiss.py`) on the same random unit rows, alternating:
//! every measurement, the medians and their ratio per size, after checking that the two find the
//! same neighbours.

use std::process::Command;

use anyhow::{Result, bail};
use clap::Parser;

use crate::result_line::{number, run_for_json};
use crate::{Backend, peer, run, workspace_root};

#[derive(Parser)]
#[command(
    name = "cargo xtask bench compare search",
    about = "membank's all-rows exact top-k search against FAISS IndexFlatIP, alternating"
)]
struct SearchArgs {
    /// Bank sizes (rows of D = 128), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50000,200000")]
    rows: Vec<usize>,
    /// Alternating rounds per size.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Neighbours per row (the row itself excluded on both sides).
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Compute threads of each side (membank: RAYON_NUM_THREADS and OMP_NUM_THREADS; FAISS:
    /// faiss.omp_set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Least recall of membank's neighbours against FAISS's.
    #[arg(long, default_value_t = 0.999)]
    min_recall: f64,
    /// membank's search engine: `auto` (what training uses: the host engine on a CPU backend),
    /// `host` or `device` (bank-mining's `SearchEngine`).
    #[arg(long, default_value = "auto", value_parser = ["auto", "host", "device"])]
    engine: String,
}

/// Parses `args` (after `compare search`) and runs the comparison with membank on `backend`.
pub(crate) fn compare_search(backend: Backend, args: &[String]) -> Result<()> {
    let a = SearchArgs::parse_from(
        std::iter::once("compare search".to_string()).chain(args.iter().cloned()),
    );
    if a.repeats == 0 || a.threads == 0 || a.rows.iter().any(|&n| n <= a.k) || a.k == 0 {
        bail!("--repeats, --threads and --k must be > 0, and every --rows above --k");
    }
    let python = peer::python()?;
    let ours = peer::bench_example(backend, "search_topk")?;
    let script = workspace_root().join("benches/peer/search_faiss.py");
    let folder = workspace_root().join("target/compare/search");
    std::fs::create_dir_all(&folder)?;
    eprintln!(
        "xtask: all-rows exact top-{} (each row against the whole bank, itself excluded on both \
         sides), D = 128, {} threads each; search only timed",
        a.k, a.threads
    );
    let mut results = Vec::new();
    for &n in &a.rows {
        let rows = folder.join(format!("rows-{n}-seed0.npy"));
        if !rows.is_file() {
            let mut make = Command::new(&python);
            make.arg(&script)
                .args(["make", "--rows", &n.to_string(), "--out"])
                .arg(&rows);
            run(make)?;
        }
        let topk = folder.join(format!("membank-top{}-{n}.npy", a.k));
        let (mut ours_q, mut faiss_q) = (Vec::new(), Vec::new());
        for round in 1..=a.repeats {
            let mut cmd = Command::new(&ours);
            backend.prepare(&mut cmd)?;
            cmd.env("RAYON_NUM_THREADS", a.threads.to_string())
                .env("OMP_NUM_THREADS", a.threads.to_string())
                .arg(&rows)
                .args(["--k", &a.k.to_string(), "--engine", &a.engine]);
            if round == 1 {
                cmd.arg("--out").arg(&topk);
            }
            let r = run_for_json(cmd)?;
            let (s, q) = (number(&r, "seconds")?, number(&r, "queries_per_s")?);
            let engine = r["engine"].as_str().unwrap_or("?");
            eprintln!(
                "round {round}: N = {n}: membank {s:>8.2} s  {q:>10.0} queries/s ({engine} engine)"
            );
            ours_q.push(q);

            let mut cmd = Command::new(&python);
            cmd.arg(&script).arg("search").arg(&rows).args([
                "--k",
                &a.k.to_string(),
                "--threads",
                &a.threads.to_string(),
            ]);
            if round == 1 {
                cmd.arg("--check").arg(&topk);
            }
            let r = run_for_json(cmd)?;
            let (s, q) = (number(&r, "seconds")?, number(&r, "queries_per_s")?);
            eprintln!("round {round}: N = {n}: FAISS   {s:>8.2} s  {q:>10.0} queries/s");
            faiss_q.push(q);
            if round == 1 {
                check_agreement(&r, n, a.min_recall)?;
            }
        }
        results.push((n, peer::median(ours_q), peer::median(faiss_q)));
    }
    println!(
        "\nmedians of {} alternating rounds (all-rows exact top-{}, D = 128, itself excluded; \
         membank on {}, {} threads each):",
        a.repeats,
        a.k,
        backend.feature(),
        a.threads
    );
    println!(
        "  {:>8} {:>16} {:>16} {:>14}",
        "N", "membank q/s", "FAISS q/s", "membank/FAISS"
    );
    for (n, m, f) in results {
        println!(
            "  {n:>8} {m:>16.0} {f:>16.0} {:>13.2}×   ({:.2} s vs {:.2} s)",
            m / f,
            n as f64 / m,
            n as f64 / f
        );
    }
    Ok(())
}

/// Fails loudly unless membank's neighbours agree with FAISS's: recall ≥ `min_recall` and no row
/// listed as its own neighbour.
fn check_agreement(faiss: &serde_json::Value, n: usize, min_recall: f64) -> Result<()> {
    let recall = number(faiss, "recall")?;
    let own = number(faiss, "self_listed")?;
    eprintln!(
        "xtask: N = {n}: recall of membank's neighbours against FAISS's: {recall:.6}; rows listing \
         themselves: {own}"
    );
    // A NaN recall fails too.
    if recall.is_nan() || recall < min_recall || own != 0.0 {
        bail!(
            "membank's and FAISS's neighbours disagree at N = {n}: recall {recall:.6} (at least \
             {min_recall} required), {own} rows list themselves"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faiss(recall: f64, self_listed: u32) -> serde_json::Value {
        serde_json::json!({"recall": recall, "self_listed": self_listed})
    }

    #[test]
    fn disagreeing_neighbours_fail_loudly() {
        assert!(check_agreement(&faiss(1.0, 0), 10, 0.999).is_ok());
        assert!(check_agreement(&faiss(0.999, 0), 10, 0.999).is_ok());
        let low = check_agreement(&faiss(0.998, 0), 10, 0.999).unwrap_err();
        assert!(low.to_string().contains("recall 0.998000"), "{low}");
        assert!(check_agreement(&faiss(1.0, 1), 10, 0.999).is_err());
        assert!(check_agreement(&serde_json::json!({"self_listed": 0}), 10, 0.999).is_err());
    }
}
