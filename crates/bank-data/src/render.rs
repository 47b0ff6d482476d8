//! Rendering one view from its parameters: crop-and-resize (bilinear; antialiased with a
//! triangle filter on an axis downscaled more than 2×; the flip folded in), colour jitter,
//! greyscale, normalisation, and one (luma) or three output channels. Arithmetic is f32 in
//! `[0, 1]`, as torchvision's tensor transforms.

use crate::{CHANNELS, Error, ImageRef, Result};

/// ITU-R 601 luma weights, as torchvision's `rgb_to_grayscale`.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// A source rectangle in pixel units (may be fractional for the evaluation transform).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropRect {
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Width.
    pub width: f32,
    /// Height.
    pub height: f32,
}

impl CropRect {
    /// A whole-pixel rectangle.
    pub fn pixels(x: usize, y: usize, width: usize, height: usize) -> Self {
        Self {
            x: x as f32,
            y: y as f32,
            width: width as f32,
            height: height as f32,
        }
    }
}

/// ColorJitter factors and the order in which the four adjustments are applied
/// (0 brightness, 1 contrast, 2 saturation, 3 hue).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    /// A permutation of `0..4`.
    pub order: [u8; 4],
    /// Brightness factor (1 leaves the image unchanged).
    pub brightness: f32,
    /// Contrast factor.
    pub contrast: f32,
    /// Saturation factor.
    pub saturation: f32,
    /// Hue shift, in turns.
    pub hue: f32,
}

/// Everything random about one view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewParams {
    /// The source rectangle, resized to the output side.
    pub crop: CropRect,
    /// Mirror left–right.
    pub flip: bool,
    /// Colour jitter, when applied.
    pub jitter: Option<Jitter>,
    /// Convert to grey (three equal channels).
    pub grayscale: bool,
}

/// Per-channel `(x − mean) / std` on values in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// Channel means.
    pub mean: [f32; 3],
    /// Channel standard deviations.
    pub std: [f32; 3],
}

impl Normalize {
    /// CIFAR-10 training-set statistics.
    pub const CIFAR10: Self = Self {
        mean: [0.4914, 0.4822, 0.4465],
        std: [0.2470, 0.2435, 0.2616],
    };
    /// ImageNet statistics (also used for STL-10).
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// No normalisation: values stay in `[0, 1]`.
    pub const IDENTITY: Self = Self {
        mean: [0.0; 3],
        std: [1.0; 3],
    };

    pub(crate) fn validate(&self) -> Result<()> {
        if self.std.iter().all(|s| *s > 0.0 && s.is_finite())
            && self.mean.iter().all(|m| m.is_finite())
        {
            Ok(())
        } else {
            Err(Error::InvalidValue {
                field: "normalize",
                value: format!("{self:?}"),
                reason: "std must be positive and all values finite",
            })
        }
    }
}

/// Renders `image` under `params` into `out`: `channels × size × size`, CHW, normalised.
///
/// With 3 channels the view is RGB; with 1 it is the luma (ITU-R 601, torchvision's
/// `Grayscale`) of that RGB view, normalised with `normalize.mean[0]` and `normalize.std[0]`.
///
/// # Panics
/// If `channels` is not 1 or 3, or `out.len() != channels · size · size` (a bug in the caller;
/// the loader checks both).
pub fn render(
    image: &ImageRef<'_>,
    params: &ViewParams,
    normalize: &Normalize,
    size: usize,
    channels: usize,
    out: &mut [f32],
) {
    assert!(channels == 1 || channels == CHANNELS, "1 or 3 channels");
    assert_eq!(out.len(), channels * size * size, "view buffer size");
    let mut hwc = crop_resize(image, &params.crop, params.flip, size);
    if let Some(jitter) = &params.jitter {
        for op in jitter.order {
            match op {
                0 => adjust_brightness(&mut hwc, jitter.brightness),
                1 => adjust_contrast(&mut hwc, jitter.contrast),
                2 => adjust_saturation(&mut hwc, jitter.saturation),
                _ => adjust_hue(&mut hwc, jitter.hue),
            }
        }
    }
    if params.grayscale {
        for px in hwc.chunks_exact_mut(CHANNELS) {
            px.fill(luma(px));
        }
    }
    let plane = size * size;
    if channels == 1 {
        for (o, px) in out.iter_mut().zip(hwc.chunks_exact(CHANNELS)) {
            *o = (luma(px) - normalize.mean[0]) / normalize.std[0];
        }
        return;
    }
    for (p, px) in hwc.chunks_exact(CHANNELS).enumerate() {
        for c in 0..CHANNELS {
            out[c * plane + p] = (px[c] - normalize.mean[c]) / normalize.std[c];
        }
    }
}

/// An axis downscaled by more than this factor is resampled with an antialiasing filter.
pub const ANTIALIAS_ABOVE: f32 = 2.0;

/// Resamples `crop` to `size × size`, in `[0, 1]`, HWC; a flip reads the columns right to left.
///
/// Bilinear with half-pixel centres (`align_corners=False`) when neither axis is downscaled by
/// more than [`ANTIALIAS_ABOVE`] (every CIFAR view); otherwise separable, with a triangle filter
/// as wide as the scale factor on each axis downscaled that much (PIL's and torchvision's
/// `antialias=True` bilinear), so large originals do not alias.
pub fn crop_resize(image: &ImageRef<'_>, crop: &CropRect, flip: bool, size: usize) -> Vec<f32> {
    let scale = (crop.width / size as f32).max(crop.height / size as f32);
    if scale > ANTIALIAS_ABOVE {
        return crop_resize_filtered(image, crop, flip, size);
    }
    let (h, w) = (image.height, image.width);
    let taps = |start: f32, extent: f32, len: usize| -> Vec<(usize, usize, f32)> {
        (0..size)
            .map(|o| {
                let s = (start + (o as f32 + 0.5) * extent / size as f32 - 0.5)
                    .clamp(0.0, (len - 1) as f32);
                let i0 = s.floor() as usize;
                (i0, (i0 + 1).min(len - 1), s - i0 as f32)
            })
            .collect()
    };
    let mut xs = taps(crop.x, crop.width, w);
    if flip {
        xs.reverse();
    }
    let ys = taps(crop.y, crop.height, h);
    let px = image.pixels;
    let mut out = Vec::with_capacity(size * size * CHANNELS);
    for &(y0, y1, fy) in &ys {
        let (r0, r1) = (y0 * w, y1 * w);
        for &(x0, x1, fx) in &xs {
            for c in 0..CHANNELS {
                let v = |r: usize, x: usize| f32::from(px[(r + x) * CHANNELS + c]);
                let top = v(r0, x0) + (v(r0, x1) - v(r0, x0)) * fx;
                let bottom = v(r1, x0) + (v(r1, x1) - v(r1, x0)) * fx;
                out.push((top + (bottom - top) * fy) * (1.0 / 255.0));
            }
        }
    }
    out
}

/// The source samples of one output sample: weights of `first, first + 1, …`, summing to 1.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// The taps of every output sample along an axis of `len` pixels, for the source interval
/// `[start, start + extent)`: a triangle filter of radius `scale` when `scale > ANTIALIAS_ABOVE`,
/// else the two bilinear taps.
fn axis_taps(start: f32, extent: f32, len: usize, size: usize) -> Vec<Taps> {
    let scale = extent / size as f32;
    (0..size)
        .map(|o| {
            let centre = start + (o as f32 + 0.5) * scale;
            if scale <= ANTIALIAS_ABOVE {
                let s = (centre - 0.5).clamp(0.0, (len - 1) as f32);
                let i0 = s.floor() as usize;
                let f = s - i0 as f32;
                return if i0 + 1 < len {
                    Taps {
                        first: i0,
                        weights: vec![1.0 - f, f],
                    }
                } else {
                    Taps {
                        first: i0,
                        weights: vec![1.0],
                    }
                };
            }
            let lo = ((centre - scale).floor().max(0.0) as usize).min(len - 1);
            let hi = ((centre + scale).ceil() as usize).clamp(lo + 1, len);
            let mut weights: Vec<f32> = (lo..hi)
                .map(|i| (1.0 - ((i as f32 + 0.5 - centre) / scale).abs()).max(0.0))
                .collect();
            let total: f32 = weights.iter().sum();
            if total > 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            } else {
                weights.iter_mut().for_each(|w| *w = 1.0 / (hi - lo) as f32);
            }
            Taps { first: lo, weights }
        })
        .collect()
}

/// The separable (horizontal, then vertical) resampling of [`crop_resize`] for large downscales.
fn crop_resize_filtered(
    image: &ImageRef<'_>,
    crop: &CropRect,
    flip: bool,
    size: usize,
) -> Vec<f32> {
    let (h, w) = (image.height, image.width);
    let mut xs = axis_taps(crop.x, crop.width, w, size);
    if flip {
        xs.reverse();
    }
    let ys = axis_taps(crop.y, crop.height, h, size);
    let row_lo = ys.iter().map(|t| t.first).min().unwrap_or(0);
    let row_hi = ys
        .iter()
        .map(|t| t.first + t.weights.len())
        .max()
        .unwrap_or(0);
    let row_len = size * CHANNELS;
    let mut rows = vec![0f32; (row_hi - row_lo) * row_len];
    for (r, row) in (row_lo..row_hi).zip(rows.chunks_exact_mut(row_len)) {
        let src = &image.pixels[r * w * CHANNELS..(r + 1) * w * CHANNELS];
        for (t, px) in xs.iter().zip(row.chunks_exact_mut(CHANNELS)) {
            for (k, &wt) in t.weights.iter().enumerate() {
                let s = (t.first + k) * CHANNELS;
                for c in 0..CHANNELS {
                    px[c] += wt * f32::from(src[s + c]);
                }
            }
        }
    }
    let mut out = vec![0f32; size * row_len];
    for (t, dst) in ys.iter().zip(out.chunks_exact_mut(row_len)) {
        for (k, &wt) in t.weights.iter().enumerate() {
            let src = &rows[(t.first + k - row_lo) * row_len..][..row_len];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += wt * s);
        }
    }
    out.iter_mut().for_each(|v| *v *= 1.0 / 255.0);
    out
}

fn luma(px: &[f32]) -> f32 {
    LUMA[0] * px[0] + LUMA[1] * px[1] + LUMA[2] * px[2]
}

/// Blends every value with `other` (`factor·x + (1−factor)·other`), clamped to `[0, 1]`.
fn blend(x: f32, other: f32, factor: f32) -> f32 {
    (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)
}

fn adjust_brightness(hwc: &mut [f32], factor: f32) {
    hwc.iter_mut().for_each(|v| *v = blend(*v, 0.0, factor));
}

fn adjust_contrast(hwc: &mut [f32], factor: f32) {
    let pixels = hwc.len() / CHANNELS;
    let mean = hwc.chunks_exact(CHANNELS).map(luma).sum::<f32>() / pixels as f32;
    hwc.iter_mut().for_each(|v| *v = blend(*v, mean, factor));
}

fn adjust_saturation(hwc: &mut [f32], factor: f32) {
    for px in hwc.chunks_exact_mut(CHANNELS) {
        let grey = luma(px);
        px.iter_mut().for_each(|v| *v = blend(*v, grey, factor));
    }
}

/// Rotates the hue by `shift` turns through HSV, as torchvision's `adjust_hue`.
fn adjust_hue(hwc: &mut [f32], shift: f32) {
    if shift == 0.0 {
        return;
    }
    for px in hwc.chunks_exact_mut(CHANNELS) {
        let (h, s, v) = rgb_to_hsv(px[0], px[1], px[2]);
        let (r, g, b) = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
        px.copy_from_slice(&[r, g, b]);
    }
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let s = if max > 0.0 { delta / max } else { 0.0 };
    let h = if delta == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / delta + 2.0) / 6.0
    } else {
        ((r - g) / delta + 4.0) / 6.0
    };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match sector as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trip() {
        for &(r, g, b) in &[
            (0.2, 0.5, 0.9),
            (1.0, 0.0, 0.0),
            (0.3, 0.3, 0.3),
            (0.9, 0.8, 0.1),
        ] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() < 1e-5 && (g - g2).abs() < 1e-5 && (b - b2).abs() < 1e-5);
        }
        // Pure red shifted by a third of a turn is pure green.
        let mut px = [1.0f32, 0.0, 0.0];
        adjust_hue(&mut px, 1.0 / 3.0);
        assert!((px[0]).abs() < 1e-5 && (px[1] - 1.0).abs() < 1e-5 && px[2].abs() < 1e-5);
    }
}
