//! membank's side of the deterministic step-parity check (`cargo xtask parity --step`): the real
//! training step, step by step, written out for a second implementation to replay.
//!
//! ```sh
//! cargo run --release -p membank-benches --example step_parity -- \
//!     --config configs/cifar10_small_cpu.toml --data ../shared/data --out DIR \
//!     [--steps S] [--test-images M] [-- section.field=value ...]
//! ```
//! With the run's config it builds the run's [`TrainState`] (model, SGD with the config's lr,
//! momentum and weight decay, the seeded bank), takes the first S batches of epoch 0 from
//! membank's own loader (the training augmentation) and runs [`train_step`] on each at the
//! schedule's learning rate for its position, as the training loop does. Into `DIR` (`.npy`,
//! numpy's format, f32 unless noted):
//! - `init/<name>.npy`: every parameter and BatchNorm running statistic before the first step
//!   (names are the module paths, e.g. `backbone.block1.conv.weight`; burn's layouts: a
//!   linear weight is `[in, out]`), and `init/bank.npy` `[N, D]`;
//! - `batch<s>/images.npy` `[B·K, C, H, W]` (normalised, as the network sees them) and
//!   `batch<s>/indices.npy` `[B·K]` (i64, the bank row of each view);
//! - `step<s>/<name>.npy` and `step<s>/bank.npy`: the same after step s (from 1);
//! - `test/images.npy` `[M, C, H, W]`: the first M query images under the evaluation transform;
//!   `test/eval_embedding.npy` `[M, D]` (inference mode, running statistics) and
//!   `test/train_embedding.npy` `[M, D]` (training mode, the M images as one batch) after the
//!   last step;
//! - `meta.json`: the recipe (τ, bank momentum, lr, momentum, dampening, weight decay, views),
//!   the learning rate and the loss of every step, the parameter and running-statistic names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bank_data::{LoaderConfig, MultiViewLoader};
use bank_train::data_source;
use bank_train::evaluate::eval_transform;
use bank_train::model::EmbeddingNet;
use bank_train::schedule::learning_rate;
use bank_train::step::train_step;
use bank_train::{TrainConfig, TrainState};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::prelude::*;
use clap::Parser;
use membank_benches::Bench;

#[path = "common/npy.rs"]
mod npy;

type A = Autodiff<Bench>;
type I = Bench;

#[derive(Parser)]
#[command(about = "membank's training steps written out for the PyTorch step-parity check")]
struct Args {
    /// The run's config.
    #[arg(long, default_value = "configs/cifar10_small_cpu.toml")]
    config: PathBuf,
    /// The data root (as `bank-train train --data`).
    #[arg(long, default_value = "../shared/data")]
    data: PathBuf,
    /// Output folder (created; must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Clean test images embedded at the end.
    #[arg(long, default_value_t = 256)]
    test_images: usize,
    /// Config overrides `section.field=value`.
    #[arg(last = true)]
    overrides: Vec<String>,
}

/// Every float tensor of a module (parameters and running statistics) with its module path.
#[derive(Default)]
struct Named {
    path: Vec<String>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl<B: Backend> ModuleVisitor<B> for Named {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let values = t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        // The enum variant (`Small`) is part of the path: keep the struct fields only.
        let name = self
            .path
            .iter()
            .filter(|p| p.as_str() != "Small")
            .cloned()
            .collect::<Vec<_>>()
            .join(".");
        self.tensors.push((name, shape, values));
    }
}

fn write_tensor<B: Backend, const D: usize>(path: &Path, t: Tensor<B, D>) -> anyhow::Result<()> {
    let shape = t.dims().to_vec();
    let values = t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    npy::write(path, &shape, &values)
}

/// Writes every parameter and running statistic of `model` (synchronised: `valid()` folds the
/// pending running-statistic updates in) and the bank under `dir`; returns the names.
fn dump_state(dir: &Path, state: &TrainState<A>) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut named = Named::default();
    state.model.valid().visit(&mut named);
    let mut names = Vec::new();
    for (name, shape, values) in &named.tensors {
        npy::write(&dir.join(format!("{name}.npy")), shape, values)?;
        names.push(name.clone());
    }
    write_tensor(&dir.join("bank.npy"), state.bank.inner().rows())?;
    Ok(names)
}

/// The first `m` query images under the evaluation transform, `[m, C, H, W]`.
fn test_images(
    data: &bank_train::TrainData,
    m: usize,
    device: &Device<I>,
) -> anyhow::Result<Tensor<I, 4>> {
    let eval = data
        .eval
        .as_ref()
        .context("the dataset has no test split")?;
    let m = m.min(eval.queries.len());
    let loader = MultiViewLoader::new(
        Arc::clone(&eval.queries),
        LoaderConfig::new(m, 1).with_shuffle(false),
        eval_transform(&data.view),
    )?;
    let batch = loader.epoch(0).next().context("no test batch")??;
    Ok(batch.into_device::<I>(device).images)
}

fn embeddings(model: &EmbeddingNet<A>, images: Tensor<I, 4>) -> (Tensor<I, 2>, Tensor<I, 2>) {
    let eval = model.valid().forward(images.clone());
    // Training mode (batch statistics); this also moves the running statistics, so it comes last.
    let train = model.forward(Tensor::from_inner(images)).inner();
    (eval, train)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.steps == 0 {
        bail!("--steps must be > 0");
    }
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!("--out {} exists and is not empty", args.out.display());
    }
    let config = TrainConfig::load(Some(&args.config), &args.overrides)?;
    let root = data_source::data_root(Some(&args.data))?;
    let data = data_source::open(&config.data, &root)?;
    let config = data.resolve(&config);
    config.validate()?;
    let device = Default::default();
    let mut state = TrainState::<A>::new(&config, data.train.len(), &device)?;
    let loader = bank_train::training_loader(&config, &data)?;
    let per_epoch = loader.batches_per_epoch();
    if args.steps > per_epoch {
        bail!(
            "--steps {} exceeds the {per_epoch} batches of an epoch",
            args.steps
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let names = dump_state(&args.out.join("init"), &state)?;
    let (mut lrs, mut losses) = (Vec::new(), Vec::new());
    for (s, host) in loader.epoch(0).take(args.steps).enumerate() {
        let host = host?;
        let dir = args.out.join(format!("batch{}", s + 1));
        std::fs::create_dir_all(&dir)?;
        let [c, h] = [host.channels, host.size];
        npy::write(
            &dir.join("images.npy"),
            &[host.layout.rows(), c, h, h],
            &host.images,
        )?;
        let views = host.layout.views;
        let indices: Vec<i64> = host
            .samples
            .iter()
            .flat_map(|&i| std::iter::repeat_n(i as i64, views))
            .collect();
        npy::write(&dir.join("indices.npy"), &[indices.len()], &indices)?;
        let batch = host.into_device::<A>(&device);
        let lr = learning_rate(
            &config.optim,
            config.train.epochs,
            s as f64 / per_epoch as f64,
        );
        let loss;
        (state, loss) = train_step(state, batch, lr, config.method.temperature, &device)?;
        lrs.push(lr);
        losses.push(loss);
        dump_state(&args.out.join(format!("step{}", s + 1)), &state)?;
        eprintln!("step {}: lr {lr:.6} loss {loss:.6}", s + 1);
    }
    let images = test_images(&data, args.test_images, &device)?;
    let test = args.out.join("test");
    std::fs::create_dir_all(&test)?;
    write_tensor(&test.join("images.npy"), images.clone())?;
    let (eval, train) = embeddings(&state.model, images);
    write_tensor(&test.join("eval_embedding.npy"), eval)?;
    write_tensor(&test.join("train_embedding.npy"), train)?;
    let o = &config.optim;
    let meta = serde_json::json!({
        "backend": <Bench as Backend>::name(&device),
        "config": args.config.display().to_string(),
        "overrides": args.overrides,
        "steps": args.steps,
        "batches_per_epoch": per_epoch,
        "views": config.train.views,
        "tau": config.method.temperature,
        "bank_momentum": config.method.bank_momentum,
        "consistency": config.method.consistency,
        "lr": o.lr, "momentum": o.momentum, "dampening": 0.0, "nesterov": o.nesterov,
        "weight_decay": o.weight_decay,
        "epochs": config.train.epochs, "schedule": format!("{:?}", o.schedule),
        "warmup_epochs": o.warmup_epochs,
        "channels": data.view.channels, "image_size": data.view.image_size,
        "mean": data.view.normalize.mean, "std": data.view.normalize.std,
        "lrs": lrs, "losses": losses, "names": names,
    });
    std::fs::write(
        args.out.join("meta.json"),
        serde_json::to_string_pretty(&meta)?,
    )?;
    println!("{}", args.out.display());
    Ok(())
}
