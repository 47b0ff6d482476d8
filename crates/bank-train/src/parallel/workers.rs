//! The replicas' threads and the step that deals a batch to them.

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use bank_core::{HostBank, MemoryBank};
use bank_data::HostBatch;
use bank_losses::ShardColumns;
use burn::collective::{CollectiveConfig, PeerId, finish_collective, register, reset_collective};
use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::bank_shards::shard_neighbours;
use super::sync::check_same_start;
use super::{Replica, ShardStep, replica_model};
use crate::config::BankSharding;
use crate::model::EmbeddingNet;
use crate::state::TrainState;
use crate::{Error, Result};

/// What the run's thread sends a replica.
pub(super) enum Job {
    /// Take part in this step.
    Step(Box<ShardStep>),
    /// New merge groups (bank row → group id), after a merge round.
    Groups(Vec<i64>),
    /// Send back a copy of the bank's rows.
    Bank(Sender<TensorData>),
    /// Send back the bank's rows in their storage precision.
    Rows(Sender<HostBank>),
    /// Send back the top-`k` of these queries (`[M, D]` f32) among the replica's bank rows.
    Query {
        queries: Arc<TensorData>,
        k: usize,
        reply: Sender<Result<bank_mining::ShardNeighbours>>,
    },
}

/// Where a replica's rows of a sharded bank come from when replica 0's state does not hold them:
/// `rows_of(range, device)` makes the rows `range` on `device`.
pub type RowsOf<'a, B> = dyn Fn(Range<usize>, &Device<B>) -> Result<MemoryBank<B>> + 'a;

/// A replica's thread.
pub(super) struct Worker {
    pub(super) rank: usize,
    /// The bank rows it holds.
    pub(super) columns: ShardColumns,
    jobs: Option<Sender<Job>>,
    results: Receiver<Result<f64>>,
    handle: Option<JoinHandle<()>>,
}

/// Data-parallel training over `W` devices: replica 0 is the caller's [`TrainState`], replicas
/// 1..W live on their own threads, each with a copy of the model, optimiser state and bank.
///
/// Dropping it ends the threads and the collective session.
pub struct DataParallel<B: AutodiffBackend> {
    pub(super) workers: Vec<Worker>,
    pub(super) device: B::Device,
    /// Replica 0's rows of the bank (every row unless sharded).
    pub(super) columns: ShardColumns,
}

impl<B: AutodiffBackend> DataParallel<B> {
    /// Starts replicas 1..W as copies of `state` on `devices[1..]`; `state` (on `devices[0]`)
    /// is replica 0. Registers every replica with burn-collective (the process's collective
    /// session of backend `B` is reset first: one data-parallel run per process at a time),
    /// then checks that all start from the same parameters and bank.
    ///
    /// With [`BankSharding::Sharded`] each replica holds only its range of the bank's rows
    /// ([`ShardColumns::split`]), replica 0 included: no device holds the whole bank. A state
    /// holding every row gives each replica its rows and keeps its own; a state built for the
    /// sharded run ([`TrainState::bank_rows`] already replica 0's) holds no other rows, so
    /// `rows_of(range, device)` makes them ([`crate::state::bank_shard`]: from the checkpoint
    /// resumed, or drawn as a fresh run draws them).
    ///
    /// # Errors
    /// [`Error::Collective`] when a registration or the start check fails; bank errors from
    /// `rows_of`, or a state whose rows are neither every row nor replica 0's.
    pub fn start(
        state: &mut TrainState<B>,
        devices: &[B::Device],
        sharding: BankSharding,
        rows_of: &RowsOf<'_, B>,
    ) -> Result<Self> {
        let world = devices.len();
        let config = CollectiveConfig::default().with_num_devices(world);
        reset_collective::<B::InnerBackend>();
        materialize(&state.model);
        let n = state.bank_rows.total;
        let columns = |rank| match sharding {
            BankSharding::Replicated => ShardColumns::whole(n),
            BankSharding::Sharded => ShardColumns::split(n, world, rank),
        };
        // With every row at hand, the shards are cut from one host copy.
        let sharded = sharding == BankSharding::Sharded;
        let whole = (sharded && state.bank_rows.is_whole()).then(|| state.bank.to_host());
        let shard = |rank: usize, device: &B::Device| -> Result<MemoryBank<B>> {
            let c: ShardColumns = columns(rank);
            match &whole {
                _ if c.is_whole() => Ok(state.bank.clone().to_device(device)),
                Some(host) => Ok(host.rows_range(c.rows)?.to_device(device)?),
                None => rows_of(c.rows, device),
            }
        };
        let device = devices[0].clone();
        let own = columns(0);
        // Every bank is made before any thread starts: a replica that failed to start would
        // leave the others waiting for it in the start check.
        let own_bank = match (state.bank_rows.rows == own.rows, &whole) {
            (true, _) => None,
            (false, Some(_)) => Some(shard(0, &device)?),
            (false, None) => {
                return Err(Error::Config {
                    field: "method.bank_sharding".into(),
                    reason: format!(
                        "the run's state holds bank rows {:?}, neither all {n} nor replica 0's \
                         {:?}",
                        state.bank_rows.rows, own.rows
                    ),
                });
            }
        };
        let banks = devices
            .iter()
            .enumerate()
            .skip(1)
            .map(|(rank, device)| shard(rank, device))
            .collect::<Result<Vec<_>>>()?;
        let mut workers = Vec::with_capacity(world.saturating_sub(1));
        for ((rank, device), bank) in devices.iter().enumerate().skip(1).zip(banks) {
            let replica = Replica {
                rank,
                device: device.clone(),
                model: replica_model(&state.model, device),
                optim: state.optim.clone(),
                bank,
                columns: columns(rank),
                groups: state.groups.clone().map(|g| g.to_device(device)),
                consistency: state.consistency,
                block_rows: state.block_rows,
                nce: state.nce.clone().map(|n| n.to_device(device)),
            };
            workers.push(spawn(replica, config.clone(), world));
        }
        if let Some(bank) = own_bank {
            state.bank = bank;
            state.bank_rows = own.clone();
        }
        register::<B::InnerBackend>(PeerId::from(0), device.clone(), config).map_err(|e| {
            Error::Collective {
                op: "register",
                rank: 0,
                reason: format!("{e:?}"),
            }
        })?;
        check_same_start((&state.model, &state.bank, &own), (0, world), &device)?;
        Ok(Self {
            workers,
            device,
            columns: own,
        })
    }

    /// Replicas, `W`.
    pub fn world(&self) -> usize {
        self.workers.len() + 1
    }

    /// One data-parallel step on `batch`: every replica trains on its rank-strided shard;
    /// returns the new state and the batch's mean loss (the replicas' losses weighted by their
    /// share of the samples). As [`train_step`](crate::step::train_step) on one device, except
    /// for BatchNorm's batch statistics, which are per shard.
    ///
    /// # Errors
    /// Any replica's error; [`Error::Replica`] when a replica's thread has stopped.
    pub fn step(
        &mut self,
        mut state: TrainState<B>,
        batch: &HostBatch,
        lr: f64,
        tau: f64,
    ) -> Result<(TrainState<B>, f64)> {
        // NCE's noise for the whole batch, drawn on replica 0 as one device would draw it.
        let noise = match &state.nce {
            Some(nce) => {
                let drawn = nce
                    .sample_noise(batch.layout.rows(), &self.device)
                    .into_data();
                let values =
                    drawn
                        .convert::<i64>()
                        .to_vec::<i64>()
                        .map_err(|e| Error::Replica {
                            rank: 0,
                            reason: format!("cannot read NCE's noise indices: {e:?}"),
                        })?;
                Some((values, nce.config().noise))
            }
            None => None,
        };
        let noise = noise.as_ref().map(|(v, m)| (v.as_slice(), *m));
        let mut jobs = self.shard(batch, (lr, tau), noise).into_iter();
        let own = jobs.next().expect("replica 0's part");
        for (worker, job) in self.workers.iter().zip(jobs) {
            worker.send(Job::Step(Box::new(job)))?;
        }
        let replica = Replica {
            rank: 0,
            device: self.device.clone(),
            model: state.model,
            optim: state.optim,
            bank: state.bank,
            columns: self.columns.clone(),
            groups: state.groups,
            consistency: state.consistency,
            block_rows: state.block_rows,
            nce: state.nce,
        };
        let (replica, loss) = replica.step(&own)?;
        state.model = replica.model;
        state.optim = replica.optim;
        state.bank = replica.bank;
        state.groups = replica.groups;
        state.nce = replica.nce;
        for worker in &self.workers {
            worker.receive()?; // the same batch loss, or the replica's error
        }
        state.step += 1;
        Ok((state, loss))
    }

    /// Sends the groups of `state` (after a merge round) to replicas 1..W.
    ///
    /// # Errors
    /// [`Error::Replica`] when a replica's thread has stopped.
    pub fn share_groups(&self, state: &TrainState<B>) -> Result<()> {
        let Some(groups) = &state.groups else {
            return Ok(());
        };
        let ids: Vec<i64> = groups
            .clone()
            .into_data()
            .convert::<i64>()
            .to_vec()
            .map_err(|e| Error::Replica {
                rank: 0,
                reason: format!("cannot read the merge groups: {e:?}"),
            })?;
        for worker in &self.workers {
            worker.send(Job::Groups(ids.clone()))?;
        }
        Ok(())
    }

    /// The bank rows of replicas 1..W (their shards' rows when sharded), read back to the host
    /// as f32 (to compare the replicas' banks).
    ///
    /// # Errors
    /// [`Error::Replica`] when a replica's thread has stopped.
    pub fn replica_banks(&self) -> Result<Vec<TensorData>> {
        self.workers
            .iter()
            .map(|worker| super::bank_shards::ask(worker, Job::Bank))
            .collect()
    }

    /// Every replica's part of `batch`; with NCE, each replica's rows of `noise` (the batch's
    /// noise indices, `[B·K, m]` row-major: row r's noise is what one device pairs with row r).
    fn shard(
        &self,
        batch: &HostBatch,
        (lr, tau): (f64, f64),
        noise: Option<(&[i64], usize)>,
    ) -> Vec<ShardStep> {
        let world = self.world();
        let samples = batch.layout.samples.max(1) as f64;
        let mut offset = 0;
        (0..world)
            .map(|rank| {
                let shard = batch.shard(rank, world);
                let job = ShardStep {
                    noise: noise.map(|(all, m)| noise_rows(all, m, batch, (rank, world))),
                    share: shard.layout.samples as f64 / samples,
                    offset,
                    rows: batch.layout.rows(),
                    world,
                    lr,
                    tau,
                    shard,
                };
                offset += job.shard.layout.rows();
                job
            })
            .collect()
    }
}

/// The noise rows (`m` indices each, of the whole batch's `all`) of the batch rows that replica
/// `rank` of `world` trains on, in its shard's order: its samples' views, as
/// [`HostBatch::shard`] deals them. Each view keeps the noise one device pairs it with.
fn noise_rows(all: &[i64], m: usize, batch: &HostBatch, (rank, world): (usize, usize)) -> Vec<i64> {
    let layout = batch.layout;
    (rank..layout.samples)
        .step_by(world)
        .flat_map(|s| (0..layout.views).map(move |v| layout.row(s, v)))
        .flat_map(|row| all[row * m..(row + 1) * m].iter().copied())
        .collect()
}

impl<B: AutodiffBackend> Drop for DataParallel<B> {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            worker.jobs.take(); // the thread's loop ends
        }
        let _ = finish_collective::<B::InnerBackend>(PeerId::from(0));
        for worker in &mut self.workers {
            if let Some(handle) = worker.handle.take() {
                let _ = handle.join();
            }
        }
    }
}

impl Worker {
    pub(super) fn send(&self, job: Job) -> Result<()> {
        let stopped = || Error::Replica {
            rank: self.rank,
            reason: "its thread has ended".into(),
        };
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }

    fn receive(&self) -> Result<f64> {
        self.results.recv().map_err(|_| Error::Replica {
            rank: self.rank,
            reason: "its thread ended without a result (a panic?)".into(),
        })?
    }
}

/// Draws every lazily initialised parameter of `model` now. burn initialises a parameter on
/// first use, and a clone of a parameter not yet drawn draws its own values: replicas cloned
/// from a fresh model would start from different weights.
pub(super) fn materialize<B: AutodiffBackend>(model: &EmbeddingNet<B>) {
    struct Touch;
    impl<B: AutodiffBackend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
}

/// Starts `replica`'s thread: register, then run the steps it is sent until the channel closes.
fn spawn<B: AutodiffBackend>(
    replica: Replica<B>,
    config: CollectiveConfig,
    world: usize,
) -> Worker {
    let (rank, columns) = (replica.rank, replica.columns.clone());
    let (jobs, inbox) = channel::<Job>();
    let (outbox, results) = channel::<Result<f64>>();
    let handle = std::thread::spawn(move || {
        let peer = PeerId::from(rank);
        if let Err(e) = register::<B::InnerBackend>(peer, replica.device.clone(), config) {
            let _ = outbox.send(Err(Error::Collective {
                op: "register",
                rank,
                reason: format!("{e:?}"),
            }));
            return;
        }
        let start = (&replica.model, &replica.bank, &replica.columns);
        if let Err(e) = check_same_start(start, (rank, world), &replica.device) {
            let _ = outbox.send(Err(e));
            return;
        }
        serve(replica, &inbox, &outbox);
        let _ = finish_collective::<B::InnerBackend>(peer);
    });
    Worker {
        rank,
        columns,
        jobs: Some(jobs),
        results,
        handle: Some(handle),
    }
}

/// A replica's loop: steps and group updates until the run's thread hangs up or a step fails.
fn serve<B: AutodiffBackend>(
    mut replica: Replica<B>,
    inbox: &Receiver<Job>,
    outbox: &Sender<Result<f64>>,
) {
    while let Ok(job) = inbox.recv() {
        match job {
            Job::Step(job) => match replica.step(&job) {
                Ok((next, loss)) => {
                    replica = next;
                    if outbox.send(Ok(loss)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = outbox.send(Err(e));
                    return;
                }
            },
            Job::Groups(ids) => {
                let n = ids.len();
                replica.groups = Some(Tensor::from_data(
                    TensorData::new(ids, [n]),
                    &replica.device,
                ));
            }
            Job::Bank(reply) => {
                let _ = reply.send(replica.bank.rows().inner().into_data());
            }
            Job::Rows(reply) => {
                let _ = reply.send(replica.bank.to_host());
            }
            Job::Query { queries, k, reply } => {
                let first = replica.columns.rows.start;
                let found = shard_neighbours(&replica.bank, first, &queries, k, &replica.device);
                let _ = reply.send(found);
            }
        }
    }
}
