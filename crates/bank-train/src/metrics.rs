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
    /// Weighted kNN of the test images against reference features the network recomputes, in
    /// place of [`knn_bank`](Self::knn_bank) when the reference images are not bank rows
    /// (unseen categories: `data.test_classes` apart from `data.train_classes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_recomputed: Option<KnnAccuracyRecord>,
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

/// The epochs recorded in `metrics.jsonl`, in file order, each with its line as written; empty
/// when there is no file. A last line without its newline that does not parse is left out: it is
/// the write a kill interrupted, and the epoch is trained again from the last checkpoint.
///
/// # Errors
/// An unreadable file; any other line that is not one epoch's figures, or epochs that do not
/// rise line by line (a file edited or joined by hand), as [`Error::Checkpoint`] naming the file
/// and the line (from 1). Nothing is changed: such a file is the user's to repair or move aside.
pub fn read_lines(path: &Path) -> Result<Vec<(EpochMetrics, String)>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let torn = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut records: Vec<(EpochMetrics, String)> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let damaged = |what: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!(
                "line {} {what}; nothing was changed (repair the line, or move the file aside \
                 to go on without the run's history)",
                i + 1
            ),
        };
        let m: EpochMetrics = match serde_json::from_str(line) {
            Ok(m) => m,
            Err(_) if torn && i + 1 == lines.len() => break,
            Err(e) => return Err(damaged(format!("is not one epoch's metrics ({e})"))),
        };
        if let Some((prev, _)) = records.last()
            && m.epoch <= prev.epoch
        {
            return Err(damaged(format!(
                "records epoch {} after epoch {}",
                m.epoch, prev.epoch
            )));
        }
        records.push((m, (*line).to_owned()));
    }
    Ok(records)
}

/// Reads `metrics.jsonl` (see [`read_lines`]), keeping the epochs up to `up_to`, and rewrites
/// it, keeping those lines as they were, when that drops lines: a run resumed after a crash
/// must not record an epoch twice.
///
/// # Errors
/// As [`read_lines`]; an IO error rewriting the file.
pub fn read_and_truncate(path: &Path, up_to: usize) -> Result<Vec<EpochMetrics>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let records = read_lines(path)?;
    let kept: Vec<_> = records.iter().filter(|(m, _)| m.epoch <= up_to).collect();
    let mut out = String::new();
    for (_, line) in &kept {
        out.push_str(line);
        out.push('\n');
    }
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if out != text {
        bank_core::write_atomic(path, out.as_bytes())?;
    }
    Ok(kept.into_iter().map(|(m, _)| m.clone()).collect())
}

/// Writes `summary` as pretty JSON.
pub fn write_summary(path: &Path, summary: &Summary) -> Result<()> {
    let json = serde_json::to_vec_pretty(summary).expect("summary serialises");
    Ok(bank_core::write_atomic(path, &json)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch `e`'s line as `append` writes it, with a loss that tells the epochs apart.
    fn line(e: usize) -> String {
        format!(
            "{{\"epoch\":{e},\"step\":{},\"loss\":{}.5,\"lr\":0.03,\"images_per_s\":1.0,\
             \"train_seconds\":2.0,\"knn_bank\":null,\"merge\":null}}",
            10 * e,
            e
        )
    }

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// A kill while a line was written leaves it without its newline: that line goes, the epochs
    /// after the checkpoint go, and the lines kept are the bytes they were (here with a space
    /// `append` would not write, so a reformatted line would show).
    #[test]
    fn a_torn_last_line_and_epochs_past_the_checkpoint_are_dropped_byte_exact() {
        let first = line(1).replace(":1.5", ": 1.5");
        let text = format!("{first}\n{}\n{}\n{{\"epoch\":4,\"st", line(2), line(3));
        let (_dir, path) = file(&text);
        let kept = read_and_truncate(&path, 2).unwrap();
        assert_eq!(kept.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(kept[0].loss, 1.5);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{first}\n{}\n", line(2))
        );
        // With every line kept, the torn one still goes.
        let (_dir, path) = file(&format!("{}\n{{\"epo", line(1)));
        assert_eq!(read_and_truncate(&path, 9).unwrap().len(), 1);
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", line(1)));
    }

    /// A damaged line that a kill cannot have made (not the last, or ended by its newline), and
    /// epochs out of order, are refused naming the file and the line; the file is left as it was.
    #[test]
    fn a_damaged_history_is_refused_naming_the_line_and_left_untouched() {
        let cases = [
            (
                format!("{}\nnot json\n{}\n", line(1), line(2)),
                "line 2 is not",
            ),
            (format!("{}\n{{\"epoch\":2}}\n", line(1)), "line 2 is not"),
            (format!("{}\n{}\n", line(1), "{\"epo"), "line 2 is not"),
            (
                format!("{}\n{}\n", line(2), line(1)),
                "line 2 records epoch 1 after epoch 2",
            ),
            (
                format!("{}\n\n{}\n", line(1), line(1)),
                "line 3 records epoch 1 after epoch 1",
            ),
        ];
        for (text, says) in cases {
            let (_dir, path) = file(&text);
            let err = read_and_truncate(&path, 1).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert_eq!(fs::read_to_string(&path).unwrap(), text, "{says}: changed");
        }
    }

    /// No file is an empty history, and what `append` writes reads back.
    #[test]
    fn append_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        assert!(read_lines(&path).unwrap().is_empty());
        let m: EpochMetrics = serde_json::from_str(&line(1)).unwrap();
        append(&path, &m).unwrap();
        append(
            &path,
            &EpochMetrics {
                epoch: 2,
                ..m.clone()
            },
        )
        .unwrap();
        let back = read_and_truncate(&path, 5).unwrap();
        assert_eq!(back, [m.clone(), EpochMetrics { epoch: 2, ..m }]);
    }
}
