//! kNN evaluation of a model: against the bank (the cheap monitor during training) and against
//! reference features recomputed without augmentation (at the end, and in `bank-train eval`).

use std::sync::Arc;

use bank_core::{HostBank, MemoryBank, MemoryBankConfig};
use bank_data::{Dataset, EvalConfig, LoaderConfig, MultiViewLoader, Transform};
use bank_mining::{KnnConfig, Neighbours, ShardNeighbours, combine_shards, query_neighbours};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::config::TrainConfig;
use crate::data_source::{EvalData, ViewSpec};
use crate::finite::all_finite;
use crate::knn::{KnnAccuracy, KnnVote, knn_accuracy_with};
use crate::model::EmbeddingNet;
use crate::{Error, Result};

/// The deterministic evaluation view of `view`: resize the shorter side, centre-crop, normalise.
pub fn eval_transform(view: &ViewSpec) -> Transform {
    let mut eval = EvalConfig::new(view.eval_resize, view.image_size).with_channels(view.channels);
    eval.normalize = view.normalize;
    Transform::Eval(eval)
}

/// The embeddings of every image of `dataset` under the evaluation transform, in order.
///
/// # Shapes
/// - output: `[N, D]`, unit rows
///
/// # Errors
/// An image that cannot be read (streamed datasets decode here);
/// [`Error::NonFiniteFeatures`] when a feature is NaN or infinite (a diverged network).
pub fn embed<B: Backend>(
    model: &EmbeddingNet<B>,
    dataset: &Arc<dyn Dataset>,
    view: &ViewSpec,
    batch_size: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let loader = MultiViewLoader::new(
        Arc::clone(dataset),
        LoaderConfig::new(batch_size, 1).with_shuffle(false),
        eval_transform(view),
    )?;
    let mut parts = Vec::new();
    for batch in loader.epoch(0) {
        parts.push(model.forward(batch?.into_device::<B>(device).images));
    }
    let features = Tensor::cat(parts, 0);
    if !all_finite(&features) {
        return Err(Error::NonFiniteFeatures { what: "embeddings" });
    }
    Ok(features)
}

/// Unit rows `[N, D]` as a bank (what the blocked kNN search runs against).
fn rows_as_bank<B: Backend>(rows: Tensor<B, 2>) -> Result<MemoryBank<B>> {
    let [n, d] = rows.dims();
    Ok(MemoryBankConfig::new(n, d).init_from_features(rows)?)
}

/// Labelled reference and query sets and the kNN settings (k, σ = τ, batch size).
pub struct KnnEvaluator {
    eval: EvalData,
    view: ViewSpec,
    reference_labels: Vec<u32>,
    query_labels: Vec<u32>,
    classes: usize,
    k: usize,
    sigma: f64,
    batch_size: usize,
}

impl KnnEvaluator {
    /// An evaluator of `eval` under `view`.
    ///
    /// # Errors
    /// [`Error::Config`] when the reference or the queries are unlabelled, or the bank rows do not
    /// match the reference.
    pub fn new(eval: &EvalData, view: &ViewSpec, config: &TrainConfig) -> Result<Self> {
        let unlabelled = |what: &str| Error::Config {
            field: "data".into(),
            reason: format!("kNN needs labelled {what} images"),
        };
        let reference_labels = eval
            .reference
            .labels()
            .ok_or_else(|| unlabelled("reference"))?;
        let query_labels = eval.queries.labels().ok_or_else(|| unlabelled("query"))?;
        if let Some(rows) = &eval.bank_rows
            && rows.len() != reference_labels.len()
        {
            return Err(Error::Config {
                field: "data".into(),
                reason: format!(
                    "{} bank rows stand for {} reference images",
                    rows.len(),
                    reference_labels.len()
                ),
            });
        }
        Ok(Self {
            classes: eval.reference.class_names().len(),
            eval: eval.clone(),
            view: *view,
            reference_labels,
            query_labels,
            k: config.eval.k,
            sigma: config.method.temperature,
            batch_size: config.eval.batch_size,
        })
    }

    /// Whether the reference images are bank rows (so [`KnnEvaluator::against_bank`] applies).
    pub fn has_bank_rows(&self) -> bool {
        self.eval.bank_rows.is_some()
    }

    /// Queries against the bank rows that stand for the reference images; against recomputed
    /// reference features when the reference is not part of the training set.
    ///
    /// # Errors
    /// Bank or image errors.
    pub fn against_bank<B: Backend>(
        &self,
        model: &EmbeddingNet<B>,
        bank: &MemoryBank<B>,
        device: &B::Device,
    ) -> Result<KnnAccuracy> {
        let Some(rows) = self.bank_rows_within(bank.num_rows())? else {
            return self.against_recomputed(model, device);
        };
        let queries = self.queries(model, device)?;
        if is_every_row(rows, bank.num_rows()) {
            return self.vote(bank, queries);
        }
        let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::from_data(TensorData::new(index, [rows.len()]), device);
        self.vote(&rows_as_bank(bank.rows().select(0, index))?, queries)
    }

    /// [`KnnEvaluator::against_bank`] for a bank of `rows` rows that no device holds whole (split
    /// across data-parallel devices, or in host memory): `search(queries, k)` finds the queries'
    /// top-`k` rows, and when the reference images are only some of the bank's rows,
    /// `rows_of(rows)` brings those rows into host memory.
    ///
    /// # Errors
    /// Bank or image errors, and those of `search` and `rows_of`.
    pub fn against_bank_with<B: Backend>(
        &self,
        model: &EmbeddingNet<B>,
        (n, search, rows_of): (
            usize,
            impl FnOnce(Tensor<B, 2>, usize) -> Result<Neighbours>,
            impl FnOnce(&[usize]) -> Result<HostBank>,
        ),
        device: &B::Device,
    ) -> Result<KnnAccuracy> {
        let Some(rows) = self.bank_rows_within(n)? else {
            return self.against_recomputed(model, device);
        };
        let queries = self.queries(model, device)?;
        if is_every_row(rows, n) {
            return knn_accuracy_with(n, queries, self.votes(), search);
        }
        let reference = rows_of(rows)?.to_device::<B>(device)?;
        self.vote(&reference, queries)
    }

    /// [`KnnEvaluator::against_bank`] for a bank in host memory (`bank-train eval`), searched
    /// `block` rows at a time on `device` (0: all at once): no more than `block` rows reach the
    /// device together ([`search_host_bank`]), except when the reference images are only some
    /// of the bank's rows: those rows then go to the device together.
    ///
    /// # Errors
    /// As [`KnnEvaluator::against_bank_with`].
    pub fn against_host_bank<B: Backend>(
        &self,
        model: &EmbeddingNet<B>,
        bank: &HostBank,
        block: usize,
        device: &B::Device,
    ) -> Result<KnnAccuracy> {
        let search = search_host_bank::<B>(bank, block, device);
        let rows_of = |rows: &[usize]| Ok(bank.select(rows)?);
        self.against_bank_with(model, (bank.num_rows(), search, rows_of), device)
    }

    /// The bank rows standing for the reference images (`None`: the reference is not part of
    /// the training set), checked against a bank of `n` rows.
    fn bank_rows_within(&self, n: usize) -> Result<Option<&[usize]>> {
        let Some(rows) = &self.eval.bank_rows else {
            return Ok(None);
        };
        if let Some(&r) = rows.iter().find(|&&r| r >= n) {
            return Err(Error::Config {
                field: "data".into(),
                reason: format!(
                    "the reference images need bank row {r}, but the bank has {n} rows"
                ),
            });
        }
        Ok(Some(rows))
    }

    /// The query images' embeddings, with a warning when they have collapsed.
    fn queries<B: Backend>(
        &self,
        model: &EmbeddingNet<B>,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let queries = self.embed(model, &self.eval.queries, device)?;
        if collapsed(&queries) {
            tracing::warn!(
                "the network's embeddings of the test images are (near) zero: it has collapsed \
                 (dead ReLUs after too high an optim.lr?); its checkpoints are finite but useless"
            );
        }
        Ok(queries)
    }

    /// Queries against reference features recomputed by `model` without augmentation.
    ///
    /// # Errors
    /// Bank or image errors.
    pub fn against_recomputed<B: Backend>(
        &self,
        model: &EmbeddingNet<B>,
        device: &B::Device,
    ) -> Result<KnnAccuracy> {
        let reference = self.embed(model, &self.eval.reference, device)?;
        let reference = rows_as_bank(reference)?;
        let queries = self.embed(model, &self.eval.queries, device)?;
        self.vote(&reference, queries)
    }

    /// `set` under the evaluation view, in the evaluator's batch size.
    fn embed<B: Backend>(
        &self,
        model: &EmbeddingNet<B>,
        set: &Arc<dyn Dataset>,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        embed(model, set, &self.view, self.batch_size, device)
    }

    fn vote<B: Backend>(&self, rows: &MemoryBank<B>, queries: Tensor<B, 2>) -> Result<KnnAccuracy> {
        let search = |queries, k| Ok(query_neighbours(rows, queries, &KnnConfig::new(k))?);
        knn_accuracy_with(rows.num_rows(), queries, self.votes(), search)
    }

    /// The labels and settings of the vote.
    fn votes(&self) -> KnnVote<'_> {
        KnnVote {
            train_labels: &self.reference_labels,
            test_labels: &self.query_labels,
            classes: self.classes,
            k: self.k,
            sigma: self.sigma,
        }
    }
}

/// `search(queries, k)` over a bank in host memory: `block` rows at a time (0: all at once) go
/// to `device`, each block is searched there, and the blocks' top lists are combined
/// ([`bank_mining::combine_shards`]: the same neighbours as one search of the whole bank).
///
/// # Errors
/// The search's errors (a `k` larger than the bank, queries of another width), and a block that
/// cannot reach the device.
pub fn search_host_bank<'a, B: Backend>(
    bank: &'a HostBank,
    block: usize,
    device: &'a B::Device,
) -> impl FnOnce(Tensor<B, 2>, usize) -> Result<Neighbours> + 'a {
    move |queries, k| {
        let n = bank.num_rows();
        let block = if block == 0 { n.max(1) } else { block };
        let mut parts = Vec::new();
        for first in (0..n).step_by(block) {
            let rows = first..(first + block).min(n);
            let config = KnnConfig::new(k.min(rows.len()));
            let shard = bank.rows_range(rows)?.to_device::<B>(device)?;
            let neighbours = query_neighbours(&shard, queries.clone(), &config)?;
            parts.push(ShardNeighbours { first, neighbours });
        }
        Ok(combine_shards(k, &parts, None)?)
    }
}

/// Whether `rows` are the bank's `n` rows in order (the reference set is the training set).
fn is_every_row(rows: &[usize], n: usize) -> bool {
    rows.len() == n && rows.iter().enumerate().all(|(i, &r)| i == r)
}

/// Whether unit-norm embeddings have collapsed to (near) zero vectors: mean row norm below ½.
/// A network whose ReLUs all died outputs zeros, which L2 normalisation keeps at zero; its state
/// is finite, so the finite-state check lets it through.
///
/// # Shapes
/// - `features`: `[M, D]`
pub fn collapsed<B: Backend>(features: &Tensor<B, 2>) -> bool {
    if features.dims()[0] == 0 {
        return false;
    }
    let mean_norm = features
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .mean()
        .into_scalar()
        .elem::<f64>();
    mean_norm < 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::NdArray;

    /// A bank in host memory searched block by block (blocks of 7 and 1 rows, and all at once)
    /// gives the neighbours of one search of the whole bank on the device; with duplicated rows,
    /// ties go to the lower index across block borders too.
    #[test]
    fn a_host_bank_searched_in_blocks_finds_the_whole_banks_neighbours() {
        let device = Default::default();
        let bank = MemoryBankConfig::new(40, 16)
            .with_seed(5)
            .init::<B>(&device)
            .unwrap();
        // Rows 6 and 7 (one block border for blocks of 7) and 20 equal to row 3.
        let dup = |r: usize| bank.rows().slice([3..4, 0..16]).expand([r, 16]);
        let rows = Tensor::cat(
            vec![
                bank.rows().slice([0..6, 0..16]),
                dup(2),
                bank.rows().slice([8..20, 0..16]),
                dup(1),
                bank.rows().slice([21..40, 0..16]),
            ],
            0,
        );
        let mut bank = bank;
        bank.set_rows(rows).unwrap();
        let queries = bank.rows().slice([0..9, 0..16]) * 0.9
            + MemoryBankConfig::new(9, 16)
                .with_seed(6)
                .init::<B>(&device)
                .unwrap()
                .rows()
                * 0.1;
        let host = bank.to_host();
        for k in [1, 5, 40] {
            let want = query_neighbours(&bank, queries.clone(), &KnnConfig::new(k)).unwrap();
            for block in [0, 7, 1] {
                let got = search_host_bank::<B>(&host, block, &device)(queries.clone(), k).unwrap();
                assert_eq!(got.indices, want.indices, "k {k}, blocks of {block} rows");
            }
        }
    }

    #[test]
    fn zero_embeddings_are_collapsed_unit_ones_are_not() {
        let device = Default::default();
        assert!(collapsed(&Tensor::<B, 2>::zeros([4, 8], &device)));
        // One unit row among three zero rows: mean norm ¼.
        let mut rows = vec![0.0f32; 32];
        rows[0] = 1.0;
        let one = Tensor::<B, 2>::from_data(TensorData::new(rows, [4, 8]), &device);
        assert!(collapsed(&one));
        // Rows of nine entries 1/3: norm 1.
        assert!(!collapsed(&(Tensor::<B, 2>::ones([4, 9], &device) / 3.0)));
        assert!(!collapsed(&Tensor::<B, 2>::zeros([0, 8], &device)));
    }
}
