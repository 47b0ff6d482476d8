//! The runs of an ablation: every variant × seed as an ordinary run folder under one root,
//! skipped when complete and resumed when interrupted.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;

use super::Variant;
use crate::metrics::Summary;
use crate::{Error, Progress, Result, RunOptions, TrainConfig, TrainData, train};

/// What an ablation runs: a recipe, its variants and its seeds.
#[derive(Debug, Clone)]
pub struct AblationPlan {
    recipe_path: Option<PathBuf>,
    overrides: Vec<String>,
    recipe: TrainConfig,
    variants: Vec<Variant>,
    seeds: Vec<u64>,
    root: PathBuf,
}

/// One variant × seed: its resolved configuration and its run folder.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// The variant.
    pub variant: Variant,
    /// Its seed (the recipe's `seed` plus the seed's index).
    pub seed: u64,
    /// The resolved configuration (recipe, overrides, variant, seed, name).
    pub config: TrainConfig,
    /// `ROOT/<variant>-seed<seed>`.
    pub dir: PathBuf,
}

/// What [`PlannedRun::execute`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The run had finished before (its `summary.json` exists): nothing was trained.
    Skipped,
    /// The run was trained from its newest checkpoint (or from scratch, when it had none).
    Resumed,
    /// The run was trained from scratch.
    Trained,
}

impl AblationPlan {
    /// The plan for `recipe_path` (the defaults when `None`) with `overrides` applied to every
    /// run, `variants`, and `seeds` seeds counted from the recipe's `seed`. Run folders go to
    /// `runs_root/<recipe name>-ablation/`.
    ///
    /// # Errors
    /// An unreadable or invalid recipe or override ([`Error::Config`] naming the field), or no
    /// seeds.
    pub fn new(
        recipe_path: Option<&Path>,
        overrides: &[String],
        variants: Vec<Variant>,
        seeds: usize,
        runs_root: &Path,
    ) -> Result<Self> {
        if seeds == 0 {
            return Err(Error::Config {
                field: "--seeds".into(),
                reason: "must be at least 1".into(),
            });
        }
        let recipe = TrainConfig::load(recipe_path, overrides)?;
        let root = runs_root.join(format!("{}-ablation", recipe.name));
        Ok(Self {
            recipe_path: recipe_path.map(Path::to_path_buf),
            overrides: overrides.to_vec(),
            seeds: (0..seeds as u64).map(|i| recipe.seed + i).collect(),
            recipe,
            variants,
            root,
        })
    }

    /// The recipe with the common overrides (the data every run trains on comes from it).
    pub fn recipe(&self) -> &TrainConfig {
        &self.recipe
    }

    /// The folder of the run folders, `ablation.md` and `ablation.png`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The variants, in the order each adds one improvement.
    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }

    /// Every run, variant by variant, seed by seed.
    ///
    /// # Errors
    /// A variant's overrides that the recipe's validation refuses ([`Error::Config`]).
    pub fn runs(&self) -> Result<Vec<PlannedRun>> {
        let mut runs = Vec::new();
        for &variant in &self.variants {
            for &seed in &self.seeds {
                let name = format!("{variant}-seed{seed}");
                let mut all = self.overrides.clone();
                all.extend(variant.overrides(&self.recipe));
                all.push(format!("seed={seed}"));
                all.push(format!("name=\"{name}\""));
                runs.push(PlannedRun {
                    variant,
                    seed,
                    config: TrainConfig::load(self.recipe_path.as_deref(), &all)?,
                    dir: self.root.join(name),
                });
            }
        }
        Ok(runs)
    }
}

impl PlannedRun {
    /// The run's summary when it has finished, `None` while it has not.
    ///
    /// # Errors
    /// A finished run folder whose recorded `config.toml` is not this run's configuration (the
    /// recipe changed since: its numbers would be mixed with the new recipe's), or an unreadable
    /// summary.
    pub fn finished(&self, data: &TrainData) -> Result<Option<Summary>> {
        let summary = self.dir.join("summary.json");
        if !summary.is_file() {
            return Ok(None);
        }
        let recorded = TrainConfig::load(Some(&self.dir.join("config.toml")), &[])?;
        // The trainer records the configuration resolved against the data (image size, ...).
        let planned = data.resolve(&self.config);
        if recorded.to_toml() != planned.to_toml() {
            let changes: Vec<String> = crate::resume::config_changes(&recorded, &planned)
                .iter()
                .map(ToString::to_string)
                .collect();
            return Err(Error::Checkpoint {
                path: self.dir.clone(),
                reason: format!(
                    "this finished run was trained with another configuration than the \
                     ablation's now (the recipe or the overrides changed: {}): move the folder \
                     away or choose another --runs",
                    changes.join("; ")
                ),
            });
        }
        let text = std::fs::read_to_string(&summary).map_err(|e| Error::io(&summary, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Checkpoint {
                path: summary,
                reason: format!("unreadable summary: {e}"),
            })
    }

    /// Trains the run unless it has finished: from its newest checkpoint when its folder
    /// exists, else from scratch.
    ///
    /// # Errors
    /// As [`PlannedRun::finished`] and [`train`] (a changed recipe against an interrupted run's
    /// checkpoint is [`Error::ResumeMismatch`]).
    pub fn execute<B: AutodiffBackend>(
        &self,
        data: &TrainData,
        device: &B::Device,
        progress: &mut dyn Progress,
    ) -> Result<Outcome> {
        if self.finished(data)?.is_some() {
            return Ok(Outcome::Skipped);
        }
        let resume = self.dir.exists();
        let options = RunOptions {
            run_dir: self.dir.clone(),
            resume,
        };
        train::<B>(&self.config, data, &options, device, progress)?;
        Ok(if resume {
            Outcome::Resumed
        } else {
            Outcome::Trained
        })
    }
}
