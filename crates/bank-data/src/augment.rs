//! Random view parameters: the NPID / ISIF augmentation recipe, and the evaluation transform.
//!
//! A view is a pure function of `(seed, epoch, sample index, view number)`: [`view_seed`] mixes
//! the four into the seed of the view's own generator, so batches do not depend on thread count
//! or scheduling.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::render::{CropRect, Jitter, Normalize, ViewParams};
use crate::{Error, ImageRef, Result};

/// The training augmentation of NPID (Wu et al. 2018) and ISIF (Ye et al. 2019):
/// RandomResizedCrop → horizontal flip → ColorJitter → RandomGrayscale → normalise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentConfig {
    /// Output side in pixels (32 for CIFAR, 96 for STL-10).
    pub size: usize,
    /// RandomResizedCrop: range of the crop's area as a fraction of the image (0.2–1).
    pub scale: (f32, f32),
    /// RandomResizedCrop: range of the crop's width/height ratio (3/4–4/3), sampled log-uniformly.
    pub ratio: (f32, f32),
    /// Probability of a horizontal flip (0.5).
    pub flip_probability: f32,
    /// ColorJitter brightness: the factor is uniform in `[max(0, 1−b), 1+b]` (0.4).
    pub brightness: f32,
    /// ColorJitter contrast (0.4).
    pub contrast: f32,
    /// ColorJitter saturation (0.4).
    pub saturation: f32,
    /// ColorJitter hue: the shift is uniform in `[−h, h]` of a turn, `h ≤ 0.5`
    /// (0 by default: off; NPID's 0.4 is the option).
    pub hue: f32,
    /// Probability that ColorJitter is applied at all (1: always, as in NPID).
    pub jitter_probability: f32,
    /// Probability of converting the view to grey (0.2).
    pub grayscale_probability: f32,
    /// Per-channel normalisation applied last.
    pub normalize: Normalize,
    /// Output channels: 3 (RGB) or 1 (the luma of the RGB view).
    pub channels: usize,
}

impl AugmentConfig {
    /// The NPID/ISIF defaults at output side `size`.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_probability: 0.5,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.0,
            jitter_probability: 1.0,
            grayscale_probability: 0.2,
            normalize: Normalize::CIFAR10,
            channels: 3,
        }
    }

    /// Sets [`AugmentConfig::channels`] (1 or 3).
    pub fn with_channels(mut self, channels: usize) -> Self {
        self.channels = channels;
        self
    }

    /// Sets [`AugmentConfig::hue`].
    pub fn with_hue(mut self, hue: f32) -> Self {
        self.hue = hue;
        self
    }

    /// Sets [`AugmentConfig::scale`].
    pub fn with_scale(mut self, min: f32, max: f32) -> Self {
        self.scale = (min, max);
        self
    }

    /// Sets [`AugmentConfig::normalize`].
    pub fn with_normalize(mut self, normalize: Normalize) -> Self {
        self.normalize = normalize;
        self
    }

    /// Checks every field; the error names the first one out of range.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming the field (`augment.size`, `augment.scale`, …).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: String, reason: &'static str| {
            Err(Error::InvalidValue {
                field,
                value,
                reason,
            })
        };
        let prob = |p: f32| (0.0..=1.0).contains(&p);
        if self.size == 0 {
            return bad("augment.size", "0".into(), "must be at least 1");
        }
        check_channels("augment.channels", self.channels)?;
        let (s0, s1) = self.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return bad(
                "augment.scale",
                format!("{:?}", self.scale),
                "need 0 < min <= max <= 1",
            );
        }
        let (r0, r1) = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return bad(
                "augment.ratio",
                format!("{:?}", self.ratio),
                "need 0 < min <= max",
            );
        }
        for (field, v) in [
            ("augment.brightness", self.brightness),
            ("augment.contrast", self.contrast),
            ("augment.saturation", self.saturation),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(field, v.to_string(), "must be a finite value >= 0");
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return bad("augment.hue", self.hue.to_string(), "must be in [0, 0.5]");
        }
        for (field, p) in [
            ("augment.flip_probability", self.flip_probability),
            ("augment.jitter_probability", self.jitter_probability),
            ("augment.grayscale_probability", self.grayscale_probability),
        ] {
            if !prob(p) {
                return bad(field, p.to_string(), "must be a probability in [0, 1]");
            }
        }
        self.normalize.validate()
    }

    /// Draws the parameters of one view of an image of `height × width`.
    pub fn sample(&self, height: usize, width: usize, rng: &mut impl Rng) -> ViewParams {
        let crop = self.random_resized_crop(height, width, rng);
        let flip = rng.random::<f32>() < self.flip_probability;
        let jitter = (rng.random::<f32>() < self.jitter_probability).then(|| {
            let mut order = [0u8, 1, 2, 3];
            order.shuffle(rng);
            let factor = |rng: &mut _, s: f32| uniform(rng, (1.0 - s).max(0.0), 1.0 + s);
            Jitter {
                order,
                brightness: factor(rng, self.brightness),
                contrast: factor(rng, self.contrast),
                saturation: factor(rng, self.saturation),
                hue: uniform(rng, -self.hue, self.hue),
            }
        });
        let grayscale = rng.random::<f32>() < self.grayscale_probability;
        ViewParams {
            crop,
            flip,
            jitter,
            grayscale,
        }
    }

    /// torchvision's `RandomResizedCrop.get_params`: ten tries at a random area and log-uniform
    /// ratio, then a centre crop with the ratio clamped into range.
    fn random_resized_crop(&self, height: usize, width: usize, rng: &mut impl Rng) -> CropRect {
        let area = (height * width) as f32;
        let (log_r0, log_r1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, log_r0, log_r1).exp();
            let w = (target * aspect).sqrt().round() as usize;
            let h = (target / aspect).sqrt().round() as usize;
            if (1..=width).contains(&w) && (1..=height).contains(&h) {
                let y = rng.random_range(0..=height - h);
                let x = rng.random_range(0..=width - w);
                return CropRect::pixels(x, y, w, h);
            }
        }
        let in_ratio = width as f32 / height as f32;
        let (w, h) = if in_ratio < self.ratio.0 {
            (
                width,
                ((width as f32 / self.ratio.0).round() as usize).clamp(1, height),
            )
        } else if in_ratio > self.ratio.1 {
            (
                ((height as f32 * self.ratio.1).round() as usize).clamp(1, width),
                height,
            )
        } else {
            (width, height)
        };
        CropRect::pixels((width - w) / 2, (height - h) / 2, w, h)
    }
}

fn uniform(rng: &mut impl Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

fn check_channels(field: &'static str, channels: usize) -> Result<()> {
    if channels == 1 || channels == 3 {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            field,
            value: channels.to_string(),
            reason: "must be 1 (luma) or 3 (RGB)",
        })
    }
}

/// The evaluation transform (torchvision's convention): resize the shorter side to `resize`,
/// centre-crop `crop × crop`, normalise. With `resize == crop ==` the image side (CIFAR at 32)
/// it is the identity before normalising; a non-square image keeps the centre of its longer
/// side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalConfig {
    /// Shorter side after resizing.
    pub resize: usize,
    /// Output side.
    pub crop: usize,
    /// Per-channel normalisation.
    pub normalize: Normalize,
    /// Output channels: 3 (RGB) or 1 (luma).
    pub channels: usize,
}

impl EvalConfig {
    /// Resize to `resize`, crop `crop`, CIFAR-10 normalisation, 3 channels.
    pub fn new(resize: usize, crop: usize) -> Self {
        Self {
            resize,
            crop,
            normalize: Normalize::CIFAR10,
            channels: 3,
        }
    }

    /// Sets [`EvalConfig::channels`] (1 or 3).
    pub fn with_channels(mut self, channels: usize) -> Self {
        self.channels = channels;
        self
    }

    /// Sets [`EvalConfig::normalize`].
    pub fn with_normalize(mut self, normalize: Normalize) -> Self {
        self.normalize = normalize;
        self
    }

    /// The source rectangle that the resize and centre crop select.
    pub fn params(&self, height: usize, width: usize) -> ViewParams {
        let factor = self.resize as f32 / height.min(width) as f32;
        let side = self.crop as f32 / factor;
        let crop = CropRect {
            x: (width as f32 - side) / 2.0,
            y: (height as f32 - side) / 2.0,
            width: side,
            height: side,
        };
        ViewParams {
            crop,
            flip: false,
            jitter: None,
            grayscale: false,
        }
    }
}

/// How the loader turns an image into a view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// Random views for training.
    Augment(AugmentConfig),
    /// The deterministic evaluation view.
    Eval(EvalConfig),
}

impl Transform {
    /// Output side in pixels.
    pub fn size(&self) -> usize {
        match self {
            Self::Augment(a) => a.size,
            Self::Eval(e) => e.crop,
        }
    }

    /// Output channels (1 or 3).
    pub fn channels(&self) -> usize {
        match self {
            Self::Augment(a) => a.channels,
            Self::Eval(e) => e.channels,
        }
    }

    /// Floats of one rendered view: `channels · size · size`.
    pub fn view_len(&self) -> usize {
        self.channels() * self.size() * self.size()
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming the first field out of range.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Augment(a) => a.validate(),
            Self::Eval(e) if check_channels("eval.channels", e.channels).is_err() => {
                check_channels("eval.channels", e.channels)
            }
            Self::Eval(e) if e.resize == 0 || e.crop == 0 || e.crop > e.resize => {
                Err(Error::InvalidValue {
                    field: "eval.crop",
                    value: format!("resize {} crop {}", e.resize, e.crop),
                    reason: "need 0 < crop <= resize",
                })
            }
            Self::Eval(e) => e.normalize.validate(),
        }
    }

    /// The normalisation applied last.
    pub fn normalize(&self) -> &Normalize {
        match self {
            Self::Augment(a) => &a.normalize,
            Self::Eval(e) => &e.normalize,
        }
    }

    /// The parameters of view `view` of `image` in `epoch` under `seed`.
    pub fn params(&self, image: &ImageRef<'_>, seed: u64, epoch: u64, view: u64) -> ViewParams {
        match self {
            Self::Augment(a) => {
                let mut rng =
                    StdRng::seed_from_u64(view_seed(seed, epoch, image.index as u64, view));
                a.sample(image.height, image.width, &mut rng)
            }
            Self::Eval(e) => e.params(image.height, image.width),
        }
    }

    /// Renders view `view` of `image` into `out` (`channels × size × size`, CHW, normalised).
    ///
    /// # Panics
    /// If `out.len() != self.view_len()` or the channels are not 1 or 3 (checked by
    /// [`Transform::validate`]).
    pub fn apply(&self, image: &ImageRef<'_>, seed: u64, epoch: u64, view: u64, out: &mut [f32]) {
        let params = self.params(image, seed, epoch, view);
        crate::render::render(
            image,
            &params,
            self.normalize(),
            self.size(),
            self.channels(),
            out,
        );
    }
}

/// The seed of one view's generator: SplitMix64 applied along `(seed, epoch, index, view)`.
pub fn view_seed(seed: u64, epoch: u64, index: u64, view: u64) -> u64 {
    [epoch, index, view]
        .into_iter()
        .fold(splitmix64(seed), |h, v| splitmix64(h ^ v))
}

/// SplitMix64's output function: a bijective mix of all 64 bits.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
