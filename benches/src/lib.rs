//! Shared set-up of the membank benchmarks: the backend chosen by Cargo feature, and the inputs of
//! one training step.

use bank_core::{MemoryBank, MemoryBankConfig, ViewLayout};
use burn::prelude::*;

/// The allocator of the `bank-train` binary (see its `main.rs`), so that the examples and
/// benchmarks measure what a run does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The backend the benchmarks run on: the most capable one among the enabled features
/// (cuda > tch > wgpu > flex > ndarray).
#[cfg(feature = "cuda")]
pub type Bench = burn::backend::Cuda;
/// The backend the benchmarks run on.
#[cfg(all(feature = "tch", not(feature = "cuda")))]
pub type Bench = burn::backend::LibTorch;
/// The backend the benchmarks run on.
#[cfg(all(feature = "wgpu", not(any(feature = "tch", feature = "cuda"))))]
pub type Bench = burn::backend::Wgpu;
/// The backend the benchmarks run on.
#[cfg(all(
    feature = "flex",
    not(any(feature = "wgpu", feature = "tch", feature = "cuda"))
))]
pub type Bench = burn::backend::Flex;
/// The backend the benchmarks run on.
#[cfg(all(
    feature = "ndarray",
    not(any(feature = "flex", feature = "wgpu", feature = "tch", feature = "cuda"))
))]
pub type Bench = burn::backend::NdArray;

/// The inputs of one step of instance discrimination against the bank.
pub struct StepInputs<B: Backend> {
    /// The bank, `[N, D]`.
    pub bank: MemoryBank<B>,
    /// Unit features `[B·K, D]` standing in for the network output.
    pub features: Tensor<B, 2>,
    /// Bank index of every feature row, `[B·K]`.
    pub indices: Tensor<B, 1, Int>,
    /// The batch layout.
    pub layout: ViewLayout,
}

/// A bank of `rows` rows of dimension `dim` and a batch of `samples × views` features.
pub fn step_inputs<B: Backend>(
    rows: usize,
    dim: usize,
    layout: ViewLayout,
    device: &B::Device,
) -> StepInputs<B> {
    let bank = MemoryBankConfig::new(rows, dim)
        .init::<B>(device)
        .expect("valid bank config");
    let features = MemoryBankConfig::new(layout.rows(), dim)
        .with_seed(1)
        .init::<B>(device)
        .expect("valid feature config")
        .rows();
    let stride = rows / layout.samples;
    let per_sample: Vec<i64> = (0..layout.samples).map(|s| (s * stride) as i64).collect();
    let idx = layout.expand(&per_sample);
    let indices = Tensor::from_data(TensorData::new(idx, [layout.rows()]), device);
    StepInputs {
        bank,
        features,
        indices,
        layout,
    }
}

/// The bare work under an all-rows neighbour search: every block of bank × bankᵀ that
/// [`bank_mining::nearest_neighbours`] computes with `config`, read back to the host as the search
/// reads it, without the top-k selection. The baseline the search is measured against.
pub fn blocked_matmul<B: Backend>(bank: &MemoryBank<B>, config: &bank_mining::KnnConfig) {
    let n = bank.num_rows();
    let d = bank.dim();
    let (rows, cols) = config.block(n, n).expect("valid knn config");
    let all = bank.rows();
    let mut start = 0;
    while start < n {
        let end = (start + rows).min(n);
        let queries = all.clone().slice([start..end, 0..d]);
        for (_, block) in bank.similarity_chunks(queries, cols).expect("valid block") {
            // Read the block back as the search does, so both pay the same transfer.
            let _ = block.into_data();
        }
        start = end;
    }
}
