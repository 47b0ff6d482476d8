//! The multi-view loader: layout, coverage, determinism across thread counts.

use std::sync::Arc;

use bank_core::ViewLayout;
use bank_data::*;
use burn::backend::NdArray;

fn dataset(n: usize) -> Arc<ImageDataset> {
    let mut store = ImageStore::default();
    for i in 0..n {
        store.push(8, 8, &crate::common::pattern(8 * 8 * 3, i as u64));
    }
    let labels = (0..n as u32).map(|i| i % 3).collect();
    let names = vec!["a".into(), "b".into(), "c".into()];
    Arc::new(ImageDataset::new(store, Some(labels), names, "memory"))
}

fn transform() -> Transform {
    Transform::Augment(AugmentConfig::new(8).with_hue(0.1))
}

#[test]
fn batches_follow_the_bank_layout_and_render_each_view_independently() {
    let ds = dataset(10);
    let config = LoaderConfig::new(4, 3).with_seed(11);
    let loader = MultiViewLoader::new(Arc::clone(&ds), config, transform()).unwrap();
    let batches: Vec<HostBatch> = loader.epoch(2).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[2].samples.len(), 2, "last batch kept");
    let view_len = 3 * 8 * 8;
    for batch in &batches {
        assert_eq!(batch.layout, ViewLayout::new(batch.samples.len(), 3));
        for row in 0..batch.layout.rows() {
            let (s, k) = batch.layout.position(row);
            let mut expected = vec![0f32; view_len];
            transform().apply(&ds.get(batch.samples[s]), 11, 2, k as u64, &mut expected);
            assert_eq!(
                &batch.images[row * view_len..(row + 1) * view_len],
                &expected[..]
            );
        }
    }
    let device = Default::default();
    let on_device = batches[0].to_device::<NdArray>(&device);
    assert_eq!(on_device.images.dims(), [12, 3, 8, 8]);
    let indices: Vec<i64> = on_device
        .indices
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    let expected: Vec<i64> = batches[0].layout.expand(
        &batches[0]
            .samples
            .iter()
            .map(|&i| i as i64)
            .collect::<Vec<_>>(),
    );
    assert_eq!(indices, expected);
    let labels: Vec<i64> = on_device
        .labels
        .unwrap()
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    assert_eq!(labels, indices.iter().map(|i| i % 3).collect::<Vec<_>>());
}

#[test]
fn every_sample_once_per_epoch_in_a_seeded_order_and_drop_last() {
    let ds = dataset(23);
    let loader = MultiViewLoader::new(
        Arc::clone(&ds),
        LoaderConfig::new(5, 1).with_seed(3),
        transform(),
    )
    .unwrap();
    let seen = |epoch| -> Vec<usize> {
        loader
            .epoch(epoch)
            .flat_map(|b| b.unwrap().samples)
            .collect()
    };
    let (e0, e1) = (seen(0), seen(1));
    let mut sorted = e0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..23).collect::<Vec<_>>());
    assert_ne!(e0, e1, "each epoch reshuffles");
    assert_eq!(e0, seen(0), "the same seed gives the same order");

    let dropping = MultiViewLoader::new(
        ds,
        LoaderConfig::new(5, 1)
            .with_drop_last(true)
            .with_shuffle(false),
        transform(),
    )
    .unwrap();
    assert_eq!(dropping.batches_per_epoch(), 4);
    let batches: Vec<_> = dropping.epoch(0).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 4);
    assert_eq!(batches[0].samples, [0, 1, 2, 3, 4]);
}

#[test]
fn the_same_seed_gives_the_same_batches_whatever_the_thread_count() {
    let ds = dataset(17);
    let run = |threads| -> Vec<HostBatch> {
        let config = LoaderConfig::new(6, 2).with_seed(5).with_threads(threads);
        MultiViewLoader::new(Arc::clone(&ds), config, transform())
            .unwrap()
            .epoch(4)
            .map(Result::unwrap)
            .collect()
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(0));
}

#[test]
fn stopping_early_does_not_hang_and_bad_config_is_named() {
    let ds = dataset(40);
    let loader = MultiViewLoader::new(
        Arc::clone(&ds),
        LoaderConfig::new(2, 2).with_prefetch(1),
        transform(),
    )
    .unwrap();
    let mut epoch = loader.epoch(0);
    assert!(epoch.next().is_some());
    drop(epoch);
    let e = MultiViewLoader::new(ds, LoaderConfig::new(0, 2), transform())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("loader.batch_size"), "{e}");
}

/// A dataset whose items are another's, shifted: item i is inner item i − 5 (which reports
/// its own index).
struct Shifted(Arc<ImageDataset>);

impl Dataset for Shifted {
    fn len(&self) -> usize {
        self.0.len() + 5
    }
    fn image(&self, index: usize) -> Result<LoadedImage<'_>> {
        self.0.image(index.saturating_sub(5))
    }
    fn label(&self, index: usize) -> Option<u32> {
        self.0.label(index.saturating_sub(5))
    }
    fn class_names(&self) -> &[String] {
        self.0.class_names()
    }
    fn item_source(&self, index: usize) -> String {
        self.0.item_source(index.saturating_sub(5))
    }
}

#[test]
fn views_are_seeded_by_the_index_the_loader_asked_for() {
    let inner = dataset(4);
    let shifted: Arc<dyn Dataset> = Arc::new(Shifted(Arc::clone(&inner)));
    let loader =
        MultiViewLoader::new(shifted, LoaderConfig::new(2, 2).with_seed(9), transform()).unwrap();
    let batch = loader.batch(1, &[7, 8]).unwrap();
    let view_len = 3 * 8 * 8;
    for (s, sample) in [7usize, 8].into_iter().enumerate() {
        let image = ImageRef {
            index: sample,
            ..inner.get(sample - 5)
        };
        for k in 0..2 {
            let mut expected = vec![0f32; view_len];
            transform().apply(&image, 9, 1, k as u64, &mut expected);
            let row = s * 2 + k;
            assert_eq!(
                &batch.images[row * view_len..(row + 1) * view_len],
                &expected[..]
            );
        }
    }
}

/// A dataset that counts the images fetched from it.
struct Counting(Arc<ImageDataset>, std::sync::atomic::AtomicUsize);

impl Dataset for Counting {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn image(&self, index: usize) -> Result<LoadedImage<'_>> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.image(index)
    }
    fn label(&self, index: usize) -> Option<u32> {
        self.0.label(index)
    }
    fn class_names(&self) -> &[String] {
        self.0.class_names()
    }
    fn item_source(&self, index: usize) -> String {
        self.0.item_source(index)
    }
}

#[test]
fn an_epoch_started_at_batch_i_yields_the_same_batches_without_rendering_the_skipped_ones() {
    // 11 samples in batches of 3: 4 batches, the last of 2.
    let config = LoaderConfig::new(3, 2).with_seed(5);
    let counting = Arc::new(Counting(dataset(11), Default::default()));
    let loader = MultiViewLoader::new(Arc::clone(&counting), config, transform()).unwrap();
    let whole: Vec<HostBatch> = loader.epoch(3).map(Result::unwrap).collect();
    assert_eq!(whole.len(), 4);
    for start in 0..=5 {
        counting.1.store(0, std::sync::atomic::Ordering::SeqCst);
        let batches = loader.epoch_from(3, start);
        assert_eq!(batches.remaining(), 4usize.saturating_sub(start));
        let rest: Vec<HostBatch> = batches.map(Result::unwrap).collect();
        assert_eq!(rest, whole[start.min(4)..], "from batch {start}");
        let fetched: usize = rest.iter().map(|b| b.samples.len()).sum();
        assert_eq!(
            counting.1.load(std::sync::atomic::Ordering::SeqCst),
            fetched,
            "only the batches served are fetched (from batch {start})"
        );
    }
}
