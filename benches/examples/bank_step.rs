//! membank's step against the bank alone, on inputs read from `.npy` files: the similarities, the
//! full-softmax instance loss with its closed-form gradient (`bank_losses::SoftmaxObjective`, the
//! trainer's path), the backward to the features and the bank update, next to one bare
//! `[B·K, D] × [D, N]` matmul (the step needs two).
//!
//! ```sh
//! cargo run --release -p membank-benches --example bank_step -- DIR [--views 2] [--steps 10] \
//!     [--warmup 2] [--tau 0.1] [--momentum 0.5] [--consistency 0] [--merged] [--block-rows 0] \
//!     [--out OUT]
//! ```
//! DIR holds `bank.npy` (`[N, D]` float32 unit rows), `features.npy` (`[B·K, D]` float32 unit
//! rows, sample-major as in `bank_core::ViewLayout`) and `indices.npy` (`[B]` int64, distinct bank
//! rows); `benches/peer/bank_step_torch.py make` writes them, and `groups.npy` (`[N]` int64
//! merge-group ids), which `--merged` reads: the loss is then the merged-positives one
//! (`Positives::Groups`). `--consistency λ` adds the consistency loss between each sample's views:
//! with both, the full method's step. `--out` receives the first step's
//! results from the initial bank, for `bank_step_torch.py step --check`: `grad.npy`
//! (`∂L/∂features`, `[B·K, D]`), `rows.npy` (the B updated bank rows) and `loss.json`. Then the
//! same step runs `--warmup` + `--steps` times on the bank it keeps updating, as training does,
//! and the bare matmul as many times. On a host backend (flex, ndarray) `products_ms` times the
//! host step's two products alone (`bank_core::host_gemm::gemm_threaded` into buffers kept
//! between runs, as `bank_losses` multiplies on burn-flex), the floor of that step; `null` on a
//! GPU. Every timing ends with the device synchronised. Prints one
//! JSON line with the median milliseconds of each, the counterpart of `bank_step_torch.py`
//! (`cargo xtask bench compare bank` runs both), and on Linux the resident memory before the
//! steps and its peak during them (before the bare matmul, whose `[B·K, N]` product would
//! dominate it). `--block-rows R` reads the bank in blocks of R rows (`method.bank_block_rows`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use bank_core::host_gemm::{self, MatRef};
use bank_core::{MemoryBank, MemoryBankConfig, ViewLayout};
use bank_losses::{ConsistencyLoss, Positives, SoftmaxObjective};
use burn::backend::Autodiff;
use burn::prelude::*;
use clap::Parser;
use membank_benches::Bench;

#[path = "common/npy.rs"]
mod npy;

type A = Autodiff<Bench>;

#[derive(Parser)]
#[command(about = "membank's step against the bank (closed-form softmax loss, backward, update)")]
struct Args {
    /// Folder with bank.npy, features.npy and indices.npy.
    inputs: PathBuf,
    /// Views per sample (K): features.npy holds B·K rows.
    #[arg(long, default_value_t = 2)]
    views: usize,
    /// Temperature τ.
    #[arg(long, default_value_t = 0.1)]
    tau: f64,
    /// Bank momentum m (weight of the old row).
    #[arg(long, default_value_t = 0.5)]
    momentum: f64,
    /// Timed steps (and bare matmuls).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Weight λ of the consistency loss between each sample's views (0: off).
    #[arg(long, default_value_t = 0.0)]
    consistency: f64,
    /// Merged positives: every row of the target's group (`groups.npy`) is a positive.
    #[arg(long)]
    merged: bool,
    /// Bank rows per block of the similarities (0: all at once; `method.bank_block_rows`).
    #[arg(long, default_value_t = 0)]
    block_rows: usize,
    /// Where to write the first step's gradient, updated rows and loss.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The step's inputs on the device.
struct Inputs {
    bank: MemoryBank<A>,
    features: Tensor<A, 2>,
    /// Bank index of every feature row, `[B·K]`.
    targets: Tensor<A, 1, Int>,
    /// Bank index of every sample, `[B]`.
    samples: Vec<i64>,
    layout: ViewLayout,
    /// Own or merged positives (`--merged`).
    positives: Positives<A>,
}

fn load(args: &Args, device: &Device<A>) -> anyhow::Result<Inputs> {
    let dir = &args.inputs;
    let (bank, bank_shape) = npy::read::<f32>(&dir.join("bank.npy"))?;
    let (features, f_shape) = npy::read::<f32>(&dir.join("features.npy"))?;
    let (samples, i_shape) = npy::read::<i64>(&dir.join("indices.npy"))?;
    let (&[n, d], &[m, fd], &[b]) = (&bank_shape[..], &f_shape[..], &i_shape[..]) else {
        bail!(
            "{}: expected bank [N, D], features [M, D], indices [B]",
            dir.display()
        );
    };
    let layout = ViewLayout::from_rows(m, args.views)
        .filter(|l| l.samples == b && fd == d)
        .with_context(|| {
            format!(
                "{}: features [{m}, {fd}] are not B·K × D rows for B = {b}, K = {}, D = {d}",
                dir.display(),
                args.views
            )
        })?;
    if let Some(bad) = samples.iter().find(|&&i| !(0..n as i64).contains(&i)) {
        bail!(
            "{}: index {bad} outside the bank's {n} rows",
            dir.join("indices.npy").display()
        );
    }
    let bank = MemoryBankConfig::new(n, d)
        .with_momentum(args.momentum)
        .init_from_features(Tensor::from_data(TensorData::new(bank, [n, d]), device))?;
    let targets = layout.expand(&samples);
    let positives = if args.merged {
        let path = dir.join("groups.npy");
        let (groups, g_shape) = npy::read::<i64>(&path)?;
        if g_shape != [n] {
            bail!(
                "{}: expected [{n}] group ids, found {g_shape:?}",
                path.display()
            );
        }
        Positives::Groups(Tensor::from_data(TensorData::new(groups, [n]), device))
    } else {
        Positives::Own
    };
    Ok(Inputs {
        bank,
        features: Tensor::from_data(TensorData::new(features, [m, d]), device),
        targets: Tensor::from_data(TensorData::new(targets, [m]), device),
        samples,
        layout,
        positives,
    })
}

/// One step: loss and `∂L/∂f` in closed form, handed to autodiff through the trainer's surrogate
/// `Σ f ⊙ ∂L/∂f`, read back as the model would receive it; then the bank update; then a sync.
fn step(objective: &SoftmaxObjective, x: &mut Inputs) -> anyhow::Result<(f32, Tensor<Bench, 2>)> {
    let f = x.features.clone().require_grad();
    let out = objective.eval(
        &x.bank.inner(),
        f.clone().inner(),
        x.targets.clone().inner(),
        &inner_positives(&x.positives),
        x.layout,
    )?;
    let surrogate = (f.clone() * Tensor::from_inner(out.features_grad)).sum();
    let grad = f
        .grad(&surrogate.backward())
        .context("no gradient reached the features")?;
    x.bank
        .update(x.targets.clone(), f.detach(), x.layout.views)?;
    let loss = out.loss.into_scalar();
    sync()?;
    Ok((loss, grad))
}

/// `positives` on the inner backend.
fn inner_positives(positives: &Positives<A>) -> Positives<Bench> {
    match positives {
        Positives::Own => Positives::Own,
        Positives::Groups(groups) => Positives::Groups(groups.clone().inner()),
    }
}

fn sync() -> anyhow::Result<()> {
    <Bench as Backend>::sync(&Default::default()).map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn write_first(out: &Path, loss: f32, grad: Tensor<Bench, 2>, x: &Inputs) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let dims = grad.dims();
    npy::write(
        &out.join("grad.npy"),
        &dims,
        &grad
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    )?;
    let device = x.features.device();
    let which = Tensor::<A, 1, Int>::from_data(
        TensorData::new(x.samples.clone(), [x.samples.len()]),
        &device,
    );
    let rows = x.bank.select(which).inner();
    let dims = rows.dims();
    npy::write(
        &out.join("rows.npy"),
        &dims,
        &rows
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    )?;
    let path = out.join("loss.json");
    std::fs::write(&path, format!("{{\"loss\": {loss}}}\n"))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Milliseconds of `f` run `warmup + steps` times, the last `steps` kept.
fn time(
    warmup: usize,
    steps: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let start = Instant::now();
        f()?;
        if i >= warmup {
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(ms)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    // As the bank-train binary does: LibTorch's freed tensors reused from glibc's heap.
    bank_train::malloc::keep_freed_memory();
    let args = Args::parse();
    if args.steps == 0 {
        bail!("--steps must be > 0");
    }
    let device = Default::default();
    let mut x = load(&args, &device)?;
    // 0 is off; anything else must be a valid weight (ConsistencyLoss refuses NaN and < 0).
    let consistency = (args.consistency != 0.0)
        .then(|| ConsistencyLoss::new(args.consistency))
        .transpose()?;
    let objective = SoftmaxObjective::new(args.tau)?
        .with_consistency(consistency)
        .with_block_rows(args.block_rows);
    sync()?;
    let rss_before = memory::reset_peak();
    let (loss, grad) = step(&objective, &mut x)?;
    if let Some(out) = &args.out {
        write_first(out, loss, grad, &x)?;
    }
    let step_ms = time(args.warmup, args.steps, || {
        step(&objective, &mut x).map(|_| ())
    })?;
    let step_peak = memory::peak();
    let (f, bank) = (x.features.clone().inner(), x.bank.rows().inner());
    let matmul_ms = time(args.warmup, args.steps, || {
        let product = f.clone().matmul(bank.clone().transpose());
        // One value read back, so that a lazy backend computes the product.
        let _ = product.slice([0..1, 0..1]).into_data();
        sync()
    })?;
    let [n, d] = bank.dims();
    let name = <Bench as Backend>::name(&device);
    let products_ms = if name.contains("flex") || name.contains("ndarray") {
        let (f, bank) = (host_values(f)?, host_values(bank)?);
        let products = HostProducts::new(&f, &bank, d);
        let ms = time(args.warmup, args.steps, || {
            products.run();
            Ok(())
        })?;
        format!("{}", median(ms))
    } else {
        "null".into()
    };
    println!(
        "{{\"tool\": \"membank\", \"backend\": \"{name}\", \"rows\": {n}, \"dim\": {d}, \"batch_rows\": {}, \"views\": {}, \"consistency\": {}, \"merged\": {}, \"loss\": {loss}, \"step_ms\": {}, \"matmul_ms\": {}, \"products_ms\": {products_ms}, \"rss_before_steps_mb\": {}, \"peak_rss_steps_mb\": {}}}",
        x.layout.rows(),
        x.layout.views,
        args.consistency,
        args.merged,
        median(step_ms),
        median(matmul_ms),
        memory::json(rss_before),
        memory::json(step_peak)
    );
    Ok(())
}

/// The values of a host tensor.
fn host_values(t: Tensor<Bench, 2>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// The host step's two products alone, by the same calls (`host_gemm::gemm_threaded`) into
/// buffers kept between runs: the floor of `bank_losses`' host step on burn-flex.
struct HostProducts<'a> {
    features: &'a [f32],
    bank: &'a [f32],
    dim: usize,
    /// `[M, N]` and `[M, D]`, reused.
    out: std::cell::RefCell<(Vec<f32>, Vec<f32>)>,
}

impl<'a> HostProducts<'a> {
    fn new(features: &'a [f32], bank: &'a [f32], dim: usize) -> Self {
        let (m, n) = (features.len() / dim, bank.len() / dim);
        let out = (vec![0.0; m * n], vec![0.0; m * dim]);
        Self {
            features,
            bank,
            dim,
            out: std::cell::RefCell::new(out),
        }
    }

    /// `z = f·Vᵀ`, then `g = z·V`.
    fn run(&self) {
        let (d, mut out) = (self.dim, self.out.borrow_mut());
        let (m, n) = (self.features.len() / d, self.bank.len() / d);
        let (z, g) = &mut *out;
        let (lhs, rhs) = (
            MatRef::rows(self.features, d),
            MatRef::transposed(self.bank, d),
        );
        host_gemm::gemm_threaded(m, n, d, z, n, false, lhs, rhs);
        let (lhs, rhs) = (MatRef::rows(z, n), MatRef::rows(self.bank, d));
        host_gemm::gemm_threaded(m, d, n, g, d, false, lhs, rhs);
    }
}

/// The process's resident memory (Linux: `/proc/self/status`); `None` elsewhere.
mod memory {
    /// A field of `/proc/self/status` in MB.
    fn status_mb(field: &str) -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// The resident memory now, after resetting the peak (`VmHWM`) to it.
    pub fn reset_peak() -> Option<f64> {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        status_mb("VmRSS:")
    }

    /// The peak resident memory since [`reset_peak`].
    pub fn peak() -> Option<f64> {
        status_mb("VmHWM:")
    }

    /// A JSON number rounded to MB, or `null`.
    pub fn json(mb: Option<f64>) -> String {
        mb.map_or("null".into(), |v| format!("{v:.0}"))
    }
}
