//! # bank-losses
//!
//! Losses of instance discrimination against a memory bank (NPID, Wu et al. 2018; Bulat et al. 2021),
//! generic over burn backends and numerically stable (log-sum-exp throughout).
//!
//! Every loss starts from the similarities `s = f · Vᵀ` that [`bank_core::MemoryBank`] computes.
//! [`BankLogProbs`] turns them into `log p(j|x) = log softmax(s/τ)` once, and the softmax losses share it:
//!
//! | loss | formula | type |
//! |---|---|---|
//! | instance | `−log p(i|x)` | [`instance_loss`] |
//! | multi-view (Bulat eq. 2) | `−(1/BK) Σ_i Σ_k log p(i|x_i^k)` | [`multi_view_loss`] |
//! | consistency (eq. 3) | `λ · mean Σ_k Σ_{j≠k} KL(p(·|x^k) ‖ p(·|x^j))` | [`ConsistencyLoss`] |
//! | merged positives | `−log Σ_{j∈G(i)} p(j|x)` | [`merged_positive_loss`] |
//! | NCE (NPID's approximation) | binary noise-contrastive estimation, Z as a moving average | [`NceLoss`] |
//!
//! [`SoftmaxObjective`] computes the softmax losses (instance, merged, + consistency) with their
//! gradient with respect to the features in closed form, for the training step; the autodiff
//! losses above are its reference.
//!
//! Invariant: this crate knows nothing of data or models; it sees similarities, indices and groups.

mod blocked;
mod closed_form;
mod consistency;
mod error;
mod host_objective;
mod host_softmax;
mod host_step;
mod instance;
mod lanes;
mod log_probs;
mod merged;
mod multi_view;
mod nce;
mod shards;

pub use closed_form::{LossAndGrad, Positives, SoftmaxObjective};
pub use consistency::ConsistencyLoss;
pub use error::{Error, Result};
pub use instance::instance_loss;
pub use log_probs::BankLogProbs;
pub use merged::merged_positive_loss;
pub use multi_view::multi_view_loss;
pub use nce::{NceConfig, NceLoss, nce_similarities};
pub use shards::{ShardColumns, ShardReduce, WholeBank};
