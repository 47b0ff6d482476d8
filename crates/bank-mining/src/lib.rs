//! # bank-mining
//!
//! Bulat et al.'s third improvement, hard-negative mining by merging: instance discrimination is
//! meaningless for images that are nearly identical, so extremely similar samples are gradually
//! merged into groups and stop being each other's negatives (the merged-positive loss of
//! `bank-losses` then treats a whole group as the positive).
//!
//! - [`nearest_neighbours`] / [`query_neighbours`]: exact top-k by cosine similarity (dot products
//!   of unit rows), block by block within a memory budget, ties broken by the lower index; on a
//!   CPU a cache-sized GEMM with the selection fused into it, on a GPU the backend's matmul
//!   ([`SearchEngine`]).
//! - [`combine_shards`]: the same top-k over a bank split by rows across devices, from the lists
//!   each device found among its own rows.
//! - [`UnionFind`]: groups as connected components; a group's id is its smallest member, so the
//!   result does not depend on the order of merges.
//! - [`Merger`] with a [`MergeSchedule`]: when and how much to merge.
//!
//! ## The merging procedure
//!
//! The paper gives no code; this is ours, each part configurable in [`MergeSchedule`]:
//!
//! 1. **When.** Rounds run at epoch `start_epoch` and then every `every_epochs` epochs.
//! 2. **Candidates.** Mutual nearest neighbours in the bank: i's top-1 neighbour is j and j's is i.
//!    Pairs already in the same group are skipped.
//! 3. **Which.** Candidates are ranked by similarity (ties: lower indices first). In round r
//!    (r = 0, 1, …) the top fraction `p_r = min(fraction_start + r·fraction_step, fraction_cap)`
//!    of them is merged, and only those with similarity ≥ `min_similarity`. So merging is
//!    gradual: few, very confident merges early, more later.
//! 4. **Groups.** Merged pairs are joined by union-find (connected components). A merge that would
//!    make a group larger than `max_group_size` is skipped, so chains cannot swallow the dataset.
//!    With `groups = "accumulate"` (the default) groups only grow. With `groups = "recompute"`
//!    each round starts from singletons, so its groups are exactly the pairs it links (every
//!    row has one nearest neighbour, so they are pairs), and a wrong pair lasts only as long as
//!    the bank keeps the two rows mutual nearest neighbours: the PyTorch reference's rule.
//! 5. **Report.** Each round reports pairs merged, number of groups, the largest group and, when
//!    labels are given (diagnostics only, never used to decide), the merge purity: the fraction
//!    of merged pairs whose two images share a class.
//!
//! The groups are saved with the bank as a `groups` attachment of the bank file.

mod error;
mod knn;
mod merge;
mod search_device;
mod search_host;
mod shards;
mod top_k;
mod union_find;

pub use error::{Error, Result};
pub use knn::{KnnConfig, Neighbours, SearchEngine, nearest_neighbours, query_neighbours};
pub use merge::{GroupUpdate, MergeSchedule, Merger, RoundReport};
pub use shards::{ShardNeighbours, combine_shards};
pub use union_find::UnionFind;
