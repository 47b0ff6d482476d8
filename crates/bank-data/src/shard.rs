//! Splitting a batch across data-parallel replicas.

use bank_core::ViewLayout;

use crate::HostBatch;

impl HostBatch {
    /// The samples of this batch that replica `rank` of `world` trains on: samples `rank`,
    /// `rank + world`, `rank + 2·world`, … (rank-strided, as a `DistributedSampler` deals them),
    /// each with all its K views, so the consistency term of a sample stays on one replica.
    /// A replica may get no sample when the batch has fewer samples than replicas (the last
    /// batch of an epoch); its shard then has `layout.samples == 0`.
    ///
    /// # Panics
    /// When `world == 0` or `rank >= world` (a caller bug, not input).
    pub fn shard(&self, rank: usize, world: usize) -> HostBatch {
        assert!(world > 0 && rank < world, "rank {rank} of world {world}");
        let views = self.layout.views;
        let view_len = self.channels * self.size * self.size;
        let picked: Vec<usize> = (rank..self.layout.samples).step_by(world).collect();
        let mut images = Vec::with_capacity(picked.len() * views * view_len);
        for &s in &picked {
            let start = self.layout.row(s, 0) * view_len;
            images.extend_from_slice(&self.images[start..start + views * view_len]);
        }
        HostBatch {
            images,
            size: self.size,
            channels: self.channels,
            samples: picked.iter().map(|&s| self.samples[s]).collect(),
            labels: self
                .labels
                .as_ref()
                .map(|l| picked.iter().map(|&s| l[s]).collect()),
            layout: ViewLayout::new(picked.len(), views),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch whose every pixel value names its sample and view: `100·sample + view`.
    fn numbered(samples: usize, views: usize) -> HostBatch {
        let (channels, size) = (1, 2);
        let images = (0..samples)
            .flat_map(|s| (0..views).flat_map(move |v| [(100 * s + v) as f32; 4]))
            .collect();
        HostBatch {
            images,
            size,
            channels,
            samples: (0..samples).map(|s| 1000 + s).collect(),
            labels: Some((0..samples as u32).collect()),
            layout: ViewLayout::new(samples, views),
        }
    }

    #[test]
    fn shards_are_rank_strided_and_keep_every_view_of_a_sample_together() {
        let batch = numbered(5, 2);
        let shard = batch.shard(1, 2);
        assert_eq!(shard.samples, vec![1001, 1003]);
        assert_eq!(shard.labels, Some(vec![1, 3]));
        assert_eq!(shard.layout, ViewLayout::new(2, 2));
        let firsts: Vec<f32> = shard.images.chunks(4).map(|c| c[0]).collect();
        assert_eq!(firsts, vec![100.0, 101.0, 300.0, 301.0]);
        // Together the shards hold every sample exactly once.
        let mut all: Vec<usize> = (0..3).flat_map(|r| batch.shard(r, 3).samples).collect();
        all.sort();
        assert_eq!(all, batch.samples);
    }

    #[test]
    fn a_rank_without_samples_gets_an_empty_shard() {
        let shard = numbered(1, 3).shard(1, 2);
        assert_eq!(shard.layout.samples, 0);
        assert!(shard.images.is_empty() && shard.samples.is_empty());
    }
}
