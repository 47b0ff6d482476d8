//! membank's training step on synthetic batches: views per second through the whole step.
//!
//! ```sh
//! cargo run --release -p membank-benches --example step_views -- \
//!     [--arch small_cnn|resnet18] [--views K] [--batch B] [--bank N] [--steps S] [--warmup W]
//! ```
//! `bank_train::TrainState::new` (the run's model, SGD, bank of random unit rows) and
//! `bank_train::step::train_step` (forward, the full-softmax multi-view loss against the bank in
//! closed form, backward, SGD, bank update from the mean of the K views) with the default method
//! settings: τ 0.1, m 0.5, lr 0.03, momentum 0.9, weight decay 5e-4, consistency 0. Input: four
//! pre-generated batches, cycled: N(0, 1) images `[B·K, 3, 32, 32]` in the `ViewLayout` of K
//! views and B distinct random bank indices each, already on the device; no augmentation on the
//! step thread. W warm-up steps are excluded from the timing. Prints one JSON line, the
//! counterpart of `benches/peer/step_torch.py` (`cargo xtask bench compare step` runs both),
//! with every step's milliseconds (`step_ms`, warm-up included: the first steps hold the
//! kernels' compilation and autotuning on a GPU backend).

use std::time::Instant;

use bank_core::ViewLayout;
use bank_data::{Batch, HostBatch};
use bank_train::step::train_step;
use bank_train::{TrainConfig, TrainState};
use burn::backend::Autodiff;
use burn::prelude::*;
use clap::Parser;
use membank_benches::Bench;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

type A = Autodiff<Bench>;

/// Batches generated before the timing and cycled.
const BATCHES: usize = 4;

#[derive(Parser)]
#[command(about = "membank's training step on synthetic batches (views/s)")]
struct Args {
    /// `model.arch`: small_cnn or resnet18 (CIFAR stem).
    #[arg(long, default_value = "small_cnn")]
    arch: String,
    /// Views per sample (K).
    #[arg(long, default_value_t = 1)]
    views: usize,
    /// Samples per batch (B).
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Bank rows (N).
    #[arg(long, default_value_t = 5000)]
    bank: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Seed of the model, the bank and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print each step's milliseconds and loss to stderr as it ends (warm-up steps included);
    /// the JSON line has them too (`step_ms`).
    #[arg(long)]
    log_steps: bool,
}

/// A host batch of `layout.samples` distinct random indices below `bank` and N(0, 1) images.
fn synthetic_batch(rng: &mut StdRng, layout: ViewLayout, bank: usize) -> HostBatch {
    let samples = rand::seq::index::sample(rng, bank, layout.samples).into_vec();
    let images = (0..layout.rows() * 3 * 32 * 32)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    HostBatch {
        images,
        size: 32,
        channels: 3,
        samples,
        labels: None,
        layout,
    }
}

fn main() -> anyhow::Result<()> {
    // As the bank-train binary does: LibTorch's freed tensors reused from glibc's heap.
    bank_train::malloc::keep_freed_memory();
    let args = Args::parse();
    if args.steps == 0 || args.batch == 0 || args.views == 0 {
        anyhow::bail!("--steps, --batch and --views must be > 0");
    }
    if args.batch > args.bank {
        anyhow::bail!(
            "--batch {} exceeds --bank {}: a batch holds distinct samples",
            args.batch,
            args.bank
        );
    }
    let config = TrainConfig::load(
        None,
        &[
            format!("model.arch={}", args.arch),
            format!("train.views={}", args.views),
            format!("train.batch_size={}", args.batch),
            format!("seed={}", args.seed),
        ],
    )?;
    let device = Default::default();
    let mut state = TrainState::<A>::new(&config, args.bank, &device)?;
    let layout = ViewLayout::new(args.batch, args.views);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let batches: Vec<Batch<A>> = (0..BATCHES)
        .map(|_| synthetic_batch(&mut rng, layout, args.bank).into_device(&device))
        .collect();
    let (lr, tau) = (config.optim.lr, config.method.temperature);
    let mut losses = Vec::with_capacity(args.warmup + args.steps);
    let mut step_ms = Vec::with_capacity(args.warmup + args.steps);
    let mut start = Instant::now();
    for i in 0..args.warmup + args.steps {
        if i == args.warmup {
            start = Instant::now();
        }
        let step_start = Instant::now();
        // The loss is the step's one device→host read: it also waits for the device.
        let (next, loss) = train_step(state, batches[i % BATCHES].clone(), lr, tau, &device)?;
        state = next;
        losses.push(loss);
        step_ms.push(step_start.elapsed().as_secs_f64() * 1e3);
        if args.log_steps {
            eprintln!("step {}: {:.1} ms, loss {loss:.4}", i + 1, step_ms[i]);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let step_ms: Vec<String> = step_ms.iter().map(|ms| format!("{ms:.2}")).collect();
    let views = args.steps * layout.rows();
    println!(
        "{{\"tool\": \"membank\", \"backend\": \"{}\", \"arch\": \"{}\", \"views\": {}, \"batch\": {}, \"bank\": {}, \"steps\": {}, \"warmup\": {}, \"ln_bank\": {}, \"first_loss\": {}, \"last_loss\": {}, \"seconds\": {seconds}, \"views_per_s\": {}, \"step_ms\": [{}]}}",
        <Bench as Backend>::name(&device),
        args.arch,
        args.views,
        args.batch,
        args.bank,
        args.steps,
        args.warmup,
        (args.bank as f64).ln(),
        losses[0],
        losses[losses.len() - 1],
        views as f64 / seconds,
        step_ms.join(", ")
    );
    Ok(())
}
