//! The closed-form objective on a bank split by rows (PartialFC) against the same objective on
//! the whole bank: the shards run on threads, their row statistics combined through a barrier.

use std::sync::{Barrier, Mutex};

use crate::common::*;
use bank_core::{MemoryBank, MemoryBankConfig, ViewLayout};
use bank_losses::{ConsistencyLoss, Error, Positives, ShardColumns, ShardReduce, SoftmaxObjective};
use burn::prelude::*;

/// Each shard's reduction: every shard posts its tensor, waits for the others, and combines
/// all of them in rank order.
struct ThreadReduce<'a> {
    rank: usize,
    posted: &'a Mutex<Vec<Option<TensorData>>>,
    barrier: &'a Barrier,
}

impl ThreadReduce<'_> {
    fn combine<B: Backend, const D: usize>(
        &mut self,
        tensor: Tensor<B, D>,
        op: fn(Tensor<B, D>, Tensor<B, D>) -> Tensor<B, D>,
    ) -> Tensor<B, D> {
        let device = tensor.device();
        self.posted.lock().unwrap()[self.rank] = Some(tensor.into_data());
        self.barrier.wait();
        let all: Vec<TensorData> = self
            .posted
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect();
        self.barrier.wait();
        all.into_iter()
            .map(|d| Tensor::<B, D>::from_data(d, &device))
            .reduce(op)
            .unwrap()
    }
}

impl<B: Backend> ShardReduce<B> for ThreadReduce<'_> {
    type Error = Error;

    fn sum<const D: usize>(&mut self, tensor: Tensor<B, D>) -> Result<Tensor<B, D>, Error> {
        Ok(self.combine(tensor, |a, b| a + b))
    }

    fn max(&mut self, tensor: Tensor<B, 2>) -> Result<Tensor<B, 2>, Error> {
        Ok(self.combine(tensor, Tensor::max_pair))
    }
}

/// Loss and `∂L/∂features` of `objective` on every shard of `rows` split over `world`.
fn on_shards<B: Backend>(
    objective: &SoftmaxObjective,
    (rows, n, d, world): (&[f32], usize, usize, usize),
    (features, targets, positives, layout): (
        &Tensor<B, 2>,
        &Tensor<B, 1, Int>,
        &Positives<B>,
        ViewLayout,
    ),
) -> Vec<(f64, Vec<f32>)> {
    let posted = Mutex::new(vec![None; world]);
    let barrier = Barrier::new(world);
    std::thread::scope(|scope| {
        let shards: Vec<_> = (0..world)
            .map(|rank| {
                let (posted, barrier) = (&posted, &barrier);
                scope.spawn(move || {
                    let columns = ShardColumns::split(n, world, rank);
                    let device = features.device();
                    let own = &rows[columns.rows.start * d..columns.rows.end * d];
                    let bank = bank_of::<B>(own, d, &device);
                    let mut reduce = ThreadReduce {
                        rank,
                        posted,
                        barrier,
                    };
                    let out = objective
                        .eval_shard(
                            (&bank, &columns),
                            features.clone(),
                            targets.clone(),
                            positives,
                            layout,
                            &mut reduce,
                        )
                        .unwrap();
                    (scalar(out.loss), values(out.features_grad))
                })
            })
            .collect();
        shards.into_iter().map(|s| s.join().unwrap()).collect()
    })
}

fn bank_of<B: Backend>(rows: &[f32], d: usize, device: &B::Device) -> MemoryBank<B> {
    let n = rows.len() / d;
    MemoryBankConfig::new(n, d)
        .init_from_features(tensor::<B>(rows.to_vec(), n, d, device))
        .unwrap()
}

fn sharded_objective_matches_the_whole_bank<B: Backend>(device: &B::Device) {
    // 50 rows over 3 shards (17, 17, 16): no shard a multiple of 8 rows.
    let (n, d, world) = (50, 16, 3);
    let rows = values(
        MemoryBankConfig::new(n, d)
            .with_seed(5)
            .init::<B>(device)
            .unwrap()
            .rows(),
    );
    let whole = bank_of::<B>(&rows, d, device);
    let layout = ViewLayout::new(4, 2);
    let targets: Vec<i64> = layout
        .expand(&[3, 20, 33, 49])
        .iter()
        .map(|&t| t as i64)
        .collect();
    let targets = indices::<B>(&targets, device);
    // Random unit features: losses of order log N, every row's softmax spread over the shards.
    let m = layout.rows();
    let mut f: Vec<f64> = host_matrix(m, d, 8).iter().map(|&x| x as f64).collect();
    normalize_rows(&mut f, d);
    let features = tensor::<B>(f.iter().map(|&x| x as f32).collect(), m, d, device);
    let groups: Vec<i64> = (0..n as i64).map(|j| j / 5).collect();
    let plain = SoftmaxObjective::new(0.07).unwrap();
    let with_c = plain.with_consistency(Some(ConsistencyLoss::new(0.5).unwrap()));
    for (what, objective) in [("plain", plain), ("consistency", with_c)] {
        for positives in [
            Positives::Own,
            Positives::Groups(indices::<B>(&groups, device)),
        ] {
            let want = objective
                .eval(
                    &whole,
                    features.clone(),
                    targets.clone(),
                    &positives,
                    layout,
                )
                .unwrap();
            let (loss, grad) = (scalar(want.loss), values(want.features_grad));
            let inputs = (&features, &targets, &positives, layout);
            for (rank, (l, g)) in on_shards(&objective, (&rows, n, d, world), inputs)
                .into_iter()
                .enumerate()
            {
                assert!(
                    (l - loss).abs() <= 1e-5 * (1.0 + loss.abs()),
                    "{what}, shard {rank}: loss {l} against {loss}"
                );
                let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
                let diff = max_diff(&grad, &g64);
                assert!(diff <= 1e-5, "{what}, shard {rank}: gradient off by {diff}");
            }
        }
    }
}

on_backends!(sharded_objective_matches_the_whole_bank);
