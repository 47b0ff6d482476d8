//! # bank-train
//!
//! Models, the training loop, kNN evaluation, checkpoints and the `bank-train` command line of
//! membank: instance discrimination with a memory bank (NPID) and the three improvements of
//! Bulat et al. 2021 (K views per sample, consistency, merging of near-duplicates).
//!
//! - [`model`]: the small CNN, ResNet-18/50 (CIFAR or ImageNet stem), projection and L2 norm.
//! - [`TrainConfig`]: a TOML configuration with `section.field=value` overrides.
//! - [`data_source`]: any dataset (CIFAR-10/100, STL-10, image folders; in memory or streamed)
//!   as [`TrainData`].
//! - [`train`]: the loop ([`state`], [`step`], [`run_folder`]); [`knn`]: weighted kNN;
//!   [`checkpoint`]: atomic checkpoints and resume.
//!
//! Everything that holds tensors is generic over the burn backend.

pub mod ablation;
pub mod checkpoint;
pub mod config;
pub mod data_identity;
pub mod data_source;
mod error;
pub mod evaluate;
pub mod feasibility;
mod finite;
pub mod knn;
pub mod malloc;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod parallel;
mod plot;
pub mod protocols;
pub mod resume;
pub mod run_folder;
pub mod schedule;
pub mod state;
pub mod step;
mod step_checkpoints;
mod trainer;

/// burn seeds one generator per backend for the whole process, and the test harness runs tests
/// on several threads: a unit test that seeds a backend's generator or draws from it (initial
/// weights, random tensors) holds this turn, so that no draw lands between another test's seed
/// and its draws.
#[cfg(test)]
pub(crate) fn backend_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

pub use config::TrainConfig;
pub use data_source::{EvalData, TrainData, ViewSpec};
pub use error::{Error, Result};
pub use evaluate::{KnnEvaluator, embed};
pub use state::{TrainState, optimizer};
pub use trainer::{NoProgress, Progress, RunOptions, latest_bank, run_dir, train, training_loader};
