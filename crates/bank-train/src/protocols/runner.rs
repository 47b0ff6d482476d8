//! Runs the chosen protocols on a trained model: features once per set, then kNN, the linear
//! probe, Recall@K, NMI and `retrieval.png`, into one [`ProtocolReport`].

use std::path::Path;

use bank_core::{HostBank, MemoryBankConfig};
use bank_mining::{KnnConfig, query_neighbours};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::clustering::nmi_of_features;
use super::features::{Features, compute_features};
use super::linear_probe::{Labelled, ProbeAccuracy, linear_probe};
use super::retrieval::{RecallAt, default_ks, recall_of_features};
use super::{Protocol, pictures};
use crate::config::TrainConfig;
use crate::data_source::{EvalData, ViewSpec};
use crate::evaluate::KnnEvaluator;
use crate::knn::{KnnAccuracy, knn_accuracy};
use crate::model::EmbeddingNet;
use crate::{Error, Result};

/// Queries shown in `retrieval.png`, and neighbours per query.
const SHOWN_QUERIES: usize = 12;
const SHOWN_NEIGHBOURS: usize = 8;

/// Recall@K and NMI among the test images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalReport {
    /// Test images (queries).
    pub images: usize,
    /// Classes among them (the k of k-means).
    pub classes: usize,
    /// Recall@K, K ascending.
    pub recall: Vec<RecallAt>,
    /// NMI of k-means clusters of the embedding with the labels.
    pub nmi: f64,
}

/// What the protocols measured; absent entries were not asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProtocolReport {
    /// The checkpoint folder evaluated (`bank-train eval`; absent at the end of training, which
    /// evaluates the final state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// kNN against the bank rows (when the reference images are training images).
    pub knn_bank: Option<KnnAccuracy>,
    /// kNN against reference features recomputed without augmentation.
    pub knn_recomputed: Option<KnnAccuracy>,
    /// Linear probe on the D-dimensional embedding.
    pub linear_embedding: Option<ProbeAccuracy>,
    /// Linear probe on the pooled backbone features.
    pub linear_pooled: Option<ProbeAccuracy>,
    /// Recall@K and NMI.
    pub retrieval: Option<RetrievalReport>,
    /// What the results were measured with (`bank-train eval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<EvalSettings>,
}

/// The settings and sets a report's results were measured with: results measured otherwise
/// are never merged into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// `eval.k`.
    pub k: usize,
    /// Labelled reference images.
    pub references: usize,
    /// Query (test) images.
    pub queries: usize,
    /// The `--set` overrides of the run's configuration as they take effect
    /// ([`crate::config::effective_overrides`]).
    pub overrides: Vec<String>,
}

/// The model, bank and data the protocols read.
pub struct Inputs<'a, B: AutodiffBackend> {
    /// The trained network (inference copy).
    pub model: &'a EmbeddingNet<B::InnerBackend>,
    /// The bank in host memory, for kNN against it: searched `method.bank_block_rows` rows at a
    /// time on the device (0: all at once).
    pub bank: Option<&'a HostBank>,
    /// Reference (training split) and query (test split) sets.
    pub eval: &'a EvalData,
    /// The view settings.
    pub view: &'a ViewSpec,
    /// The run's configuration (kNN k, σ, probe recipe, k-means restarts, seed).
    pub config: &'a TrainConfig,
    /// Where pictures go (the run folder).
    pub out_dir: &'a Path,
}

/// Runs `protocols` on `inputs`; `note` receives one line per step.
///
/// # Errors
/// Unlabelled sets, unreadable images, or too few test images for Recall@K.
pub fn run<B: AutodiffBackend>(
    protocols: &[Protocol],
    inputs: &Inputs<'_, B>,
    device: &B::Device,
    note: &mut dyn FnMut(&str),
) -> Result<ProtocolReport> {
    let config = inputs.config;
    let mut report = ProtocolReport::default();
    let want = |p: Protocol| p.wanted(protocols);
    if !(want(Protocol::Knn) || want(Protocol::Linear) || want(Protocol::Retrieval)) {
        return Ok(report);
    }
    let batch = config.eval.batch_size;
    note("features of the reference and query images (no augmentation)");
    let reference = compute_features(
        inputs.model,
        &inputs.eval.reference,
        inputs.view,
        batch,
        device,
    )?;
    let queries = compute_features(
        inputs.model,
        &inputs.eval.queries,
        inputs.view,
        batch,
        device,
    )?;
    let classes = inputs.eval.reference.class_names().len();
    if want(Protocol::Knn) {
        let evaluator = KnnEvaluator::new(inputs.eval, inputs.view, config)?;
        if let (Some(bank), true) = (inputs.bank, evaluator.has_bank_rows()) {
            let block = config.method.bank_block_rows;
            let knn = evaluator.against_host_bank(inputs.model, bank, block, device)?;
            report.knn_bank = Some(knn);
        }
        report.knn_recomputed = Some(knn_recomputed::<B>(
            &reference, &queries, classes, config, device,
        )?);
    }
    if want(Protocol::Linear) {
        note("linear probe on the embedding and on the pooled features");
        let (train_labels, test_labels) = (labels(&reference)?, labels(&queries)?);
        let linear = &config.eval.linear;
        for pooled in [false, true] {
            let accuracy = linear_probe::<B>(
                labelled(&reference, train_labels, pooled),
                labelled(&queries, test_labels, pooled),
                classes,
                linear,
                device,
            )?;
            if pooled {
                report.linear_pooled = Some(accuracy);
            } else {
                report.linear_embedding = Some(accuracy);
            }
        }
    }
    if want(Protocol::Retrieval) {
        note("Recall@K and k-means NMI among the test images; retrieval.png");
        report.retrieval = Some(retrieval::<B>(&queries, inputs, device)?);
        if let Err(e) = retrieval_picture::<B>(&reference, &queries, inputs, device) {
            tracing::warn!(error = %e, "could not draw retrieval.png");
        }
    }
    Ok(report)
}

/// The embedding (or the pooled features) of `features` with `labels`.
fn labelled<'a>(features: &'a Features, labels: &'a [u32], pooled: bool) -> Labelled<'a> {
    if pooled {
        Labelled {
            features: &features.pooled,
            dim: features.pooled_dim,
            labels,
        }
    } else {
        Labelled {
            features: &features.embedding,
            dim: features.dim,
            labels,
        }
    }
}

/// `count` indices spread evenly over `0..n`.
fn spread(n: usize, count: usize) -> Vec<usize> {
    let count = count.min(n);
    (0..count).map(|i| i * n / count).collect()
}

fn labels(features: &Features) -> Result<&[u32]> {
    features.labels.as_deref().ok_or_else(|| Error::Config {
        field: "data".into(),
        reason: "the label-based protocols need labelled reference and query images".into(),
    })
}

/// kNN of the query features against the recomputed reference features.
fn knn_recomputed<B: AutodiffBackend>(
    reference: &Features,
    queries: &Features,
    classes: usize,
    config: &TrainConfig,
    device: &B::Device,
) -> Result<KnnAccuracy> {
    let rows = MemoryBankConfig::new(reference.len(), reference.dim)
        .init_from_features(reference.embedding_tensor::<B::InnerBackend>(device))?;
    knn_accuracy(
        &rows,
        labels(reference)?,
        queries.embedding_tensor::<B::InnerBackend>(device),
        labels(queries)?,
        classes,
        config.eval.k,
        config.method.temperature,
    )
}

/// Recall@K and NMI of the query embeddings.
fn retrieval<B: AutodiffBackend>(
    queries: &Features,
    inputs: &Inputs<'_, B>,
    device: &B::Device,
) -> Result<RetrievalReport> {
    let labels = labels(queries)?;
    let present: std::collections::BTreeSet<u32> = labels.iter().copied().collect();
    let ks = default_ks(queries.len());
    let recall = recall_of_features(
        queries.embedding_tensor::<B::InnerBackend>(device),
        labels,
        &ks,
    )?;
    let nmi = nmi_of_features(
        queries.embedding_tensor::<B::InnerBackend>(device),
        labels,
        present.len(),
        inputs.config.eval.kmeans_restarts,
        inputs.config.seed,
    )?;
    Ok(RetrievalReport {
        images: queries.len(),
        classes: present.len(),
        recall,
        nmi,
    })
}

/// `retrieval.png`: a dozen queries spread over the test set, each with its 8 nearest
/// reference images.
fn retrieval_picture<B: AutodiffBackend>(
    reference: &Features,
    queries: &Features,
    inputs: &Inputs<'_, B>,
    device: &B::Device,
) -> Result<()> {
    let shown = spread(queries.len(), SHOWN_QUERIES);
    let k = SHOWN_NEIGHBOURS.min(reference.len());
    if shown.is_empty() || k == 0 {
        return Ok(());
    }
    let rows = MemoryBankConfig::new(reference.len(), reference.dim)
        .init_from_features(reference.embedding_tensor::<B::InnerBackend>(device))?;
    let picked: Vec<f32> = shown
        .iter()
        .flat_map(|&q| {
            queries.embedding[q * queries.dim..(q + 1) * queries.dim]
                .iter()
                .copied()
        })
        .collect();
    let picked =
        super::features::to_tensor::<B::InnerBackend>(&picked, shown.len(), queries.dim, device);
    let found = query_neighbours(&rows, picked, &KnnConfig::new(k))?;
    let neighbours: Vec<Vec<usize>> = (0..shown.len())
        .map(|q| found.of(q).0.iter().map(|&j| j as usize).collect())
        .collect();
    std::fs::create_dir_all(inputs.out_dir).map_err(|e| Error::io(inputs.out_dir, e))?;
    pictures::retrieval(
        &inputs.out_dir.join("retrieval.png"),
        &*inputs.eval.queries,
        &*inputs.eval.reference,
        &shown,
        &neighbours,
    )
}

/// The report as readable lines.
pub fn lines(report: &ProtocolReport, config: &TrainConfig) -> Vec<String> {
    let pct = |x: f64| format!("{:.2}%", 100.0 * x);
    let mut out = Vec::new();
    let (k, tau) = (config.eval.k, config.method.temperature);
    if let Some(a) = report.knn_bank {
        out.push(format!(
            "kNN (k={k}, σ={tau}) against the bank:        top-1 {}  top-5 {}",
            pct(a.top1),
            pct(a.top5)
        ));
    }
    if let Some(a) = report.knn_recomputed {
        out.push(format!(
            "kNN (k={k}, σ={tau}) against recomputed features: top-1 {}  top-5 {}",
            pct(a.top1),
            pct(a.top5)
        ));
    }
    if let Some(a) = report.linear_embedding {
        out.push(format!(
            "linear probe on the embedding:        top-1 {}  top-5 {}",
            pct(a.top1),
            pct(a.top5)
        ));
    }
    if let Some(a) = report.linear_pooled {
        out.push(format!(
            "linear probe on the pooled features:  top-1 {}  top-5 {}",
            pct(a.top1),
            pct(a.top5)
        ));
    }
    if let Some(r) = &report.retrieval {
        let recalls: Vec<String> = r
            .recall
            .iter()
            .map(|x| format!("R@{} {}", x.k, pct(x.recall)))
            .collect();
        out.push(format!(
            "retrieval among {} test images of {} classes: {}  NMI {:.4}",
            r.images,
            r.classes,
            recalls.join("  "),
            r.nmi
        ));
    }
    out
}

impl ProtocolReport {
    /// This report with what `earlier` measured and this one did not (a protocol not run
    /// again): `bank-train eval --protocol linear` after `--protocol knn` keeps the kNN result.
    /// Only from an `earlier` report of the same [`settings`](Self::settings): results of other
    /// settings or sets are not mixed in.
    pub fn keeping(self, earlier: ProtocolReport) -> ProtocolReport {
        if earlier.settings != self.settings {
            return self;
        }
        ProtocolReport {
            checkpoint: self.checkpoint.or(earlier.checkpoint),
            knn_bank: self.knn_bank.or(earlier.knn_bank),
            knn_recomputed: self.knn_recomputed.or(earlier.knn_recomputed),
            linear_embedding: self.linear_embedding.or(earlier.linear_embedding),
            linear_pooled: self.linear_pooled.or(earlier.linear_pooled),
            retrieval: self.retrieval.or(earlier.retrieval),
            settings: self.settings,
        }
    }
}

/// Reads a report [`write_report`] wrote; `None` when `path` does not exist.
///
/// # Errors
/// [`Error::Io`] when it cannot be read; [`Error::Report`] naming `path` when it is not such a
/// report.
pub fn read_report(path: &Path) -> Result<Option<ProtocolReport>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Report {
            path: path.to_path_buf(),
            reason: format!("not an evaluation report ({e}); move it away to evaluate again"),
        })
}

/// Writes `report` as JSON to `path`.
///
/// # Errors
/// [`Error::Io`] when the file cannot be written.
pub fn write_report(path: &Path, report: &ProtocolReport) -> Result<()> {
    let json = serde_json::to_vec_pretty(report).expect("report serialises");
    bank_core::write_atomic(path, &json)?;
    Ok(())
}
