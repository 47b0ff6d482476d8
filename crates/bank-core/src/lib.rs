//! # bank-core
//!
//! The memory bank of instance-discrimination learning (NPID, Wu et al. 2018; Bulat et al. 2021):
//! one L2-normalised row `v_j ∈ R^D` per training image, kept on a burn device, outside the autodiff
//! graph.
//!
//! - [`MemoryBankConfig`] builds a [`MemoryBank`] from a seed or from given features.
//! - [`MemoryBank::similarities`] and [`MemoryBank::similarity_chunks`] give `f · v_jᵀ`
//!   (the temperature belongs to the losses).
//! - [`MemoryBank::update`] applies `v_i ← normalise(m·v_i + (1−m)·mean_k f_i^(k))` once per sample.
//! - [`ViewLayout`] is the single definition of how the `B·K` rows of a multi-view batch are laid out.
//! - [`MemoryBank::save`] / [`MemoryBank::load`] persist the bank atomically with a checksum.
//! - [`host_gemm`] and [`same_type`]: the shared pieces of the host paths that replace burn-flex's
//!   own operations in the crates above (one GEMM call, the run-time backend check).
//!
//! Invariant: this crate does no file IO except its own persistence, and no crate above it restates
//! the batch layout.

mod bank;
mod chunks;
mod config;
mod error;
mod host;
pub mod host_gemm;
mod layout;
mod norm;
mod persist;
mod precision;
pub mod same_type;
mod shard;
mod tf32;

pub use bank::MemoryBank;
pub use chunks::SimilarityChunks;
pub use config::MemoryBankConfig;
pub use error::{Error, Result};
pub use host::HostBank;
pub use layout::ViewLayout;
pub use norm::l2_normalize;
pub use persist::{Attachment, BANK_FORMAT_VERSION, write_atomic};
pub use precision::Precision;
pub use shard::shard_positions;
