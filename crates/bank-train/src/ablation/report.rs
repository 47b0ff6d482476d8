//! `ablation.md`: each variant's final accuracies over the seeds (mean ± sample standard
//! deviation), each improvement's own share, and the merge rounds of the full method.

use std::fmt::Write as _;
use std::path::Path;

use super::{PlannedRun, Variant};
use crate::checkpoint;
use crate::metrics::{EpochMetrics, MergeRecord, Summary};
use crate::protocols::runner::read_report;
use crate::{Error, Result};

/// Mean, sample standard deviation (n − 1; 0 for one value), min and max of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Number of values.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub sd: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self {
            n,
            mean,
            sd,
            min,
            max,
        })
    }
}

/// One finished run as read back from its folder.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The variant.
    pub variant: Variant,
    /// The seed.
    pub seed: u64,
    /// `metrics.jsonl`, epoch by epoch.
    pub epochs: Vec<EpochMetrics>,
    /// `summary.json`.
    pub summary: Summary,
    /// The linear probe of the final network, when the run has one ([`RunRecord::probe`]).
    pub linear: Option<LinearTop1>,
}

/// Linear-probe top-1 (fractions) of one run's final network (`eval.linear`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearTop1 {
    /// On the D-dimensional embedding.
    pub embedding: f64,
    /// On the pooled backbone features, when measured.
    pub pooled: Option<f64>,
}

impl RunRecord {
    /// Reads a finished run's folder; `None` when it has not finished (no `summary.json`).
    ///
    /// # Errors
    /// Unreadable or malformed `summary.json`, `metrics.jsonl`, `protocols.json` or `eval.json`,
    /// naming the file.
    pub fn read(run: &PlannedRun) -> Result<Option<Self>> {
        let summary_path = run.dir.join("summary.json");
        if !summary_path.is_file() {
            return Ok(None);
        }
        let summary: Summary = parse_json(&summary_path)?;
        let metrics = run.dir.join("metrics.jsonl");
        if !metrics.is_file() {
            return Err(Error::Checkpoint {
                path: metrics,
                reason: "missing from a finished run (it has summary.json)".into(),
            });
        }
        let epochs = crate::metrics::read_lines(&metrics)?
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        Ok(Some(Self {
            variant: run.variant,
            seed: run.seed,
            epochs,
            summary,
            linear: Self::probe(run)?,
        }))
    }

    /// The linear probe of the run's final network: from `protocols.json` (the probe the
    /// training ran at its end, when `eval.protocols` asked for it), else from
    /// `eval/epoch-NNNN/eval.json` of its final checkpoint (`bank-train eval --protocol linear`
    /// with the run's own settings, which `ablation` runs for each finished run without one).
    ///
    /// # Errors
    /// A malformed `protocols.json` or `eval.json`, naming the file.
    pub fn probe(run: &PlannedRun) -> Result<Option<LinearTop1>> {
        let final_checkpoint = checkpoint::name(run.config.train.epochs, 0);
        for file in [
            run.dir.join("protocols.json"),
            run.dir
                .join("eval")
                .join(final_checkpoint)
                .join("eval.json"),
        ] {
            let linear = read_report(&file)?.and_then(|r| {
                Some(LinearTop1 {
                    embedding: r.linear_embedding?.top1,
                    pooled: r.linear_pooled.map(|p| p.top1),
                })
            });
            if linear.is_some() {
                return Ok(linear);
            }
        }
        Ok(None)
    }

    fn knn_at(&self, epoch: usize) -> Option<f64> {
        self.epochs
            .iter()
            .find(|m| m.epoch == epoch)
            .and_then(|m| m.knn_bank)
            .map(|k| 100.0 * k.top1)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| malformed(path, &e))
}

fn malformed(path: &Path, e: &serde_json::Error) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("malformed: {e}"),
    }
}

/// One variant over its seeds. Accuracies in percent.
#[derive(Debug, Clone)]
pub struct VariantStats {
    /// The variant.
    pub variant: Variant,
    /// K, the views per sample it trains (`train.views` of its planned runs).
    pub views: usize,
    /// Its finished runs.
    pub runs: Vec<RunRecord>,
    /// Final kNN top-1 against the bank.
    pub knn_bank: Option<Spread>,
    /// Each run's mean kNN top-1 against the bank over its last five evaluated epochs.
    pub knn_bank_last5: Option<Spread>,
    /// kNN top-1 against train features recomputed at the end.
    pub knn_recomputed: Option<Spread>,
    /// Linear-probe top-1 on the embedding.
    pub linear: Option<Spread>,
    /// Linear-probe top-1 on the pooled backbone features.
    pub linear_pooled: Option<Spread>,
    /// Minutes of training per run (evaluation excluded).
    pub train_minutes: Option<Spread>,
}

impl VariantStats {
    fn new(variant: Variant, views: usize, runs: Vec<RunRecord>) -> Self {
        let pick = |f: &dyn Fn(&RunRecord) -> Option<f64>| -> Option<Spread> {
            Spread::of(&runs.iter().filter_map(f).collect::<Vec<_>>())
        };
        Self {
            variant,
            views,
            knn_bank: pick(&|r| r.summary.knn_bank.map(|k| 100.0 * k.top1)),
            knn_bank_last5: pick(&|r| {
                let last: Vec<f64> = (r.epochs.iter().rev())
                    .filter_map(|m| m.knn_bank)
                    .take(5)
                    .map(|k| 100.0 * k.top1)
                    .collect();
                Spread::of(&last).map(|s| s.mean)
            }),
            knn_recomputed: pick(&|r| r.summary.knn_recomputed.map(|k| 100.0 * k.top1)),
            linear: pick(&|r| r.linear.map(|l| 100.0 * l.embedding)),
            linear_pooled: pick(&|r| r.linear.and_then(|l| l.pooled).map(|t| 100.0 * t)),
            train_minutes: pick(&|r| {
                Some(r.epochs.iter().map(|m| m.train_seconds).sum::<f64>() / 60.0)
            }),
            runs,
        }
    }

    /// kNN top-1 against the bank per epoch over the seeds: `(epoch, spread)`, for the epochs
    /// every run evaluated.
    pub fn curve(&self) -> Vec<(usize, Spread)> {
        let Some(first) = self.runs.first() else {
            return Vec::new();
        };
        first
            .epochs
            .iter()
            .filter_map(|m| {
                let at: Vec<f64> = self.runs.iter().filter_map(|r| r.knn_at(m.epoch)).collect();
                (at.len() == self.runs.len())
                    .then(|| Spread::of(&at).map(|s| (m.epoch, s)))
                    .flatten()
            })
            .collect()
    }

    /// The merge rounds of every run, as `(epoch, round record)` per run.
    fn merge_rounds(&self) -> Vec<(usize, Vec<&MergeRecord>)> {
        let mut rounds: Vec<(usize, Vec<&MergeRecord>)> = Vec::new();
        for run in &self.runs {
            for m in &run.epochs {
                if let Some(r) = &m.merge {
                    match rounds.iter_mut().find(|(e, _)| *e == m.epoch) {
                        Some((_, v)) => v.push(r),
                        None => rounds.push((m.epoch, vec![r])),
                    }
                }
            }
        }
        rounds.sort_by_key(|(e, _)| *e);
        rounds
    }
}

/// The ablation's results: every variant's statistics and the runs still missing.
#[derive(Debug, Clone)]
pub struct AblationReport {
    /// The recipe's name.
    pub recipe: String,
    /// One entry per variant, in the plan's order.
    pub variants: Vec<VariantStats>,
    /// Run folders of the plan that have not finished.
    pub missing: Vec<String>,
}

impl AblationReport {
    /// Reads every planned run's folder.
    ///
    /// # Errors
    /// As [`RunRecord::read`].
    pub fn collect(recipe: &str, plan: &[PlannedRun]) -> Result<Self> {
        let mut variants: Vec<VariantStats> = Vec::new();
        let mut missing = Vec::new();
        let mut order: Vec<Variant> = plan.iter().map(|r| r.variant).collect();
        order.dedup();
        for variant in order {
            let mut runs = Vec::new();
            let mut views = 1;
            for run in plan.iter().filter(|r| r.variant == variant) {
                views = run.config.train.views;
                match RunRecord::read(run)? {
                    Some(record) => runs.push(record),
                    None => missing.push(run.dir.display().to_string()),
                }
            }
            variants.push(VariantStats::new(variant, views, runs));
        }
        Ok(Self {
            recipe: recipe.to_string(),
            variants,
            missing,
        })
    }

    /// The variant's statistics, when it is in the report.
    pub fn get(&self, variant: Variant) -> Option<&VariantStats> {
        self.variants.iter().find(|v| v.variant == variant)
    }

    /// The gain in final kNN top-1 against the bank from `from` to `to`:
    /// [`gain_in`](Self::gain_in) [`Measure::KnnBank`].
    pub fn gain(&self, from: Variant, to: Variant) -> Option<Gain> {
        self.gain_in(Measure::KnnBank, from, to)
    }

    /// The gain in `measure` from `from` to `to`: difference of the means, its standard error
    /// `√(sd₁²/n₁ + sd₂²/n₂)`, and whether every run of `to` beats every run of `from` (the
    /// seeds' ranges do not overlap). With one run of either variant there is no spread: neither
    /// the standard error nor the separation is known.
    pub fn gain_in(&self, measure: Measure, from: Variant, to: Variant) -> Option<Gain> {
        let a = measure.of(self.get(from)?)?;
        let b = measure.of(self.get(to)?)?;
        let spread = a.n >= 2 && b.n >= 2;
        Some(Gain {
            points: b.mean - a.mean,
            standard_error: spread
                .then(|| (a.sd.powi(2) / a.n as f64 + b.sd.powi(2) / b.n as f64).sqrt()),
            separated: spread.then_some(b.min > a.max),
        })
    }

    /// The report as Markdown (`ablation.md`).
    pub fn markdown(&self) -> String {
        let mut md = format!("# Ablation: {}\n\n", self.recipe);
        md.push_str(
            "Top-1 (%) on the test images, mean ± sample standard deviation over the seeds \
             [min–max]; –: not measured. kNN: `last 5` is each run's mean over its last five \
             evaluated epochs (all of them when it has fewer). Linear probe: a linear classifier \
             trained on the frozen features of the final network (`eval.linear`), on the \
             embedding and on the pooled backbone features; `ablation` without \
             `--no-linear-probe` measures it for the runs that lack it. `training min/run`: as \
             the machine's load made it.\n\n\
             | variant | K | runs | kNN vs bank, final | kNN vs bank, last 5 | kNN vs recomputed | \
             linear probe, embedding | linear probe, pooled | training min/run |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for v in &self.variants {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                v.variant,
                v.views,
                v.runs.len(),
                cell(v.knn_bank, true),
                cell(v.knn_bank_last5, true),
                cell(v.knn_recomputed, true),
                cell(v.linear, true),
                cell(v.linear_pooled, true),
                cell(v.train_minutes, false),
            );
        }
        self.shares(&mut md);
        self.merges(&mut md);
        if !self.missing.is_empty() {
            let _ = write!(
                md,
                "\n## Not finished\n\n{}\n",
                self.missing
                    .iter()
                    .map(|m| format!("- {m}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        md
    }

    fn shares(&self, md: &mut String) {
        for measure in [Measure::KnnBank, Measure::LinearEmbedding] {
            self.shares_in(measure, md);
        }
    }

    fn shares_in(&self, measure: Measure, md: &mut String) {
        let steps = [
            ("(a) K views", Variant::Vanilla, Variant::Views),
            ("(b) consistency", Variant::Views, Variant::ViewsConsistency),
            ("(c) merging", Variant::ViewsConsistency, Variant::Full),
            ("full method", Variant::Vanilla, Variant::Full),
        ];
        let rows: Vec<String> = steps
            .iter()
            .filter_map(|&(what, from, to)| {
                self.gain_in(measure, from, to).map(|g| {
                    format!(
                        "| {what} | {to} − {from} | {:+.2} | {} | {} |",
                        g.points,
                        g.standard_error
                            .map_or("– (one seed)".into(), |e| format!("{e:.2}")),
                        match g.separated {
                            Some(true) => "yes",
                            Some(false) => "no",
                            None => "–",
                        }
                    )
                })
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = write!(
            md,
            "\n## Each improvement's share ({})\n\n`separated`: every seed of the later \
             variant above every seed of the earlier one.\n\n\
             | improvement | variants | gain (points) | standard error | separated |\n\
             |---|---|---|---|---|\n",
            measure.heading()
        );
        md.push_str(&rows.join("\n"));
        md.push('\n');
    }

    fn merges(&self, md: &mut String) {
        for v in &self.variants {
            let rounds = v.merge_rounds();
            if rounds.is_empty() {
                continue;
            }
            let _ = write!(
                md,
                "\n## Merge rounds ({}), over the seeds\n\npurity: the share of a round's merged \
                 pairs that join two images of one class (chance is about 1 / classes).\n\n\
                 | epoch | pairs merged | groups | largest group | purity (%) |\n\
                 |---|---|---|---|---|\n",
                v.variant
            );
            for (epoch, records) in rounds {
                let f = |g: &dyn Fn(&MergeRecord) -> f64| {
                    Spread::of(&records.iter().map(|r| g(r)).collect::<Vec<_>>())
                };
                let purity = Spread::of(
                    &records
                        .iter()
                        .filter_map(|r| r.purity.map(|p| 100.0 * p))
                        .collect::<Vec<_>>(),
                );
                let _ = writeln!(
                    md,
                    "| {epoch} | {} | {} | {} | {} |",
                    cell(f(&|r| r.pairs_merged as f64), false),
                    cell(f(&|r| r.groups as f64), false),
                    cell(f(&|r| r.largest_group as f64), false),
                    cell(purity, true),
                );
            }
        }
    }
}

/// A difference between two variants' final accuracy (points).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gain {
    /// Difference of the means.
    pub points: f64,
    /// Standard error of that difference; `None` with one run of either variant.
    pub standard_error: Option<f64>,
    /// Every run of the later variant above every run of the earlier one; `None` with one run
    /// of either variant.
    pub separated: Option<bool>,
}

/// Which final accuracy of the runs a [`Gain`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// kNN top-1 against the bank after the last epoch.
    KnnBank,
    /// Linear-probe top-1 on the embedding of the final network.
    LinearEmbedding,
}

impl Measure {
    /// The variant's spread of this measure over its seeds.
    fn of(self, v: &VariantStats) -> Option<Spread> {
        match self {
            Self::KnnBank => v.knn_bank,
            Self::LinearEmbedding => v.linear,
        }
    }

    /// Its words in a heading.
    fn heading(self) -> &'static str {
        match self {
            Self::KnnBank => "final kNN vs bank",
            Self::LinearEmbedding => "linear probe on the embedding",
        }
    }
}

fn cell(s: Option<Spread>, range: bool) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 => format!("{:.2}", s.mean),
        Some(s) if range => format!("{:.2} ± {:.2} [{:.2}–{:.2}]", s.mean, s.sd, s.min, s.max),
        Some(s) => format!("{:.1} ± {:.1}", s.mean, s.sd),
    }
}
