//! The bank of a sharded data-parallel run (`method.bank_sharding = "sharded"`) as a whole: no
//! device holds every row, so the kNN monitor and the merge rounds search every replica's rows on
//! its own device and combine the lists ([`bank_mining::combine_shards`]), and checkpoints
//! gather the rows into host memory.

use std::sync::Arc;
use std::sync::mpsc::channel;

use bank_core::{HostBank, MemoryBank};
use bank_mining::{KnnConfig, Neighbours, ShardNeighbours, combine_shards, query_neighbours};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::DataParallel;
use super::workers::{Job, Worker};
use crate::state::TrainState;
use crate::{Error, Result};

/// The top-`k` of `queries` (`[M, D]` f32 in host memory) among the rows of `bank`, whose first
/// row is row `first` of the whole bank: one replica's part of a sharded search. `k` is capped
/// at the shard's rows.
///
/// # Errors
/// Search errors (a query width other than D).
pub(super) fn shard_neighbours<B: AutodiffBackend>(
    bank: &MemoryBank<B>,
    first: usize,
    queries: &TensorData,
    k: usize,
    device: &B::Device,
) -> Result<ShardNeighbours> {
    let queries = Tensor::<B::InnerBackend, 2>::from_data(queries.clone(), device);
    let config = KnnConfig::new(k.min(bank.num_rows()));
    let neighbours = query_neighbours(&bank.inner(), queries, &config)?;
    Ok(ShardNeighbours { first, neighbours })
}

impl<B: AutodiffBackend> DataParallel<B> {
    /// Whether the bank is split across the replicas (replica 0 holding its rows only).
    pub fn is_sharded(&self) -> bool {
        !self.columns.is_whole()
    }

    /// The whole bank in host memory: replica 0's rows (from `state`) and, when the bank is
    /// sharded, every other replica's, in row order. For checkpoints of a sharded run.
    ///
    /// # Errors
    /// [`Error::Replica`] when a replica's thread has stopped; bank errors when the parts do not
    /// fit together.
    pub fn gather_bank(&self, state: &TrainState<B>) -> Result<HostBank> {
        if !self.is_sharded() {
            return Ok(state.bank.to_host());
        }
        let mut parts = vec![state.bank.to_host()];
        for worker in &self.workers {
            parts.push(ask(worker, Job::Rows)?);
        }
        Ok(HostBank::concat(&parts)?)
    }

    /// The top-`k` rows of the whole bank for each of `queries` (`[M, D]` f32 in host memory):
    /// every replica searches its own rows on its device, replica 0 in `state`, and the lists
    /// are combined (with a replicated bank, replica 0 searches alone). The same neighbours as a search of the whole bank (ties to the lower index).
    ///
    /// # Errors
    /// Search errors; [`Error::Replica`] when a replica's thread has stopped.
    pub fn query_neighbours(
        &self,
        state: &TrainState<B>,
        queries: TensorData,
        k: usize,
    ) -> Result<Neighbours> {
        self.search(state, queries, k, None)
    }

    /// The top-`k` other rows of every row of the whole bank (an all-rows search, each row
    /// excluded from its own list), shard by shard: each replica's rows are the queries of every
    /// replica in turn. For the merge rounds of a sharded run.
    ///
    /// # Errors
    /// As [`DataParallel::query_neighbours`].
    pub fn nearest_neighbours(&self, state: &TrainState<B>, k: usize) -> Result<Neighbours> {
        let mut all = Neighbours {
            k,
            indices: Vec::new(),
            similarities: Vec::new(),
        };
        let own = state.bank.rows().inner().into_data();
        let mut part = self.search(state, own, k, Some(self.columns.rows.start))?;
        let others = if self.is_sharded() {
            &self.workers[..]
        } else {
            &[]
        };
        for worker in others {
            all.indices.append(&mut part.indices);
            all.similarities.append(&mut part.similarities);
            let rows = ask(worker, Job::Bank)?;
            part = self.search(state, rows, k, Some(worker.columns.rows.start))?;
        }
        all.indices.append(&mut part.indices);
        all.similarities.append(&mut part.similarities);
        Ok(all)
    }

    /// Every replica's top list of `queries` combined; with `own_rows = Some(q0)`, query `q` is
    /// bank row `q0 + q` and is left out of its own list (each shard then lists one more).
    fn search(
        &self,
        state: &TrainState<B>,
        queries: TensorData,
        k: usize,
        own_rows: Option<usize>,
    ) -> Result<Neighbours> {
        let queries = Arc::new(queries);
        let each = k + usize::from(own_rows.is_some());
        // Replicated, replica 0 holds every row: no other replica is asked.
        let others = if self.is_sharded() {
            &self.workers[..]
        } else {
            &[]
        };
        let mut replies = Vec::with_capacity(others.len());
        for worker in others {
            let (reply, answer) = channel();
            let job = Job::Query {
                queries: Arc::clone(&queries),
                k: each,
                reply,
            };
            worker.send(job)?;
            replies.push((worker.rank, answer));
        }
        let first = self.columns.rows.start;
        let mut parts = vec![shard_neighbours(
            &state.bank,
            first,
            &queries,
            each,
            &self.device,
        )?];
        for (rank, answer) in replies {
            parts.push(answer.recv().map_err(|_| stopped(rank))??);
        }
        Ok(combine_shards(k, &parts, own_rows)?)
    }
}

/// Sends `worker` the job `make(reply)` and waits for its answer.
pub(super) fn ask<T>(
    worker: &Worker,
    make: impl FnOnce(std::sync::mpsc::Sender<T>) -> Job,
) -> Result<T> {
    let (reply, answer) = channel();
    worker.send(make(reply))?;
    answer.recv().map_err(|_| stopped(worker.rank))
}

fn stopped(rank: usize) -> Error {
    Error::Replica {
        rank,
        reason: "its thread ended before answering".into(),
    }
}
