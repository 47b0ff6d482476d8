//! Exact top-k neighbours against the bank, computed block by block within a memory budget, on
//! the host or on the backend's device ([`SearchEngine`]).

use bank_core::MemoryBank;
use burn::prelude::*;

use crate::error::invalid;
use crate::top_k::TopK;
use crate::{Error, Result, search_device, search_host};

/// Where a search computes its similarities. Both engines select by the same rule (ties to the
/// lower index, NaN below every number); similarities may differ in the last bits, as two GEMMs
/// do, so neighbours whose similarities agree to rounding may come in another order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchEngine {
    /// [`SearchEngine::Host`] when the bank lives in host memory (the `flex` and `ndarray`
    /// backends, LibTorch on the CPU: a backend name holding `flex`, `ndarray` or `<cpu>`),
    /// [`SearchEngine::Device`] otherwise (wgpu, CUDA, LibTorch on a GPU).
    #[default]
    Auto,
    /// An f32 copy of the bank in host memory (`N·D·4` bytes; queries other than the bank add
    /// `M·D·4`), a cache-sized GEMM per thread with the selection fused into it. The fast engine
    /// on a CPU.
    Host,
    /// The backend's matmul block by block on the bank's device, each block read back to the
    /// host for the selection. For a GPU: only the blocks cross to the host.
    Device,
}

impl SearchEngine {
    /// The engine a search of a bank on `device` runs on: `Auto` resolved by the backend's name.
    pub fn resolve<B: Backend>(self, device: &B::Device) -> Self {
        match self {
            Self::Auto => {
                let name = B::name(device);
                let host = ["flex", "ndarray", "<cpu>"]
                    .iter()
                    .any(|n| name.contains(n));
                if host { Self::Host } else { Self::Device }
            }
            chosen => chosen,
        }
    }
}

/// How a neighbour search runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnnConfig {
    /// Neighbours per query.
    pub k: usize,
    /// Most bytes of similarities alive at once: the device block plus its host copy
    /// ([`SearchEngine::Device`]), or every thread's block ([`SearchEngine::Host`], at least 64
    /// values per thread). It covers similarities only: the host engine's f32 copies of bank and
    /// queries come on top. Default 256 MiB: enough for N = 1,281,167 (ImageNet) in blocks.
    pub memory_budget: usize,
    /// Where the similarities are computed. Default [`SearchEngine::Auto`].
    pub engine: SearchEngine,
}

impl KnnConfig {
    /// Top-`k` with the default 256 MiB budget, on the engine that suits the bank's device.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            memory_budget: 256 << 20,
            engine: SearchEngine::Auto,
        }
    }

    /// Sets the memory budget in bytes.
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// Sets the engine.
    pub fn with_engine(mut self, engine: SearchEngine) -> Self {
        self.engine = engine;
        self
    }

    /// The budget in f32 values, checked.
    fn budget_values(&self) -> Result<usize> {
        if self.memory_budget < 8 << 10 {
            return Err(invalid(
                "memory_budget",
                self.memory_budget,
                "must be at least 8 KiB",
            ));
        }
        Ok(self.memory_budget / 4)
    }

    /// `(query rows, bank columns)` per device block, so that `rows × cols × 4 bytes × 2 ≤
    /// budget`.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming `memory_budget` when it is under 8 KiB.
    pub fn block(&self, queries: usize, n: usize) -> Result<(usize, usize)> {
        let elements = self.budget_values()? / 2;
        let rows = queries.clamp(1, 1024).min(elements / 64);
        let cols = (elements / rows).clamp(1, n);
        Ok((rows, cols))
    }

    /// `(query rows, bank columns)` per task of the host engine with `threads` threads, so that
    /// `threads × rows × cols × 4 bytes ≤ budget`: at most 256 × 4,096 (4 MiB, cache-sized),
    /// fewer rows when there are too few queries to give every thread a block.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming `memory_budget` when it is under 8 KiB.
    pub fn host_block(&self, queries: usize, n: usize, threads: usize) -> Result<(usize, usize)> {
        let threads = threads.max(1);
        let per_thread = (self.budget_values()? / threads).max(64);
        let rows = queries
            .div_ceil(threads)
            .clamp(1, search_host::ROWS)
            .min(per_thread / 64);
        let cols = (per_thread / rows)
            .clamp(1, n.max(1))
            .min(search_host::COLUMNS);
        Ok((rows, cols))
    }
}

/// The k nearest bank rows of each query, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    /// Neighbours per query.
    pub k: usize,
    /// Bank row indices, `[queries × k]` row-major.
    pub indices: Vec<u32>,
    /// Their similarities, same layout.
    pub similarities: Vec<f32>,
}

impl Neighbours {
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.indices.len() / self.k.max(1)
    }

    /// Whether there are no queries.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Lays out one list per query, each sorted best first.
    pub(crate) fn from_lists(k: usize, lists: Vec<TopK>) -> Self {
        let (indices, similarities) = lists
            .into_iter()
            .flat_map(|list| list.items)
            .map(|(s, j)| (j, s))
            .unzip();
        Self {
            k,
            indices,
            similarities,
        }
    }

    /// Indices and similarities of query `q`'s neighbours, best first.
    pub fn of(&self, q: usize) -> (&[u32], &[f32]) {
        let r = q * self.k..(q + 1) * self.k;
        (&self.indices[r.clone()], &self.similarities[r])
    }
}

/// Top-`k` neighbours of every bank row among all the other rows (itself excluded).
/// Ties are broken by the lower index, so the result is deterministic.
///
/// # Errors
/// [`Error::InvalidValue`] for `k` outside `1..N` or a budget under 8 KiB; [`Error::Read`] when
/// the rows cannot be read from the device.
pub fn nearest_neighbours<B: Backend>(
    bank: &MemoryBank<B>,
    config: &KnnConfig,
) -> Result<Neighbours> {
    let n = bank.num_rows();
    if config.k == 0 || config.k >= n {
        return Err(invalid(
            "k",
            config.k,
            "must be in 1..N (the row itself is excluded)",
        ));
    }
    let rows = bank.rows();
    let d = bank.dim();
    if config.engine.resolve::<B>(&bank.device()) == SearchEngine::Host {
        config.budget_values()?;
        let rows = host_values(rows)?;
        return search_host::search(&rows, &rows, d, config, true);
    }
    search_device::search(bank, n, config, true, |start, end| {
        rows.clone().slice([start..end, 0..d])
    })
}

/// Top-`k` bank rows of each query feature (for evaluation). Ties go to the lower index.
///
/// # Shapes
/// - `queries`: `[M, D]`
///
/// # Errors
/// [`Error::InvalidValue`] for `k` outside `1..=N` or a budget under 8 KiB; a shape error for
/// queries whose width is not D; [`Error::Read`] when values cannot be read from the device.
pub fn query_neighbours<B: Backend>(
    bank: &MemoryBank<B>,
    queries: Tensor<B, 2>,
    config: &KnnConfig,
) -> Result<Neighbours> {
    let [m, d] = queries.dims();
    if config.k == 0 || config.k > bank.num_rows() {
        return Err(invalid("k", config.k, "must be in 1..=N"));
    }
    if d != bank.dim() {
        return Err(bank_core::Error::Shape {
            what: "queries",
            expected: format!("[M, {}]", bank.dim()),
            actual: vec![m, d],
        }
        .into());
    }
    if config.engine.resolve::<B>(&bank.device()) == SearchEngine::Host {
        config.budget_values()?;
        let rows = host_values(bank.rows())?;
        return search_host::search(&rows, &host_values(queries)?, d, config, false);
    }
    search_device::search(bank, m, config, false, |start, end| {
        queries.clone().slice([start..end, 0..d])
    })
}

/// A tensor's values as f32 in host memory, row-major.
fn host_values<B: Backend>(tensor: Tensor<B, 2>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::Read(format!("{e:?}")))
}
