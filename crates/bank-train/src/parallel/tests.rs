//! Data-parallel steps against a second implementation on one device: the same batch, each
//! shard forwarded separately (BatchNorm's batch statistics are per shard in both), the scaled
//! gradients accumulated, one SGD step, one bank update with every shard's rows.

use std::ops::Range;

use bank_core::{MemoryBank, ViewLayout};
use bank_data::HostBatch;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{DataParallel, replica_model};
use crate::TrainConfig;
use crate::config::BankSharding::{self, Replicated, Sharded};
use crate::state::TrainState;
use crate::step::{SoftmaxTarget, softmax_grads};

// Every test here holds `crate::backend_turn()`: burn-collective has one session per backend
// per process, and the tests seed and draw from the backend's generator.

type A = burn::backend::Autodiff<burn::backend::NdArray>;

/// A batch of random views of `samples` distinct bank rows (random pixels, 16×16 RGB).
fn batch(rng: &mut StdRng, n: usize, samples: usize, views: usize) -> HostBatch {
    let mut rows: Vec<usize> = (0..n).collect();
    for i in 0..samples {
        let j = rng.random_range(i..n);
        rows.swap(i, j);
    }
    let size = 16;
    let images = (0..samples * views * 3 * size * size)
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect();
    HostBatch {
        images,
        size,
        channels: 3,
        samples: rows[..samples].to_vec(),
        labels: None,
        layout: ViewLayout::new(samples, views),
    }
}

/// The data-parallel step done on one device: every shard of `world` forwarded on its own.
fn accumulated_step(state: &mut TrainState<A>, host: &HostBatch, world: usize, lr: f64) -> f64 {
    let device = Default::default();
    let tau = 0.1;
    let mut sum = GradientsAccumulator::new();
    let (mut loss, mut indices, mut features) = (0.0, Vec::new(), Vec::new());
    for rank in 0..world {
        let shard = host.shard(rank, world);
        if shard.layout.samples == 0 {
            continue;
        }
        let share = shard.layout.samples as f64 / host.layout.samples as f64;
        let batch = shard.to_device::<A>(&device);
        let f = state.model.forward(batch.images.clone());
        let (grads, l) =
            softmax_grads(SoftmaxTarget::of(state), &batch, f.clone(), tau, share).unwrap();
        sum.accumulate(
            &state.model,
            GradientsParams::from_grads(grads, &state.model),
        );
        loss += share * l.into_scalar().elem::<f64>();
        indices.push(batch.indices);
        features.push(f.detach());
    }
    let model = state.model.clone();
    state.model = state.optim.step(lr, model, sum.grads());
    let views = host.layout.views;
    state
        .bank
        .update(Tensor::cat(indices, 0), Tensor::cat(features, 0), views)
        .unwrap();
    loss
}

/// Every trained parameter, flattened, in visiting order.
fn params(model: &impl Module<A>) -> Vec<f32> {
    // Trained parameters only: running statistics are per replica.
    floats(model, true)
}

/// The float tensors of `model` that are trained (`trained`) or not (the running statistics),
/// flattened, in visiting order.
fn floats<Bk: Backend>(model: &impl Module<Bk>, trained: bool) -> Vec<f32> {
    struct Floats(Vec<f32>, bool);
    impl<Bk: Backend> ModuleVisitor<Bk> for Floats {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
            if param.is_require_grad() == self.1 {
                let v = param.val().into_data().convert::<f32>();
                self.0.extend(v.to_vec::<f32>().unwrap());
            }
        }
    }
    let mut all = Floats(Vec::new(), trained);
    model.visit(&mut all);
    all.0
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// How far `got` is from `want`, relative to how far training moved `want` from `start`: the
/// L2 norms `‖got − want‖ / ‖want − start‖`.
fn relative_to_training(got: &[f32], want: &[f32], start: &[f32]) -> f64 {
    let norm = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    norm(got, want) / norm(want, start)
}

/// The default recipe with K = 2 and consistency 0.5.
fn two_views_with_consistency() -> TrainConfig {
    TrainConfig::load(
        None,
        &["train.views=2".into(), "method.consistency=0.5".into()],
    )
    .unwrap()
}

fn rows(state: &TrainState<A>) -> Vec<f32> {
    state.bank.rows().into_data().to_vec::<f32>().unwrap()
}

/// `DataParallel::start`'s source of rows a state does not hold: these tests' states hold every
/// row, so it is never asked.
fn no_other_rows(rows: Range<usize>, _: &Device<A>) -> crate::Result<MemoryBank<A>> {
    panic!("asked for rows {rows:?}, but the state holds every row")
}

/// Two CPU replicas of a fresh state of `config` with `n` bank rows (replicated), replica 0's
/// state, and a one-device copy of its starting point (its parameters are drawn by then).
fn two_replicas_and_one_device(
    config: &TrainConfig,
    n: usize,
) -> (DataParallel<A>, TrainState<A>, TrainState<A>) {
    let device = Default::default();
    let mut start = TrainState::<A>::new(config, n, &device).unwrap();
    let parallel =
        DataParallel::start(&mut start, &[device, device], Replicated, &no_other_rows).unwrap();
    let mut single = TrainState::<A>::new(config, n, &device).unwrap();
    single.model = start.model.clone();
    single.bank = start.bank.clone();
    (parallel, start, single)
}

#[test]
fn two_replicas_match_one_device_and_keep_identical_banks() {
    let _turn = crate::backend_turn();
    let mut config = two_views_with_consistency();
    // Both sides read the bank in blocks of 7 rows (7 blocks, the last short). Blocks against
    // the whole bank are bank-losses' closed-form tests: here, once a sample's own row holds
    // its last features, `p_t − 1` cancels to a few f32 ulps of 1, and the two orders of
    // summation round the gradient apart by ~1e-4 relative (2e-5 in a parameter).
    config.method.bank_block_rows = 7;
    let n = 48;
    let world = 2;
    let (mut parallel, mut state, mut single) = two_replicas_and_one_device(&config, n);
    let mut rng = StdRng::seed_from_u64(7);
    // Even and odd shards, then a batch of one sample: replica 1 gets nothing to train on.
    for (step, samples) in [6, 5, 7, 1].into_iter().enumerate() {
        let host = batch(&mut rng, n, samples, 2);
        let lr = 0.05 / (step + 1) as f64;
        let want = accumulated_step(&mut single, &host, world, lr);
        let got;
        (state, got) = parallel.step(state, &host, lr, 0.1).unwrap();
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "step {step}: loss {got} against {want}"
        );
        let (p, q) = (params(&state.model), params(&single.model));
        assert!(
            max_diff(&p, &q) < 1e-5,
            "step {step}: parameters differ by {}",
            max_diff(&p, &q)
        );
        let bank = rows(&state);
        assert!(
            max_diff(&bank, &rows(&single)) < 1e-5,
            "step {step}: banks differ"
        );
        for other in parallel.replica_banks().unwrap() {
            assert_eq!(
                other.to_vec::<f32>().unwrap(),
                bank,
                "step {step}: replica banks differ"
            );
        }
    }
    assert_eq!(state.step, 4);
}

/// The gathered bank update carries indices exactly, also beyond f32's 2^24.
#[test]
fn gathered_indices_survive_the_float_all_reduce() {
    let _turn = crate::backend_turn();
    type B = burn::backend::NdArray;
    let world = 2;
    burn::collective::reset_collective::<B>();
    let config = burn::collective::CollectiveConfig::default().with_num_devices(world);
    let big = [(1i64 << 30) + 12_345, 16_777_217];
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let config = config.clone();
            std::thread::spawn(move || {
                let device = Default::default();
                let peer = burn::collective::PeerId::from(rank);
                burn::collective::register::<B>(peer, device, config).unwrap();
                let indices = Tensor::<B, 1, Int>::from_ints([big[rank]], &device);
                let features = Tensor::<B, 2>::full([1, 3], rank as f32 + 0.5, &device);
                let out =
                    super::gather_updates(rank, Some((indices, features)), (rank, 2, 3), &device);
                burn::collective::finish_collective::<B>(peer).unwrap();
                out.unwrap()
            })
        })
        .collect();
    for handle in handles {
        let (indices, features) = handle.join().unwrap();
        assert_eq!(indices.into_data().to_vec::<i64>().unwrap(), big.to_vec());
        assert_eq!(
            features.into_data().to_vec::<f32>().unwrap(),
            [0.5, 0.5, 0.5, 1.5, 1.5, 1.5]
        );
    }
}

/// Replicas that start from different weights (another seed) are refused by every replica;
/// identical ones pass.
#[test]
fn replicas_from_different_starts_are_refused() {
    let _turn = crate::backend_turn();
    type Inner = burn::backend::NdArray;
    let device = Default::default();
    for seeds in [[3, 3], [3, 4]] {
        // Built one after the other: the backend's generator is shared by all threads.
        let states: Vec<_> = seeds
            .iter()
            .map(|&seed| {
                let mut config = TrainConfig::load(None, &[]).unwrap();
                config.seed = seed;
                let state = TrainState::<A>::new(&config, 16, &device).unwrap();
                super::workers::materialize(&state.model);
                state
            })
            .collect();
        burn::collective::reset_collective::<Inner>();
        let handles: Vec<_> = states
            .into_iter()
            .enumerate()
            .map(|(rank, state)| {
                std::thread::spawn(move || {
                    let peer = burn::collective::PeerId::from(rank);
                    let two = burn::collective::CollectiveConfig::default().with_num_devices(2);
                    burn::collective::register::<Inner>(peer, device, two).unwrap();
                    let columns = bank_losses::ShardColumns::whole(16);
                    let start = (&state.model, &state.bank, &columns);
                    let out = super::sync::check_same_start(start, (rank, 2), &device);
                    burn::collective::finish_collective::<Inner>(peer).unwrap();
                    out.map_err(|e| e.to_string())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        if seeds[0] == seeds[1] {
            assert!(results.iter().all(Result::is_ok), "{results:?}");
        } else {
            for r in &results {
                assert!(
                    r.as_ref()
                        .is_err_and(|e| e.contains("different parameters")),
                    "{r:?}"
                );
            }
        }
    }
}

/// What one data-parallel run left after each step: loss, parameters, the whole bank (replica
/// 0's, or gathered from the shards), and the other replicas' banks.
type Trace = Vec<(f64, Vec<f32>, Vec<f32>, Vec<Vec<f32>>)>;

/// Trains `start` for the given batches on `world` CPU replicas with `sharding`.
fn data_parallel_run(
    (start, config): (&TrainState<A>, &TrainConfig),
    world: usize,
    sharding: BankSharding,
    batches: &[HostBatch],
) -> Trace {
    let device = Default::default();
    let mut state = TrainState::<A>::new(config, start.bank.num_rows(), &device).unwrap();
    state.model = start.model.clone();
    state.bank = start.bank.clone();
    state.groups = start.groups.clone();
    state.block_rows = start.block_rows;
    let devices = vec![device; world];
    let mut parallel = DataParallel::start(&mut state, &devices, sharding, &no_other_rows).unwrap();
    let n = state.bank_rows.total;
    let own = match sharding {
        Replicated => 0..n,
        Sharded => bank_losses::ShardColumns::split(n, world, 0).rows,
    };
    let mut trace = Vec::new();
    for (step, host) in batches.iter().enumerate() {
        let loss;
        (state, loss) = parallel.step(state, host, 0.05, 0.1).unwrap();
        // Replica 0 holds its rows only.
        assert_eq!(state.bank.num_rows(), own.len());
        assert_eq!(state.bank_rows.rows, own);
        let whole = parallel
            .gather_bank(&state)
            .unwrap()
            .to_device::<A>(&device);
        let whole = whole.unwrap().rows().into_data().to_vec().unwrap();
        let others = parallel.replica_banks().unwrap();
        let others = others.into_iter().map(|b| b.to_vec().unwrap()).collect();
        trace.push((loss, params(&state.model), whole, others));
        assert_eq!(state.step, step + 1);
    }
    trace
}

/// A bank sharded over 3 replicas (50 rows: 17, 17, 16) against the replicated bank: the same
/// loss, parameters and bank to float tolerance over 4 steps (K = 2, consistency 0.5, with and
/// without merge groups that span the shards; the last batch leaves replica 2 without
/// samples), with every replica, replica 0 included, holding only its rows, each shard bit for
/// bit that range of the gathered bank. The same with the shards read in blocks of 5 rows
/// (`method.bank_block_rows`: 4 blocks a shard, the last short).
#[test]
fn a_sharded_bank_trains_as_the_replicated_one() {
    let _turn = crate::backend_turn();
    let device = Default::default();
    let config = two_views_with_consistency();
    let (n, world) = (50, 3);
    let mut rng = StdRng::seed_from_u64(11);
    let batches: Vec<_> = [6, 5, 7, 2]
        .into_iter()
        .map(|samples| batch(&mut rng, n, samples, 2))
        .collect();
    for merged in [false, true] {
        let mut start = TrainState::<A>::new(&config, n, &device).unwrap();
        super::workers::materialize(&start.model);
        if merged {
            // Groups of 5 consecutive rows: groups 3 and 6 span two shards.
            let ids: Vec<i64> = (0..n as i64).map(|j| j / 5).collect();
            start.groups = Some(Tensor::from_ints(ids.as_slice(), &device));
        }
        let replicated = data_parallel_run((&start, &config), world, Replicated, &batches);
        let sharded = data_parallel_run((&start, &config), world, Sharded, &batches);
        start.block_rows = 5;
        let blocked = data_parallel_run((&start, &config), world, Sharded, &batches);
        let runs = [("sharded", sharded), ("sharded in blocks", blocked)];
        let steps = runs
            .iter()
            .flat_map(|(what, run)| replicated.iter().zip(run).map(move |s| (what, s)));
        for (step, (what, (want, got))) in steps.enumerate() {
            let at = format!("{what}, merged {merged}, step {}", step % batches.len());
            assert!(
                (got.0 - want.0).abs() <= 1e-5 * want.0.abs(),
                "{at}: loss {} against {}",
                got.0,
                want.0
            );
            let dp = max_diff(&got.1, &want.1);
            assert!(dp < 1e-5, "{at}: parameters differ by {dp}");
            let db = max_diff(&got.2, &want.2);
            assert!(db < 1e-5, "{at}: banks differ by {db}");
            let d = 128;
            for (rank, shard) in got.3.iter().enumerate() {
                let rows = bank_losses::ShardColumns::split(n, world, rank + 1).rows;
                assert_eq!(shard.len(), rows.len() * d, "{at}: shard {}", rank + 1);
                assert_eq!(
                    shard[..],
                    got.2[rows.start * d..rows.end * d],
                    "{at}: shard {} differs from its rows of the gathered bank",
                    rank + 1
                );
            }
        }
    }
}

/// The searches of a sharded bank (3 replicas, 50 rows: 17, 17, 16) against the same searches of
/// the whole bank on one device: the kNN monitor's query search and the merge rounds' all-rows
/// search, each row left out of its own list.
#[test]
fn a_sharded_bank_is_searched_as_the_whole_bank() {
    let _turn = crate::backend_turn();
    let device = Default::default();
    let config = two_views_with_consistency();
    let (n, world) = (50, 3);
    let mut state = TrainState::<A>::new(&config, n, &device).unwrap();
    let whole = state.bank.inner();
    let devices = vec![device; world];
    let parallel = DataParallel::start(&mut state, &devices, Sharded, &no_other_rows).unwrap();
    assert!(parallel.is_sharded());
    assert_eq!(state.bank.num_rows(), 17);
    let gathered = parallel
        .gather_bank(&state)
        .unwrap()
        .to_device::<A>(&device)
        .unwrap();
    let values = |t: Tensor<_, 2>| t.into_data().to_vec::<f32>().unwrap();
    assert_eq!(values(gathered.inner().rows()), values(whole.rows()));

    // The same neighbours; similarities to rounding (another GEMM blocking).
    let same = |got: bank_mining::Neighbours, want: bank_mining::Neighbours, at: String| {
        assert_eq!((got.k, &got.indices), (want.k, &want.indices), "{at}");
        let d = max_diff(&got.similarities, &want.similarities);
        assert!(d < 1e-6, "{at}: similarities differ by {d}");
    };
    for k in [1, 3] {
        let want = bank_mining::nearest_neighbours(&whole, &bank_mining::KnnConfig::new(k));
        let got = parallel.nearest_neighbours(&state, k).unwrap();
        same(got, want.unwrap(), format!("all rows, k = {k}"));
    }
    let queries = unit_queries(9, &device);
    for k in [1, 5, 20] {
        let want =
            bank_mining::query_neighbours(&whole, queries.clone(), &bank_mining::KnnConfig::new(k));
        let got = parallel
            .query_neighbours(&state, queries.clone().into_data(), k)
            .unwrap();
        assert_eq!(got, want.unwrap(), "queries, k = {k}");
    }
}

/// `m` random unit queries of dimension 128.
fn unit_queries(m: usize, device: &Device<A>) -> Tensor<burn::backend::NdArray, 2> {
    bank_core::MemoryBankConfig::new(m, 128)
        .with_seed(99)
        .init::<burn::backend::NdArray>(device)
        .unwrap()
        .rows()
}

/// The data-parallel NCE step done on one device: every shard forwarded on its own, each view
/// taking the noise row of its place in the whole batch (drawn first, as one device draws it),
/// one NCE loss over all the rows, so Z comes from the whole batch.
fn accumulated_nce_step(state: &mut TrainState<A>, host: &HostBatch, world: usize, lr: f64) -> f64 {
    let device = Default::default();
    let nce = state.nce.as_mut().expect("an NCE run");
    let noise = nce.sample_noise(host.layout.rows(), &device);
    let (mut pos, mut neg, mut indices, mut features) = (vec![], vec![], vec![], vec![]);
    let views = host.layout.views;
    for rank in 0..world {
        let shard = host.shard(rank, world);
        if shard.layout.samples == 0 {
            continue;
        }
        // The batch rows of its samples' views (sample-major), found by the samples' bank rows.
        let places: Vec<i64> = shard
            .samples
            .iter()
            .map(|id| host.samples.iter().position(|s| s == id).unwrap())
            .flat_map(|p| (0..views).map(move |v| (p * views + v) as i64))
            .collect();
        let places = Tensor::<A, 1, Int>::from_data(places.as_slice(), &device);
        let batch = shard.to_device::<A>(&device);
        let f = state.model.forward(batch.images.clone());
        let mine = noise.clone().select(0, places);
        let (p, n) =
            bank_losses::nce_similarities(&state.bank, f.clone(), batch.indices.clone(), mine)
                .unwrap();
        pos.push(p);
        neg.push(n);
        indices.push(batch.indices);
        features.push(f.detach());
    }
    let nce = state.nce.as_mut().unwrap();
    let loss = nce
        .forward(Tensor::cat(pos, 0), Tensor::cat(neg, 0))
        .unwrap();
    let grads = GradientsParams::from_grads(loss.backward(), &state.model);
    state.model = state.optim.step(lr, state.model.clone(), grads);
    state
        .bank
        .update(Tensor::cat(indices, 0), Tensor::cat(features, 0), views)
        .unwrap();

    loss.into_scalar().elem::<f64>()
}

/// NCE on two replicas against its one-device implementation: the same loss, parameters, bank
/// and normaliser Z after every step (the first sets Z, the others smooth it), the last batch
/// leaving replica 1 without samples (it still takes part in Z's all-reduce).
#[test]
fn nce_on_two_replicas_matches_one_device() {
    let _turn = crate::backend_turn();
    let device = Default::default();
    let overrides = [
        "method.loss=\"nce\"".into(),
        "method.nce_noise=8".into(),
        "train.views=2".into(),
    ];
    let config = TrainConfig::load(None, &overrides).unwrap();
    let n = 48;
    let world = 2;
    let (mut parallel, mut state, mut single) = two_replicas_and_one_device(&config, n);
    let start = params(&single.model);
    let mut rng = StdRng::seed_from_u64(5);
    for (step, samples) in [6, 5, 7, 1].into_iter().enumerate() {
        let host = batch(&mut rng, n, samples, 2);
        let lr = 0.05;
        // The same draws of the noise on both sides.
        <A as Backend>::seed(&device, 40 + step as u64);
        let want = accumulated_nce_step(&mut single, &host, world, lr);
        <A as Backend>::seed(&device, 40 + step as u64);
        let got;
        (state, got) = parallel.step(state, &host, lr, 0.1).unwrap();
        let at = format!("step {step}");
        // Not to f32 noise: burn's sums are not in the same order from run to run, and now
        // and then one unit's activation lands on the other side of a ReLU, which moves the
        // next steps by far more. Seen over 24 runs, at most: loss 9e-7 relative (1.2e-5 after
        // such an event), parameters 1.2e-5 of the training's change (2.2e-3), bank 1.5e-6
        // (1.3e-5), Z 2.4e-6 relative (3.4e-5). A replica's gradient weighted by an even share
        // instead of its samples' share is off by 5% in the loss and 0.11 in the parameters at
        // step 1.
        assert!(
            (got - want).abs() <= 1e-4 * want.abs(),
            "{at}: loss {got} against {want}"
        );
        // The parameters not coordinate by coordinate: the L2 norms.
        let dp = relative_to_training(&params(&state.model), &params(&single.model), &start);
        assert!(
            dp < 1e-2,
            "{at}: parameters differ by {dp} of the training's change"
        );
        let db = max_diff(&rows(&state), &rows(&single));
        assert!(db < 1e-4, "{at}: banks differ by {db}");
        let z = |s: &TrainState<A>| s.nce.as_ref().unwrap().z().unwrap();
        let (zg, zw) = (z(&state), z(&single));
        assert!((zg - zw).abs() <= 2e-4 * zw, "{at}: Z {zg} against {zw}");
    }
}

/// Every running statistic (the parameters that are not trained), flattened, after burn has
/// folded in the updates of every thread (`valid` syncs them).
fn running_statistics(model: &crate::model::EmbeddingNet<A>) -> Vec<f32> {
    use burn::module::AutodiffModule;
    floats(&model.valid(), false)
}

/// A replica trains on its own thread, as the workers do; its BatchNorm updates must not reach
/// replica 0's running statistics (burn's `clone().fork()` shares them and averages them in).
#[test]
fn a_replica_keeps_its_own_running_statistics() {
    // It draws initial weights: not while another test has seeded the generator.
    let _turn = crate::backend_turn();
    let device = Default::default();
    let config = TrainConfig::load(None, &[]).unwrap();
    let state = TrainState::<A>::new(&config, 8, &device).unwrap();
    let before = running_statistics(&state.model);
    let replica = replica_model(&state.model, &device);
    let host = batch(&mut StdRng::seed_from_u64(3), 8, 4, 1);
    let images = host.to_device::<A>(&device).images;
    std::thread::scope(|s| {
        s.spawn(|| replica.forward(images));
    });
    let theirs = running_statistics(&replica);
    assert!(
        max_diff(&theirs, &before) > 1e-3,
        "the replica's training forward did not move its running statistics"
    );
    assert_eq!(
        running_statistics(&state.model),
        before,
        "replica 0's running statistics changed with another replica's forward"
    );
    assert_eq!(params(&replica), params(&state.model));
}
