//! Runs the chosen protocols on a trained model: features once per set, then kNN, the linear
//! probe, Recall@K, NMI and `retrieval.png`, into one [`ProtocolReport`].

use std::path::Path;

use bank_core::{HostBank, MemoryBankConfig};
use bank_mining::{KnnConfig, query_neighbours};
use burn::tensor::backend::{AutodiffBackend, Backend};
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
    /// Which reference and query images, in order, with their labels
    /// ([`EvalSettings::images_of`]): other images of the same numbers are other settings.
    /// Absent from reports written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
}

impl EvalSettings {
    /// 16 hex digits of SHA-256 over the [`DataIdentity`](crate::data_identity::DataIdentity)
    /// of the reference and of the query images (names relative to their common folder, and
    /// labels).
    pub fn images_of(eval: &EvalData) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for set in [&eval.reference, &eval.queries] {
            hash.update(crate::data_identity::DataIdentity::of(&**set).digest());
            hash.update([0]);
        }
        hash.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
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
        let lone = lone_queries(labels(&queries)?);
        if lone > 0 {
            note(&format!(
                "note: {lone} of the {} test images are the only one of their class: no neighbour \
                 can recall them, so Recall@K cannot reach 100% (raise data.test_limit)",
                queries.len()
            ));
        }
        report.retrieval = Some(retrieval::<B>(&queries, inputs, device)?);
        if let Err(e) = retrieval_picture::<B>(&queries, inputs, device) {
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

/// Query images whose class has no other image among the queries: Recall@K counts them as
/// misses whatever the features.
fn lone_queries(labels: &[u32]) -> usize {
    let mut count = std::collections::BTreeMap::new();
    for &l in labels {
        *count.entry(l).or_insert(0usize) += 1;
    }
    count.values().filter(|&&n| n == 1).count()
}

/// `retrieval.png`: a dozen queries spread over the test set, each with its 8 nearest other
/// test images: the search Recall@K measures (among the test images, the query excluded).
fn retrieval_picture<B: AutodiffBackend>(
    queries: &Features,
    inputs: &Inputs<'_, B>,
    device: &B::Device,
) -> Result<()> {
    let shown = spread(queries.len(), SHOWN_QUERIES);
    let k = SHOWN_NEIGHBOURS.min(queries.len().saturating_sub(1));
    if shown.is_empty() || k == 0 {
        return Ok(());
    }
    let neighbours = nearest_others::<B::InnerBackend>(queries, &shown, k, device)?;
    std::fs::create_dir_all(inputs.out_dir).map_err(|e| Error::io(inputs.out_dir, e))?;
    pictures::retrieval(
        &inputs.out_dir.join("retrieval.png"),
        &*inputs.eval.queries,
        &*inputs.eval.queries,
        &shown,
        &neighbours,
    )
}

/// For each image `shown[i]` of `set`, the `k` other images of `set` with the highest cosine
/// similarity, best first (the image itself left out).
fn nearest_others<B: Backend>(
    set: &Features,
    shown: &[usize],
    k: usize,
    device: &B::Device,
) -> Result<Vec<Vec<usize>>> {
    let rows = MemoryBankConfig::new(set.len(), set.dim)
        .init_from_features(set.embedding_tensor::<B>(device))?;
    let picked: Vec<f32> = shown
        .iter()
        .flat_map(|&q| {
            set.embedding[q * set.dim..(q + 1) * set.dim]
                .iter()
                .copied()
        })
        .collect();
    let picked = super::features::to_tensor::<B>(&picked, shown.len(), set.dim, device);
    // One more than asked: each image finds itself, and is left out.
    let found = query_neighbours(&rows, picked, &KnnConfig::new(k + 1))?;
    Ok(shown
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let near = found.of(i).0.iter().map(|&j| j as usize);
            near.filter(|&j| j != q).take(k).collect()
        })
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_queries_are_those_alone_in_their_class() {
        assert_eq!(lone_queries(&[0, 1, 1, 2, 3, 3, 3]), 2);
        assert_eq!(lone_queries(&[5, 5]), 0);
        assert_eq!(lone_queries(&[]), 0);
    }

    /// The picture's neighbours are the test images nearest each query by cosine, best first,
    /// the query itself excluded: checked against a brute-force search.
    #[test]
    fn the_picture_shows_the_nearest_other_test_images() {
        let (n, dim, k) = (40, 8, 5);
        let mut state = 7u64;
        let mut embedding: Vec<f32> = (0..n * dim)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        for row in embedding.chunks_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        let set = Features {
            embedding,
            dim,
            pooled: Vec::new(),
            pooled_dim: 0,
            labels: None,
        };
        let shown = spread(n, 12);
        let found =
            nearest_others::<burn::backend::NdArray>(&set, &shown, k, &Default::default()).unwrap();
        let row = |i: usize| &set.embedding[i * dim..(i + 1) * dim];
        for (&q, near) in shown.iter().zip(&found) {
            let mut brute: Vec<(f32, usize)> = (0..n)
                .filter(|&j| j != q)
                .map(|j| (row(q).iter().zip(row(j)).map(|(a, b)| a * b).sum(), j))
                .collect();
            brute.sort_by(|a, b| b.0.total_cmp(&a.0));
            let want: Vec<usize> = brute[..k].iter().map(|&(_, j)| j).collect();
            assert_eq!(near, &want, "query {q}");
        }
    }
}
