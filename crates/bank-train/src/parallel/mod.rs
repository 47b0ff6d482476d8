//! Data-parallel training on several devices of one process, on burn's collective operations
//! (`burn-collective`).
//!
//! - [`devices`]: the `train.devices` names (`"cpu"`, `"cuda:1"`) as backend devices.
//! - [`Replica`]: one device's model, optimiser and bank, and its part of a step: its shard of
//!   the batch ([`HostBatch::shard`](bank_data::HostBatch::shard), rank-strided), the closed-form
//!   loss gradient scaled by its share of the samples, the gradients summed over the replicas
//!   with an all-reduce, the optimiser step, then the bank update gathered from every replica
//!   ([`gather`]) and applied by each, so the banks stay bit-identical.
//! - [`sharded`] (`method.bank_sharding = "sharded"`): replica r computes the similarities of the
//!   whole batch against its range of the bank's rows only, and the softmax's row maxima and sums
//!   are combined across replicas (PartialFC), so the loss stays the full softmax; each replica
//!   updates its own rows. Every replica, replica 0 included, holds only its rows, so the bank's
//!   storage is split W ways with its `[B·K, N]` similarities.
//! - [`bank_shards`]: a sharded bank as a whole: the kNN monitor and the merge rounds search
//!   every shard on its own device and combine the top lists; checkpoints gather the rows into
//!   host memory, and on resume each device receives only its rows of the saved bank.
//! - [`DataParallel`]: one thread per device beyond the first; the caller's thread is replica 0
//!   and keeps the run's [`TrainState`](crate::state::TrainState), from which checkpoints,
//!   evaluation and merge rounds work as on one device (the groups are then sent to the others).
//!
//!
//! Deliberately absent: several machines. burn-collective 0.21's global mode fails on the second
//! all-reduce of a session (its transfer ids are fixed per strategy; tracel-ai/burn#4549), and a
//! step needs one per parameter.
//!
//! BatchNorm statistics stay per device, as in PyTorch's DistributedDataParallel without
//! SyncBatchNorm: each replica normalises its shard with its own batch statistics, and the
//! running statistics saved in checkpoints are replica 0's.

mod bank_shards;
pub mod devices;
mod gather;
mod replica;
mod sharded;
mod sync;
mod workers;

pub use devices::parse_devices;
pub use gather::gather_updates;
pub(crate) use replica::replica_model;
pub use replica::{Replica, ShardStep};
pub use workers::{DataParallel, RowsOf};

#[cfg(test)]
mod tests;
