//! Linear probe: a linear classifier trained with labels on frozen features of the training
//! split, reported on the test split (top-1, top-5).
//!
//! Recipe (documented, seeded, its own seed): features are standardised with the training
//! split's per-dimension mean and std; a bias-ful linear layer starts at zero; cross-entropy;
//! SGD with momentum 0.9 and weight decay `weight_decay` on mini-batches of `batch_size` in a
//! seeded shuffle; the learning rate follows a cosine from `lr` to 0 over `epochs`. The problem
//! is convex, so the zero start and the seed make the result reproducible.

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::features::{host, to_tensor};
use crate::{Error, Result};

/// The probe's recipe (`[eval.linear]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearProbeConfig {
    /// Passes over the training features.
    pub epochs: usize,
    /// Features per SGD step.
    pub batch_size: usize,
    /// Starting learning rate (cosine to 0).
    pub lr: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Seed of the mini-batch shuffle (the probe's own, not the run's).
    pub seed: u64,
}

impl Default for LinearProbeConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 256,
            lr: 0.1,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

/// Top-1 and top-5 accuracy of the probe on the test split, in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeAccuracy {
    /// Fraction whose highest logit is the right class.
    pub top1: f64,
    /// Fraction whose right class is among the five highest logits.
    pub top5: f64,
}

/// A labelled feature matrix on the host, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Labelled<'a> {
    /// `[N, dim]`.
    pub features: &'a [f32],
    /// Feature dimension.
    pub dim: usize,
    /// `[N]`, class indices.
    pub labels: &'a [u32],
}

/// Trains the probe on `train` and reports it on `test` (labels in `0..classes`).
///
/// # Errors
/// [`Error::Config`] when a set is empty, the dimensions differ, or a label is out of range.
pub fn linear_probe<B: AutodiffBackend>(
    train: Labelled<'_>,
    test: Labelled<'_>,
    classes: usize,
    config: &LinearProbeConfig,
    device: &B::Device,
) -> Result<ProbeAccuracy> {
    check(&train, &test, classes, config)?;
    let (mean, std) = standardisation(train.features, train.dim);
    let x = standardise::<B>(train.features, train.dim, &mean, &std, device);
    let n = train.labels.len();
    let y: Vec<i64> = train.labels.iter().map(|&l| i64::from(l)).collect();
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [n]), device);
    let mut model: Linear<B> = LinearConfig::new(train.dim, classes)
        .with_initializer(Initializer::Zeros)
        .init(device);
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_momentum(0.9)))
        .with_weight_decay(
            (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32)),
        )
        .init::<B, Linear<B>>();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let steps_per_epoch = n.div_ceil(config.batch_size);
    let total = (config.epochs * steps_per_epoch) as f64;
    let mut step = 0usize;
    for _ in 0..config.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(config.batch_size) {
            let idx: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [chunk.len()]), device);
            let logits = model.forward(x.clone().select(0, idx.clone()));
            let loss = loss_fn.forward(logits, y.clone().select(0, idx));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = 0.5 * config.lr * (1.0 + (std::f64::consts::PI * step as f64 / total).cos());
            model = optim.step(lr, model, grads);
            step += 1;
        }
    }
    let model = model.valid();
    let x_test = standardise::<B::InnerBackend>(test.features, test.dim, &mean, &std, device);
    let logits = host(model.forward(x_test));
    Ok(top_k_accuracy(&logits, classes, test.labels))
}

fn check(
    train: &Labelled<'_>,
    test: &Labelled<'_>,
    classes: usize,
    config: &LinearProbeConfig,
) -> Result<()> {
    let bad = |reason: String| {
        Err(Error::Config {
            field: "eval.linear".into(),
            reason,
        })
    };
    if config.epochs == 0 || config.batch_size == 0 || !(config.lr > 0.0 && config.lr.is_finite()) {
        return bad(format!(
            "epochs {}, batch_size {}, lr {}: need epochs and batch_size >= 1 and a finite lr > 0",
            config.epochs, config.batch_size, config.lr
        ));
    }
    if train.labels.is_empty() || test.labels.is_empty() || classes == 0 {
        return bad("the linear probe needs labelled training and test images".into());
    }
    if train.dim != test.dim
        || train.features.len() != train.labels.len() * train.dim
        || test.features.len() != test.labels.len() * test.dim
    {
        return bad(format!(
            "feature shapes disagree: train {}×{}, test {}×{}",
            train.labels.len(),
            train.dim,
            test.labels.len(),
            test.dim
        ));
    }
    if let Some(&l) = train
        .labels
        .iter()
        .chain(test.labels)
        .find(|&&l| l as usize >= classes)
    {
        return bad(format!("label {l} is outside the {classes} classes"));
    }
    Ok(())
}

/// Per-dimension mean and std (std floored at 1e-6) of a row-major `[N, dim]` matrix, in f64.
pub fn standardisation(features: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (features.len() / dim.max(1)).max(1) as f64;
    let (mut sum, mut sq) = (vec![0f64; dim], vec![0f64; dim]);
    for row in features.chunks(dim) {
        for (j, &v) in row.iter().enumerate() {
            sum[j] += f64::from(v);
            sq[j] += f64::from(v) * f64::from(v);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| ((q / n - m * m).max(0.0).sqrt()).max(1e-6) as f32)
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

fn standardise<B: Backend>(
    features: &[f32],
    dim: usize,
    mean: &[f32],
    std: &[f32],
    device: &B::Device,
) -> Tensor<B, 2> {
    let x = to_tensor::<B>(features, features.len() / dim, dim, device);
    let mean = Tensor::<B, 1>::from_data(TensorData::new(mean.to_vec(), [dim]), device);
    let std = Tensor::<B, 1>::from_data(TensorData::new(std.to_vec(), [dim]), device);
    (x - mean.unsqueeze_dim(0)) / std.unsqueeze_dim(0)
}

/// Top-1 and top-5 accuracy of row-major `[T, classes]` scores; ties go against the true class.
pub fn top_k_accuracy(scores: &[f32], classes: usize, labels: &[u32]) -> ProbeAccuracy {
    let (mut top1, mut top5) = (0usize, 0usize);
    for (row, &truth) in scores.chunks(classes).zip(labels) {
        let mine = row[truth as usize];
        let better = row.iter().filter(|&&v| v >= mine).count() - 1;
        top1 += usize::from(better == 0);
        top5 += usize::from(better < 5);
    }
    let n = labels.len().max(1) as f64;
    ProbeAccuracy {
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
    }
}
