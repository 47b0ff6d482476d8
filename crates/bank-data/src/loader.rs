//! The multi-view loader: a seeded shuffle per epoch, K augmented views of every sample, batches
//! in `bank-core`'s [`ViewLayout`], prepared on a background thread while the current one trains.
//! Each sample's image is fetched (for a streaming dataset: read and decoded) once per batch, in
//! the worker threads, and its K views rendered from it.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bank_core::ViewLayout;
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::augment::splitmix64;
use crate::{Dataset, Error, ImageRef, Result, Transform};

/// How batches are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch, B (each appears `views` times, so a batch has B·K rows).
    pub batch_size: usize,
    /// Views per sample, K.
    pub views: usize,
    /// Shuffle the samples every epoch (seeded by `seed` and the epoch).
    pub shuffle: bool,
    /// Drop the last, incomplete batch of an epoch.
    pub drop_last: bool,
    /// Seed of the shuffle and of every augmentation.
    pub seed: u64,
    /// Batches prepared ahead of the consumer (at least 1).
    pub prefetch: usize,
    /// Worker threads that fetch (decode) images and render views; 0 uses rayon's global pool.
    pub threads: usize,
}

impl LoaderConfig {
    /// `batch_size` samples × `views` views, shuffled, last batch kept, seed 0, 2 batches ahead.
    pub fn new(batch_size: usize, views: usize) -> Self {
        Self {
            batch_size,
            views,
            shuffle: true,
            drop_last: false,
            seed: 0,
            prefetch: 2,
            threads: 0,
        }
    }

    /// Sets [`LoaderConfig::shuffle`].
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// Sets [`LoaderConfig::drop_last`].
    pub fn with_drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Sets [`LoaderConfig::seed`].
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets [`LoaderConfig::prefetch`].
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets [`LoaderConfig::threads`].
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("loader.batch_size", self.batch_size),
            ("loader.views", self.views),
            ("loader.prefetch", self.prefetch),
        ] {
            if v == 0 {
                return Err(Error::InvalidValue {
                    field,
                    value: "0".into(),
                    reason: "must be at least 1",
                });
            }
        }
        Ok(())
    }
}

/// One batch on the host: `B·K` rendered views in [`ViewLayout`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// `[B·K, channels, size, size]`, row-major.
    pub images: Vec<f32>,
    /// Output side.
    pub size: usize,
    /// Channels per view: 3 (RGB) or 1 (luma).
    pub channels: usize,
    /// The B dataset indices of the batch's samples.
    pub samples: Vec<usize>,
    /// Their labels, when the dataset is labelled.
    pub labels: Option<Vec<u32>>,
    /// Sample-major layout: row `s·K + k` is view k of sample s.
    pub layout: ViewLayout,
}

/// One batch on a burn device.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// Views, `[B·K, C, H, W]`.
    pub images: Tensor<B, 4>,
    /// Dataset index of every row, `[B·K]` (each sample's index repeated for its K views).
    pub indices: Tensor<B, 1, Int>,
    /// Label of every row, `[B·K]`, when known.
    pub labels: Option<Tensor<B, 1, Int>>,
    /// The B dataset indices on the host (for bookkeeping without a device read).
    pub samples: Vec<usize>,
    /// The row layout.
    pub layout: ViewLayout,
}

impl HostBatch {
    /// Copies the batch to `device`, keeping the host batch.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> Batch<B> {
        self.clone().into_device(device)
    }

    /// Moves the batch to `device` (no copy of the image buffer on the host).
    pub fn into_device<B: Backend>(self, device: &B::Device) -> Batch<B> {
        let rows = self.layout.rows();
        let layout = self.layout;
        let expand = |values: Vec<i64>| -> Tensor<B, 1, Int> {
            let expanded = layout.expand(&values);
            Tensor::from_data(TensorData::new(expanded, [rows]), device)
        };
        let indices = expand(self.samples.iter().map(|&i| i as i64).collect());
        let labels = self
            .labels
            .map(|l| expand(l.iter().map(|&v| i64::from(v)).collect()));
        let images = Tensor::from_data(
            TensorData::new(self.images, [rows, self.channels, self.size, self.size]),
            device,
        );
        Batch {
            images,
            indices,
            labels,
            samples: self.samples,
            layout,
        }
    }
}

/// Serves K-view batches of a dataset (in memory or streaming; `D` may be `dyn Dataset`), epoch
/// after epoch.
pub struct MultiViewLoader<D: Dataset + ?Sized + 'static> {
    dataset: Arc<D>,
    config: LoaderConfig,
    transform: Transform,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl<D: Dataset + ?Sized + 'static> MultiViewLoader<D> {
    /// A loader over `dataset`; the configuration and transform are checked here.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming a bad loader or transform field, or an empty dataset.
    pub fn new(dataset: Arc<D>, config: LoaderConfig, transform: Transform) -> Result<Self> {
        config.validate()?;
        transform.validate()?;
        if dataset.is_empty() {
            return Err(Error::InvalidValue {
                field: "dataset",
                value: "0 items".into(),
                reason: "the loader needs at least one item",
            });
        }
        let pool = (config.threads > 0)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(config.threads)
                    .build()
                    .map(Arc::new)
            })
            .transpose()
            .map_err(|e| Error::InvalidValue {
                field: "loader.threads",
                value: format!("{} ({e})", config.threads),
                reason: "cannot start that many threads",
            })?;
        Ok(Self {
            dataset,
            config,
            transform,
            pool,
        })
    }

    /// The dataset served.
    pub fn dataset(&self) -> &Arc<D> {
        &self.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The sample order of `epoch`: a permutation seeded by `(seed, epoch)`, or `0..N`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            let mut rng = StdRng::seed_from_u64(splitmix64(self.config.seed) ^ splitmix64(!epoch));
            order.shuffle(&mut rng);
        }
        order
    }

    /// Renders the batch of `samples` in `epoch` (in parallel, on the loader's threads).
    ///
    /// # Errors
    /// A sample whose image cannot be fetched (a streaming dataset's unreadable or undecodable
    /// file: the error names it), or an index past the end.
    pub fn batch(&self, epoch: u64, samples: &[usize]) -> Result<HostBatch> {
        render_batch(
            &*self.dataset,
            &self.transform,
            &self.config,
            self.pool.as_deref(),
            epoch,
            samples,
        )
    }

    /// The batches of `epoch`, prepared on a background thread `prefetch` batches ahead. After
    /// an error the epoch ends.
    pub fn epoch(&self, epoch: u64) -> EpochBatches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `start` on (a run resumed in the middle of an epoch):
    /// the same batches as [`MultiViewLoader::epoch`] yields from its `start`-th on, the skipped
    /// ones neither fetched nor rendered. `start` past the end yields nothing.
    pub fn epoch_from(&self, epoch: u64, start: usize) -> EpochBatches {
        let (tx, rx) = sync_channel(self.config.prefetch);
        let order = self.order(epoch);
        let dataset = Arc::clone(&self.dataset);
        let (transform, config, pool) = (self.transform, self.config, self.pool.clone());
        let batches = self.batches_per_epoch();
        let start = start.min(batches);
        let worker = std::thread::Builder::new()
            .name("membank-loader".into())
            .spawn(move || {
                produce(
                    &*dataset,
                    &transform,
                    &config,
                    pool.as_deref(),
                    epoch,
                    &order,
                    start..batches,
                    &tx,
                )
            })
            .expect("spawning the loader thread");
        EpochBatches {
            receiver: Some(rx),
            worker: Some(worker),
            remaining: batches - start,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn produce<D: Dataset + ?Sized>(
    dataset: &D,
    transform: &Transform,
    config: &LoaderConfig,
    pool: Option<&rayon::ThreadPool>,
    epoch: u64,
    order: &[usize],
    batches: std::ops::Range<usize>,
    tx: &SyncSender<Result<HostBatch>>,
) {
    let chunks = order.chunks(config.batch_size).take(batches.end);
    for samples in chunks.skip(batches.start) {
        let batch = render_batch(dataset, transform, config, pool, epoch, samples);
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            return; // The consumer stopped early, or the epoch ends at an error.
        }
    }
}

/// Renders one batch: per sample (in parallel), fetch the image once and render its K views
/// into its contiguous rows (the layout is sample-major).
fn render_batch<D: Dataset + ?Sized>(
    dataset: &D,
    transform: &Transform,
    config: &LoaderConfig,
    pool: Option<&rayon::ThreadPool>,
    epoch: u64,
    samples: &[usize],
) -> Result<HostBatch> {
    let layout = ViewLayout::new(samples.len(), config.views);
    let (size, channels) = (transform.size(), transform.channels());
    let view_len = transform.view_len();
    let mut images = vec![0f32; layout.rows() * view_len];
    let work = |images: &mut Vec<f32>| -> Result<()> {
        images
            .par_chunks_exact_mut(view_len * config.views)
            .zip(samples.par_iter())
            .try_for_each(|(rows, &sample)| {
                let loaded = dataset.image(sample)?;
                // Views are seeded by the index asked for, whatever the dataset calls it (a
                // wrapper, e.g. a concatenation, numbers its parts' images from 0).
                let image = ImageRef {
                    index: sample,
                    ..loaded.view()
                };
                for (k, out) in rows.chunks_exact_mut(view_len).enumerate() {
                    transform.apply(&image, config.seed, epoch, k as u64, out);
                }
                Ok(())
            })
    };
    match pool {
        Some(pool) => pool.install(|| work(&mut images))?,
        None => work(&mut images)?,
    }
    let labels = samples
        .iter()
        .map(|&i| dataset.label(i))
        .collect::<Option<Vec<u32>>>();
    Ok(HostBatch {
        images,
        size,
        channels,
        samples: samples.to_vec(),
        labels,
        layout,
    })
}

/// The batches of one epoch, in order; an `Err` ends the epoch. Dropping it stops the
/// background thread.
pub struct EpochBatches {
    receiver: Option<Receiver<Result<HostBatch>>>,
    worker: Option<JoinHandle<()>>,
    remaining: usize,
}

impl EpochBatches {
    /// Batches not yet handed out.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

impl Iterator for EpochBatches {
    type Item = Result<HostBatch>;

    fn next(&mut self) -> Option<Result<HostBatch>> {
        let batch = self.receiver.as_ref()?.recv().ok();
        match batch {
            Some(b) => {
                self.remaining = if b.is_ok() { self.remaining - 1 } else { 0 };
                Some(b)
            }
            None => {
                self.receiver = None;
                if let Some(worker) = self.worker.take()
                    && let Err(panic) = worker.join()
                {
                    std::panic::resume_unwind(panic);
                }
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        // Closing the channel makes the worker's next send fail, so it returns.
        self.receiver = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
