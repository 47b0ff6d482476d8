//! The evaluation protocols of the unsupervised-embedding papers, beyond the kNN monitor:
//!
//! - [`linear_probe`]: a linear classifier on frozen features (embedding and pooled backbone
//!   features), top-1/top-5 on the test split;
//! - [`retrieval`]: Recall@K by cosine nearest neighbour among the test images (query excluded);
//! - [`clustering`]: NMI of k-means (k-means++ seeding, restarts) against the labels;
//! - [`export`]: features, labels, class names and sources as safetensors and `.npy`;
//! - [`pictures`]: `retrieval.png` and `merges.png`.
//!
//! [`features::Features`] are computed once per set, without augmentation, and shared by every
//! protocol of a run ([`runner::run`]).

pub mod clustering;
pub mod commands;
pub mod export;
pub mod features;
pub mod in_training;
pub mod linear_probe;
pub mod pictures;
pub mod retrieval;
pub mod runner;

use serde::{Deserialize, Serialize};

pub use features::{Features, compute_features};
pub use linear_probe::{LinearProbeConfig, ProbeAccuracy};
pub use runner::{ProtocolReport, run};

/// An evaluation protocol, as named in `[eval] protocols` and `bank-train eval --protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Weighted kNN against the bank and against recomputed reference features.
    Knn,
    /// Linear probe on the embedding and on the pooled backbone features.
    Linear,
    /// Recall@K and k-means NMI among the test images, and `retrieval.png`.
    Retrieval,
    /// All of the above.
    All,
}

impl Protocol {
    /// Whether `list` asks for `self` (directly or through [`Protocol::All`]).
    pub fn wanted(self, list: &[Protocol]) -> bool {
        list.iter().any(|&p| p == self || p == Protocol::All)
    }
}
