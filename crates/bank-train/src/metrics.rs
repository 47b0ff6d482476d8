//! What a run records: one JSON line per epoch, a PNG of loss and kNN accuracy, a summary.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use bank_mining::RoundReport;
use serde::{Deserialize, Serialize};

use crate::knn::KnnAccuracy;
use crate::{Error, Result};

/// One epoch's figures (a line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Optimiser steps so far.
    pub step: usize,
    /// Mean training loss over the epoch.
    pub loss: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Training views through the network per second (B·K per step).
    #[serde(default)]
    pub views_per_s: f64,
    /// Training images (samples) per second: `views_per_s / K`. Runs written before
    /// `views_per_s` existed hold views per second here.
    pub images_per_s: f64,
    /// Seconds of training in the epoch (evaluation excluded).
    pub train_seconds: f64,
    /// Weighted kNN of the test images against the bank rows (the cheap monitor).
    pub knn_bank: Option<KnnAccuracyRecord>,
    /// The merging round at the end of the epoch, if any.
    pub merge: Option<MergeRecord>,
}

impl EpochMetrics {
    /// Training views per second, also for a line written before `views_per_s` existed (it is
    /// then 0, and `images_per_s` held views per second).
    pub fn views_rate(&self) -> f64 {
        if self.views_per_s > 0.0 {
            self.views_per_s
        } else {
            self.images_per_s
        }
    }
}

/// kNN accuracy as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnAccuracyRecord {
    /// Top-1, in [0, 1].
    pub top1: f64,
    /// Top-5, in [0, 1].
    pub top5: f64,
}

impl From<KnnAccuracyRecord> for KnnAccuracy {
    fn from(k: KnnAccuracyRecord) -> Self {
        Self {
            top1: k.top1,
            top5: k.top5,
        }
    }
}

impl From<KnnAccuracy> for KnnAccuracyRecord {
    fn from(k: KnnAccuracy) -> Self {
        Self {
            top1: k.top1,
            top5: k.top5,
        }
    }
}

/// A merging round as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// Round number.
    pub round: usize,
    /// Mutual-NN candidate pairs.
    pub candidates: usize,
    /// Pairs merged this round.
    pub pairs_merged: usize,
    /// Groups after the round.
    pub groups: usize,
    /// Largest group.
    pub largest_group: usize,
    /// Fraction of this round's merges that joined two images of one class (diagnostic).
    pub purity: Option<f64>,
}

impl From<&RoundReport> for MergeRecord {
    fn from(r: &RoundReport) -> Self {
        Self {
            round: r.round,
            candidates: r.candidates,
            pairs_merged: r.pairs_merged,
            groups: r.groups,
            largest_group: r.largest_group,
            purity: r.purity,
        }
    }
}

/// The end-of-run summary (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Run name.
    pub name: String,
    /// The backend that ran it.
    pub backend: String,
    /// Epochs trained.
    pub epochs: usize,
    /// Training images (bank rows).
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// kNN against the bank after the last epoch.
    pub knn_bank: Option<KnnAccuracyRecord>,
    /// kNN against train features recomputed without augmentation at the end.
    pub knn_recomputed: Option<KnnAccuracyRecord>,
    /// Mean training views per second (B·K per step).
    #[serde(default)]
    pub views_per_s: f64,
    /// Mean training images (samples) per second: `views_per_s / K`.
    pub images_per_s: f64,
    /// Files left out as undecodable (`data.on_bad_image = "skip"`), training and evaluation
    /// sets together.
    #[serde(default)]
    pub skipped_images: usize,
}

/// Appends `m` to `path` as one JSON line.
pub fn append(path: &Path, m: &EpochMetrics) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let line = serde_json::to_string(m).expect("metrics serialise");
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

/// Reads `metrics.jsonl`, keeping the epochs up to `up_to` (and rewriting the file, when that
/// drops lines, so that a run resumed after a crash does not record an epoch twice).
pub fn read_and_truncate(path: &Path, up_to: usize) -> Result<Vec<EpochMetrics>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let kept: Vec<EpochMetrics> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<EpochMetrics>(l).ok())
        .filter(|m| m.epoch <= up_to)
        .collect();
    let mut out = String::new();
    for m in &kept {
        out.push_str(&serde_json::to_string(m).expect("metrics serialise"));
        out.push('\n');
    }
    if out != text {
        bank_core::write_atomic(path, out.as_bytes())?;
    }
    Ok(kept)
}

/// Writes `summary` as pretty JSON.
pub fn write_summary(path: &Path, summary: &Summary) -> Result<()> {
    let json = serde_json::to_vec_pretty(summary).expect("summary serialises");
    Ok(bank_core::write_atomic(path, &json)?)
}
