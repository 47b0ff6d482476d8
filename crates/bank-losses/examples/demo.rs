//! Demonstration of the memory bank and the losses, end to end, on synthetic data:
//! `cargo xtask demo` (release build; `-- --help` for the knobs).
//!
//! N "images" are points in R^32 around 10 class centres. An augmentation adds Gaussian noise.
//! A linear network maps a view to a unit vector in R^128. Training is Bulat et al.'s recipe in
//! miniature: K views per sample, every view classified against the whole bank (multi-view loss),
//! plus the consistency loss, and one bank update per sample from the mean of its views.
//! The demo prints the loss and two accuracies per epoch: instance recognition (a fresh view's
//! nearest bank row is its own) and 1-NN class accuracy over the bank (labels never used in training).

use anyhow::Result;
use bank_core::{MemoryBank, MemoryBankConfig, ViewLayout, l2_normalize};
use bank_losses::{BankLogProbs, ConsistencyLoss, multi_view_loss};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::Device;
use clap::Parser;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

// The inner backend, chosen by Cargo feature (cuda > tch > wgpu > flex > ndarray).
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

const INPUT: usize = 32;
const CLASSES: usize = 10;

#[derive(Parser)]
#[command(about = "membank demo: bank + losses on synthetic data")]
struct Args {
    /// Number of samples (bank rows).
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Samples per batch (B).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Views per sample (K).
    #[arg(long, default_value_t = 2)]
    views: usize,
    /// Epochs.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Temperature τ.
    #[arg(long, default_value_t = 0.1)]
    tau: f64,
    /// Consistency weight λ (needs views ≥ 2).
    #[arg(long, default_value_t = 0.5)]
    consistency: f64,
    /// Learning rate.
    #[arg(long, default_value_t = 0.5)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Module, Debug)]
struct Net<B: Backend> {
    linear: Linear<B>,
}

impl<B: Backend> Net<B> {
    /// # Shapes
    /// - `x`: `[M, 32]` → `[M, 128]`, unit rows
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        l2_normalize(self.linear.forward(x))
    }
}

struct Data {
    points: Vec<f32>,
    labels: Vec<usize>,
}

impl Data {
    fn new(n: usize, rng: &mut StdRng) -> Self {
        let centres: Vec<f32> = (0..CLASSES * INPUT)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let labels: Vec<usize> = (0..n).map(|i| i % CLASSES).collect();
        let points = labels
            .iter()
            .flat_map(|&c| {
                let centre = centres[c * INPUT..(c + 1) * INPUT].to_vec();
                centre
                    .into_iter()
                    .map(|x| x + rng.random_range(-0.6..0.6))
                    .collect::<Vec<_>>()
            })
            .collect();
        Self { points, labels }
    }

    /// Views of `samples` in the [`ViewLayout`] order: the K views of a sample are adjacent.
    fn views<B: Backend>(
        &self,
        samples: &[usize],
        k: usize,
        rng: &mut StdRng,
        device: &B::Device,
    ) -> Tensor<B, 2> {
        let mut out = Vec::with_capacity(samples.len() * k * INPUT);
        for &s in samples {
            for _ in 0..k {
                out.extend(
                    self.points[s * INPUT..(s + 1) * INPUT]
                        .iter()
                        .map(|x| x + rng.random_range(-0.15..0.15)),
                );
            }
        }
        Tensor::from_data(TensorData::new(out, [samples.len() * k, INPUT]), device)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.batch > 0 && args.samples >= args.batch,
        "--batch must be in 1..=--samples"
    );
    let device = Default::default();
    let mut rng = StdRng::seed_from_u64(args.seed);
    <Train as Backend>::seed(&device, args.seed);
    let data = Data::new(args.samples, &mut rng);

    let mut net = Net {
        linear: LinearConfig::new(INPUT, 128).init::<Train>(&device),
    };
    let mut optim = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
        ))
        .init();
    let mut bank = MemoryBankConfig::new(args.samples, 128)
        .with_seed(args.seed)
        .init::<Train>(&device)?;
    let consistency = ConsistencyLoss::new(if args.views > 1 {
        args.consistency
    } else {
        0.0
    })?;

    println!("backend: {}", <Inner as Backend>::name(&device));
    println!(
        "{} samples, B = {}, K = {}, τ = {}, λ = {}",
        args.samples, args.batch, args.views, args.tau, consistency.weight
    );
    let mut order: Vec<usize> = (0..args.samples).collect();
    for epoch in 1..=args.epochs {
        order.shuffle(&mut rng);
        let (mut total, mut steps) = (0.0, 0);
        for batch in order.chunks_exact(args.batch) {
            let layout = ViewLayout::new(batch.len(), args.views);
            let idx: Vec<i64> = layout.expand(&batch.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let idx =
                Tensor::<Train, 1, Int>::from_data(TensorData::new(idx, [layout.rows()]), &device);
            let f = net.forward(data.views(batch, args.views, &mut rng, &device));
            let lp = BankLogProbs::from_features(&bank, f.clone(), args.tau)?;
            let mut loss = multi_view_loss(&lp, idx.clone(), layout)?;
            if consistency.weight > 0.0 {
                loss = loss + consistency.forward(&lp, layout)?;
            }
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(args.lr, net, grads);
            bank.update(idx, f, args.views)?;
            total += loss.into_scalar().elem::<f64>();
            steps += 1;
        }
        let (instance, class) = evaluate(&net.valid(), &bank.inner(), &data, &mut rng, &device);
        println!(
            "epoch {epoch:>2}  loss {:.4}  instance recognition {:.1}%  1-NN class accuracy {:.1}%",
            total / steps as f64,
            instance * 100.0,
            class * 100.0
        );
    }
    let path = std::env::temp_dir().join("membank-demo.bank");
    bank.save(&path)?;
    let reloaded = MemoryBank::<Inner>::load(&path, &device)?;
    println!(
        "bank saved to {} and reloaded: {} rows × {}",
        path.display(),
        reloaded.num_rows(),
        reloaded.dim()
    );
    Ok(())
}

/// Share of fresh views whose nearest bank row is their own, and share of bank rows whose nearest
/// other row has the same class.
fn evaluate(
    net: &Net<Inner>,
    bank: &MemoryBank<Inner>,
    data: &Data,
    rng: &mut StdRng,
    device: &Device<Inner>,
) -> (f64, f64) {
    let n = data.labels.len();
    let all: Vec<usize> = (0..n).collect();
    let f = net.forward(data.views(&all, 1, rng, device));
    let nearest: Vec<i64> = bank
        .similarities(f)
        .unwrap()
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    let instance = nearest
        .iter()
        .enumerate()
        .filter(|(i, j)| *i as i64 == **j)
        .count() as f64
        / n as f64;
    let rows = bank.rows();
    let self_sim = Tensor::<Inner, 2>::eye(n, device) * 10.0;
    let nn: Vec<i64> = (bank.similarities(rows).unwrap() - self_sim)
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    let class = nn
        .iter()
        .enumerate()
        .filter(|(i, j)| data.labels[*i] == data.labels[**j as usize])
        .count() as f64
        / n as f64;
    (instance, class)
}
