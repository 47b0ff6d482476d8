//! 2-d convolution on host memory: im2col and one GEMM per sample, forward and backward (the
//! scheme of Caffe and of PyTorch's CPU path without oneDNN).
//!
//! burn 0.21 computes a convolution's weight gradient as another convolution, with the
//! activations' batch and channel axes swapped and the output gradient as its kernel
//! (`conv2d_weight_grad_no_groups`). On burn-flex that is a product with 9 columns for a 3×3
//! kernel, after strided copies of both tensors: it took 44, 30 and 17 ms of the small CNN's
//! three convolutions at batch 128, where the sums here are one `[C_out, H·W] × [H·W, C_in·9]`
//! product per sample.

use rayon::prelude::*;

use bank_core::host_gemm::{MatRef, gemm};

/// Samples summed together per task in the weight gradient. The partial sums are added in a
/// fixed order, so the result does not depend on the number of threads.
const WEIGHT_GRAD_CHUNK: usize = 8;

/// The shapes of a convolution without groups, dilation or bias, padded with zeros by the same
/// amount on both sides of each axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    /// Batch N.
    pub batch: usize,
    /// Input channels C.
    pub channels: usize,
    /// Input height H and width W.
    pub input: [usize; 2],
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride along H and W.
    pub stride: [usize; 2],
    /// Zeros added above and below, left and right.
    pub padding: [usize; 2],
}

impl ConvGeometry {
    /// Output height and width, `(H + 2p − k) / s + 1`; `None` when the kernel does not fit, a
    /// stride is 0, or the input has no channels or no pixels (burn's path handles those).
    pub fn output(&self) -> Option<[usize; 2]> {
        let axis = |i: usize| {
            let padded = self.input[i] + 2 * self.padding[i];
            (self.stride[i] > 0
                && self.input[i] > 0
                && padded >= self.kernel[i]
                && self.kernel[i] > 0)
                .then(|| (padded - self.kernel[i]) / self.stride[i] + 1)
        };
        if self.channels == 0 || self.out_channels == 0 {
            return None;
        }
        Some([axis(0)?, axis(1)?])
    }

    fn out_plane(&self) -> usize {
        let [ho, wo] = self.output().unwrap_or([0, 0]);
        ho * wo
    }

    fn in_plane(&self) -> usize {
        self.input[0] * self.input[1]
    }

    /// Rows of a sample's column matrix: C · kh · kw.
    fn patch(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// A 1×1 kernel with stride 1 and no padding: the column matrix is the input itself.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// For kernel column `j`: the output columns `lo..hi` whose input column lies inside the
    /// image, and the input column of the first of them; `None` when there are none.
    fn valid_columns(&self, j: usize, wo: usize) -> Option<(usize, usize, usize)> {
        let (s, p, w) = (self.stride[1], self.padding[1], self.input[1]);
        // ow·s + j − p ≥ 0, and ow·s + j − p ≤ w − 1.
        let lo = p.saturating_sub(j).div_ceil(s);
        let hi = if w + p > j {
            ((w + p - j - 1) / s + 1).min(wo)
        } else {
            0
        };
        (lo < hi).then(|| (lo, hi, lo * s + j - p))
    }

    /// The rows of a column matrix, `(c, i, j)` for channel c and kernel tap (i, j), in order.
    fn taps(&self) -> impl Iterator<Item = (usize, usize, usize)> {
        let [kh, kw] = self.kernel;
        (0..self.channels)
            .flat_map(move |c| (0..kh).flat_map(move |i| (0..kw).map(move |j| (c, i, j))))
    }

    /// Copies sample `x` (`[C, H, W]`) into `cols` (`[C·kh·kw, Ho·Wo]`): row `(c, i, j)`, column
    /// `(oh, ow)` holds `x[c, oh·s + i − p, ow·s + j − p]`, or 0 outside the image.
    fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        let [_, wo] = self.output().unwrap_or([0, 0]);
        let [h, w] = self.input;
        for (row, (c, i, j)) in cols.chunks_mut(self.out_plane()).zip(self.taps()) {
            let columns = self.valid_columns(j, wo);
            for (oh, out) in row.chunks_mut(wo).enumerate() {
                let ih = (oh * self.stride[0] + i)
                    .checked_sub(self.padding[0])
                    .filter(|&ih| ih < h);
                let (Some(ih), Some((lo, hi, first))) = (ih, columns) else {
                    out.fill(0.0);
                    continue;
                };
                let src = &x[(c * h + ih) * w..(c * h + ih + 1) * w];
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                if self.stride[1] == 1 {
                    out[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                } else {
                    for (o, v) in out[lo..hi]
                        .iter_mut()
                        .zip(src[first..].iter().step_by(self.stride[1]))
                    {
                        *o = *v;
                    }
                }
            }
        }
    }

    /// The adjoint of [`im2col`](Self::im2col): adds every entry of `cols` to the input
    /// position it was copied from (`gx`, `[C, H, W]`, is added to, not overwritten).
    fn col2im(&self, cols: &[f32], gx: &mut [f32]) {
        let [_, wo] = self.output().unwrap_or([0, 0]);
        let [h, w] = self.input;
        for (row, (c, i, j)) in cols.chunks(self.out_plane()).zip(self.taps()) {
            let Some((lo, hi, first)) = self.valid_columns(j, wo) else {
                continue;
            };
            for (oh, grad) in row.chunks(wo).enumerate() {
                let ih = (oh * self.stride[0] + i)
                    .checked_sub(self.padding[0])
                    .filter(|&ih| ih < h);
                let Some(ih) = ih else { continue };
                let dst = &mut gx[(c * h + ih) * w..(c * h + ih + 1) * w];
                for (d, g) in dst[first..]
                    .iter_mut()
                    .step_by(self.stride[1])
                    .zip(&grad[lo..hi])
                {
                    *d += g;
                }
            }
        }
    }

    /// The convolution: `x` `[N, C, H, W]`, `weight` `[C_out, C, kh, kw]` → `[N, C_out, Ho, Wo]`,
    /// all row-major.
    pub fn forward(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let (patch, plane, co) = (self.patch(), self.out_plane(), self.out_channels);
        let mut out = vec![0.0f32; self.batch * co * plane];
        if out.is_empty() {
            return out;
        }
        let lhs = MatRef::rows(weight, patch);
        out.par_chunks_mut(co * plane)
            .zip(x.par_chunks(self.channels * self.in_plane()))
            .for_each_init(Vec::new, |cols, (out, x)| {
                let cols = self.columns(x, cols);
                gemm(
                    co,
                    plane,
                    patch,
                    out,
                    plane,
                    false,
                    lhs,
                    MatRef::rows(cols, plane),
                );
            });
        out
    }

    /// `∂L/∂weight`, `[C_out, C, kh, kw]`, from the input `x` and `∂L/∂out` (`grad`).
    pub fn weight_grad(&self, x: &[f32], grad: &[f32]) -> Vec<f32> {
        let (patch, plane, co) = (self.patch(), self.out_plane(), self.out_channels);
        let in_sample = self.channels * self.in_plane();
        let starts: Vec<usize> = (0..self.batch).step_by(WEIGHT_GRAD_CHUNK).collect();
        let partials: Vec<Vec<f32>> = starts
            .into_par_iter()
            .map(|start| {
                let mut sum = vec![0.0f32; co * patch];
                let mut buffer = Vec::new();
                for n in start..(start + WEIGHT_GRAD_CHUNK).min(self.batch) {
                    let cols = self.columns(&x[n * in_sample..(n + 1) * in_sample], &mut buffer);
                    let g = &grad[n * co * plane..(n + 1) * co * plane];
                    let (lhs, rhs) = (MatRef::rows(g, plane), MatRef::transposed(cols, plane));
                    gemm(co, patch, plane, &mut sum, patch, true, lhs, rhs);
                }
                sum
            })
            .collect();
        let mut total = vec![0.0f32; co * patch];
        for partial in partials {
            total.iter_mut().zip(partial).for_each(|(t, p)| *t += p);
        }
        total
    }

    /// `∂L/∂x`, `[N, C, H, W]`, from the weight and `∂L/∂out` (`grad`).
    pub fn input_grad(&self, weight: &[f32], grad: &[f32]) -> Vec<f32> {
        let (patch, plane, co) = (self.patch(), self.out_plane(), self.out_channels);
        let in_sample = self.channels * self.in_plane();
        let mut gx = vec![0.0f32; self.batch * in_sample];
        if gx.is_empty() {
            return gx;
        }
        let lhs = MatRef::transposed(weight, patch);
        gx.par_chunks_mut(in_sample)
            .zip(grad.par_chunks(co * plane))
            .for_each_init(Vec::new, |cols, (gx, g)| {
                let rhs = MatRef::rows(g, plane);
                if self.is_pointwise() {
                    gemm(patch, plane, co, gx, plane, false, lhs, rhs);
                } else {
                    // Written before `col2im` reads it (see `PoolGeometry::backward`).
                    gx.fill(0.0);
                    cols.resize(patch * plane, 0.0);
                    gemm(patch, plane, co, cols, plane, false, lhs, rhs);
                    self.col2im(cols, gx);
                }
            });
        gx
    }

    /// Sample `x`'s column matrix: `x` itself for a pointwise kernel, else im2col into `buffer`.
    fn columns<'a>(&self, x: &'a [f32], buffer: &'a mut Vec<f32>) -> &'a [f32] {
        if self.is_pointwise() {
            return x;
        }
        buffer.resize(self.patch() * self.out_plane(), 0.0);
        self.im2col(x, buffer);
        buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Geometries with padding, strides 1 and 2, pointwise and wide kernels, odd sizes, a
    /// kernel as wide as the padded image, and a batch over [`WEIGHT_GRAD_CHUNK`].
    const GEOMETRIES: [ConvGeometry; 8] = [
        geometry(2, 3, [7, 7], 4, [3, 3], [1, 1], [1, 1]),
        geometry(3, 2, [9, 7], 5, [3, 3], [2, 2], [1, 1]),
        geometry(2, 3, [6, 5], 4, [1, 1], [2, 2], [0, 0]),
        geometry(2, 4, [5, 6], 3, [1, 1], [1, 1], [0, 0]),
        geometry(1, 2, [3, 1], 2, [5, 5], [1, 1], [2, 2]),
        geometry(2, 2, [6, 8], 3, [2, 3], [1, 2], [0, 1]),
        geometry(11, 2, [4, 4], 3, [3, 3], [1, 1], [1, 1]),
        geometry(1, 1, [2, 2], 1, [4, 4], [3, 3], [1, 1]),
    ];

    const fn geometry(
        batch: usize,
        channels: usize,
        input: [usize; 2],
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> ConvGeometry {
        ConvGeometry {
            batch,
            channels,
            input,
            out_channels,
            kernel,
            stride,
            padding,
        }
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 37 + seed * 11) % 29) as f32 - 14.0) / 9.0)
            .collect()
    }

    /// The input position read by output `(oh, ow)` through kernel tap `(i, j)`, if inside.
    fn source(
        g: &ConvGeometry,
        oh: usize,
        ow: usize,
        i: usize,
        j: usize,
    ) -> Option<(usize, usize)> {
        let ih = (oh * g.stride[0] + i).checked_sub(g.padding[0])?;
        let iw = (ow * g.stride[1] + j).checked_sub(g.padding[1])?;
        (ih < g.input[0] && iw < g.input[1]).then_some((ih, iw))
    }

    /// Every (output, weight, input) index triple of the convolution, written out.
    fn terms(g: &ConvGeometry) -> Vec<(usize, usize, usize)> {
        let [ho, wo] = g.output().unwrap();
        let ([h, w], [kh, kw]) = (g.input, g.kernel);
        let mut out = Vec::new();
        for n in 0..g.batch {
            for o in 0..g.out_channels {
                for oh in 0..ho {
                    for ow in 0..wo {
                        for c in 0..g.channels {
                            for i in 0..kh {
                                for j in 0..kw {
                                    if let Some((ih, iw)) = source(g, oh, ow, i, j) {
                                        out.push((
                                            ((n * g.out_channels + o) * ho + oh) * wo + ow,
                                            ((o * g.channels + c) * kh + i) * kw + j,
                                            ((n * g.channels + c) * h + ih) * w + iw,
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{what}[{k}]: {g} vs {w}"
            );
        }
    }

    /// Forward, weight gradient and input gradient against the sums written out in f64: the
    /// output is Σ x·w over the triples, ∂L/∂w and ∂L/∂x the same triples weighted by ∂L/∂out.
    #[test]
    fn matches_the_convolution_written_out() {
        for g in GEOMETRIES {
            let [ho, wo] = g.output().unwrap();
            let x = values(g.batch * g.channels * g.input[0] * g.input[1], 1);
            let w = values(g.out_channels * g.patch(), 2);
            let grad = values(g.batch * g.out_channels * ho * wo, 3);
            let (mut y, mut gw, mut gx) = (
                vec![0.0; grad.len()],
                vec![0.0; w.len()],
                vec![0.0; x.len()],
            );
            for (o, k, i) in terms(&g) {
                y[o] += f64::from(x[i]) * f64::from(w[k]);
                gw[k] += f64::from(grad[o]) * f64::from(x[i]);
                gx[i] += f64::from(grad[o]) * f64::from(w[k]);
            }
            assert_close(&g.forward(&x, &w), &y, &format!("{g:?} forward"));
            assert_close(
                &g.weight_grad(&x, &grad),
                &gw,
                &format!("{g:?} weight grad"),
            );
            assert_close(&g.input_grad(&w, &grad), &gx, &format!("{g:?} input grad"));
        }
    }

    /// Output sizes as PyTorch's `Conv2d` gives them; a kernel larger than the padded input
    /// and a zero stride have none.
    #[test]
    fn output_sizes() {
        assert_eq!(
            geometry(1, 1, [32, 32], 1, [3, 3], [1, 1], [1, 1]).output(),
            Some([32, 32])
        );
        assert_eq!(
            geometry(1, 1, [32, 31], 1, [3, 3], [2, 2], [1, 1]).output(),
            Some([16, 16])
        );
        assert_eq!(
            geometry(1, 1, [7, 7], 1, [1, 1], [2, 2], [0, 0]).output(),
            Some([4, 4])
        );
        assert_eq!(
            geometry(1, 1, [2, 2], 1, [5, 5], [1, 1], [1, 1]).output(),
            None
        );
        assert_eq!(
            geometry(1, 1, [2, 2], 1, [1, 1], [0, 1], [0, 0]).output(),
            None
        );
    }

    /// The weight gradient sums its chunks in a fixed order: the same bits on 1 to 4 threads,
    /// with 5 chunks (an unordered reduction of 3 or more partial sums would differ).
    #[test]
    fn weight_grad_does_not_depend_on_the_threads() {
        let g = ConvGeometry {
            batch: 5 * WEIGHT_GRAD_CHUNK,
            ..GEOMETRIES[6]
        };
        let [ho, wo] = g.output().unwrap();
        let x = values(g.batch * g.channels * 16, 4);
        let grad: Vec<f32> = values(g.batch * g.out_channels * ho * wo, 5)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1.0 + i as f32 * 1e-3))
            .collect();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let bits: Vec<u32> = pool
                .install(|| g.weight_grad(&x, &grad))
                .iter()
                .map(|v| v.to_bits())
                .collect();
            bits
        };
        let one = run(1);
        for threads in 2..=4 {
            assert_eq!(one, run(threads), "{threads} threads");
        }
    }
}
