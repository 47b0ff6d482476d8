//! kNN evaluation of a model: against the bank (the cheap monitor during training) and against
//! train features recomputed without augmentation (at the end, and in `bank-train eval`).

use std::sync::Arc;

use bank_core::{MemoryBank, MemoryBankConfig};
use bank_data::{Dataset, EvalConfig, ImageDataset, LoaderConfig, MultiViewLoader, Transform};
use burn::prelude::*;

use crate::Result;
use crate::config::TrainConfig;
use crate::knn::{KnnAccuracy, knn_accuracy};
use crate::model::EmbeddingNet;

/// The embeddings of every image of `dataset` under the evaluation transform, in order.
pub fn embed<B: Backend>(
    model: &EmbeddingNet<B>,
    dataset: &Arc<ImageDataset>,
    batch_size: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let side = dataset.image(0).height;
    let loader = MultiViewLoader::new(
        Arc::clone(dataset),
        LoaderConfig::new(batch_size, 1).with_shuffle(false),
        Transform::Eval(EvalConfig::new(side, side)),
    )?;
    let parts: Vec<Tensor<B, 2>> = loader
        .epoch(0)
        .map(|b| model.forward(b.into_device::<B>(device).images))
        .collect();
    Ok(Tensor::cat(parts, 0))
}

/// Labelled train and test sets and the kNN settings (k, σ = τ, batch size).
pub struct KnnEvaluator {
    train: Arc<ImageDataset>,
    test: Arc<ImageDataset>,
    train_labels: Vec<u32>,
    test_labels: Vec<u32>,
    classes: usize,
    k: usize,
    sigma: f64,
    batch_size: usize,
}

impl KnnEvaluator {
    /// `None` when either set is unlabelled (nothing to evaluate).
    pub fn new(
        train: &Arc<ImageDataset>,
        test: &Arc<ImageDataset>,
        config: &TrainConfig,
    ) -> Option<Self> {
        Some(Self {
            train_labels: train.labels()?.to_vec(),
            test_labels: test.labels()?.to_vec(),
            classes: train.class_names().len(),
            train: Arc::clone(train),
            test: Arc::clone(test),
            k: config.eval.k,
            sigma: config.method.temperature,
            batch_size: config.eval.batch_size,
        })
    }

    /// Test images against the rows of `bank` (which stand for the train images).
    pub fn against_bank<B: Backend>(
        &self,
        model: &EmbeddingNet<B>,
        bank: &MemoryBank<B>,
        device: &B::Device,
    ) -> Result<KnnAccuracy> {
        let test = embed(model, &self.test, self.batch_size, device)?;
        self.vote(bank, test)
    }

    /// Test images against train features recomputed by `model` without augmentation.
    pub fn against_recomputed<B: Backend>(
        &self,
        model: &EmbeddingNet<B>,
        device: &B::Device,
    ) -> Result<KnnAccuracy> {
        let train = embed(model, &self.train, self.batch_size, device)?;
        let [n, d] = train.dims();
        let reference = MemoryBankConfig::new(n, d).init_from_features(train)?;
        let test = embed(model, &self.test, self.batch_size, device)?;
        self.vote(&reference, test)
    }

    fn vote<B: Backend>(&self, rows: &MemoryBank<B>, test: Tensor<B, 2>) -> Result<KnnAccuracy> {
        knn_accuracy(
            rows,
            &self.train_labels,
            test,
            &self.test_labels,
            self.classes,
            self.k,
            self.sigma,
        )
    }
}
