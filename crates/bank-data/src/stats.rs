//! Per-channel mean and standard deviation of a dataset, for [`Normalize`].

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample as sample_indices;
use rayon::prelude::*;

use crate::augment::splitmix64;
use crate::{CHANNELS, Dataset, Error, Normalize, Result};

/// The smallest measured standard deviation (of values in `[0, 1]`) kept; below it a channel is
/// taken as constant (one pixel in 10,000 off by one 8-bit level gives about 4e-5).
pub const MIN_STD: f32 = 1e-4;

/// ITU-R 601 luma weights (as the renderer's 1-channel output).
const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

/// Mean and (population) standard deviation of pixel values in `[0, 1]`, per channel, over a
/// seeded sample of `sample` images (all of them when the dataset has fewer), every pixel of
/// each image counted once (so larger images weigh more, as torchvision's usual recipe).
///
/// With `channels = 3` the statistics are those of R, G and B; with `channels = 1` those of the
/// luma, in all three entries (only entry 0 is used for 1-channel views).
///
/// A channel constant over the sample (standard deviation below [`MIN_STD`]: the empty green
/// and blue of red-stained microscopy saved as RGB) gets standard deviation 1, with a log line:
/// there is nothing to scale, and dividing by about 0 would blow its rounding up.
///
/// # Errors
/// [`Error::InvalidValue`] for `channels` not 1 or 3, `sample = 0` or an empty dataset; an
/// image that cannot be fetched (streaming datasets).
pub fn channel_stats(
    dataset: &dyn Dataset,
    sample: usize,
    seed: u64,
    channels: usize,
) -> Result<Normalize> {
    if channels != 1 && channels != CHANNELS {
        return Err(Error::InvalidValue {
            field: "channels",
            value: channels.to_string(),
            reason: "must be 1 or 3",
        });
    }
    if sample == 0 || dataset.is_empty() {
        return Err(Error::InvalidValue {
            field: "sample",
            value: format!("{sample} of {} images", dataset.len()),
            reason: "need at least one image to compute statistics",
        });
    }
    let n = dataset.len();
    let mut indices = if sample >= n {
        (0..n).collect()
    } else {
        let mut rng = StdRng::seed_from_u64(splitmix64(seed));
        sample_indices(&mut rng, n, sample).into_vec()
    };
    indices.sort_unstable();
    let sums = indices
        .par_iter()
        .map(|&i| image_sums(dataset, i, channels))
        .try_reduce(Sums::default, |a, b| Ok(a.add(&b)))?;
    let count = sums.count as f64;
    let mut mean = [0f32; 3];
    let mut std = [0f32; 3];
    for c in 0..CHANNELS {
        let k = if channels == 1 { 0 } else { c };
        let m = sums.sum[k] / count;
        mean[c] = m as f32;
        std[c] = (sums.sum_sq[k] / count - m * m).max(0.0).sqrt() as f32;
        if std[c] < MIN_STD {
            tracing::info!(
                channel = c,
                std = std[c],
                images = indices.len(),
                "a constant channel: normalised with standard deviation 1"
            );
            std[c] = 1.0;
        }
    }
    Ok(Normalize { mean, std })
}

/// Sums of values and squares per channel, and the pixel count.
#[derive(Default)]
struct Sums {
    sum: [f64; 3],
    sum_sq: [f64; 3],
    count: u64,
}

impl Sums {
    fn add(mut self, other: &Self) -> Self {
        for c in 0..CHANNELS {
            self.sum[c] += other.sum[c];
            self.sum_sq[c] += other.sum_sq[c];
        }
        self.count += other.count;
        self
    }
}

fn image_sums(dataset: &dyn Dataset, index: usize, channels: usize) -> Result<Sums> {
    let loaded = dataset.image(index)?;
    let image = loaded.view();
    let mut sums = Sums::default();
    for px in image.pixels.chunks_exact(CHANNELS) {
        let rgb = [px[0], px[1], px[2]].map(|v| f64::from(v) / 255.0);
        if channels == 1 {
            let y = LUMA[0] * rgb[0] + LUMA[1] * rgb[1] + LUMA[2] * rgb[2];
            sums.sum[0] += y;
            sums.sum_sq[0] += y * y;
        } else {
            for (c, v) in rgb.into_iter().enumerate() {
                sums.sum[c] += v;
                sums.sum_sq[c] += v * v;
            }
        }
    }
    sums.count = (image.pixels.len() / CHANNELS) as u64;
    Ok(sums)
}
