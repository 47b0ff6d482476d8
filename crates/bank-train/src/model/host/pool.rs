//! 2-d max-pooling on host memory, with the position of each maximum kept for the backward.
//!
//! burn-flex 0.21 pools through its 3-d kernel, which checks every window position against the
//! padding and writes `i64` indices: about 11% of the small CNN's training step. Here a window
//! is scanned row by row and its maximum's offset in the plane kept as a `u32`.

use rayon::prelude::*;

/// The shapes of a max-pool without dilation, padded (with positions that are never the
/// maximum) by the same amount on both sides of each axis, output sizes rounded down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolGeometry {
    /// Planes: batch × channels.
    pub planes: usize,
    /// Input height H and width W.
    pub input: [usize; 2],
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Stride along H and W.
    pub stride: [usize; 2],
    /// Padding above and below, left and right; at most half the window, as in PyTorch.
    pub padding: [usize; 2],
}

impl PoolGeometry {
    /// Output height and width, `(H + 2p − k) / s + 1`; `None` when the window does not fit,
    /// a stride is 0, the padding is over half the window, there are no planes or pixels, or
    /// a plane has 2³² positions or more (burn's path handles those).
    pub fn output(&self) -> Option<[usize; 2]> {
        let axis = |i: usize| {
            let padded = self.input[i] + 2 * self.padding[i];
            (self.stride[i] > 0
                && self.input[i] > 0
                && self.kernel[i] > 0
                && 2 * self.padding[i] <= self.kernel[i]
                && padded >= self.kernel[i])
                .then(|| (padded - self.kernel[i]) / self.stride[i] + 1)
        };
        let plane_fits = self.planes > 0 && u32::try_from(self.input[0] * self.input[1]).is_ok();
        plane_fits.then_some([axis(0)?, axis(1)?])
    }

    /// The input rows (or columns) of output row `o` along `axis`: `start..end`, clipped to the
    /// image.
    fn window(&self, axis: usize, o: usize) -> (usize, usize) {
        let start = o * self.stride[axis];
        let (p, n) = (self.padding[axis], self.input[axis]);
        (
            start.saturating_sub(p),
            (start + self.kernel[axis]).saturating_sub(p).min(n),
        )
    }

    /// The maxima of `x` (`[planes, H, W]`) over each window, `[planes, Ho, Wo]`, and the offset
    /// in its plane of each maximum: the first in row-major order, or the last NaN (a NaN
    /// propagates, as in PyTorch).
    pub fn forward(&self, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
        let [ho, wo] = self.output().unwrap_or([0, 0]);
        let [h, w] = self.input;
        let mut out = vec![0.0f32; self.planes * ho * wo];
        let mut arg = vec![0u32; self.planes * ho * wo];
        if out.is_empty() {
            return (out, arg);
        }
        out.par_chunks_mut(ho * wo)
            .zip(arg.par_chunks_mut(ho * wo))
            .zip(x.par_chunks(h * w))
            .for_each(|((out, arg), x)| {
                if self.kernel == [2, 2] && self.stride == [2, 2] && self.padding == [0, 0] {
                    return pool_2x2(x, w, out, arg, wo);
                }
                for oh in 0..ho {
                    let (r0, r1) = self.window(0, oh);
                    for ow in 0..wo {
                        let (c0, c1) = self.window(1, ow);
                        let mut best = (f32::NEG_INFINITY, r0 * w + c0);
                        let mut first = true;
                        for r in r0..r1 {
                            for (c, &v) in x[r * w + c0..r * w + c1].iter().enumerate() {
                                if first || v > best.0 || v.is_nan() {
                                    best = (v, r * w + c0 + c);
                                    first = false;
                                }
                            }
                        }
                        out[oh * wo + ow] = best.0;
                        // Fits: `output` refuses planes of 2³² positions or more.
                        arg[oh * wo + ow] = best.1 as u32;
                    }
                }
            });
        (out, arg)
    }

    /// `∂L/∂x`, `[planes, H, W]`: each entry of `grad` (`[planes, Ho, Wo]`) added at the
    /// position of its window's maximum (`arg`, from [`forward`](Self::forward)).
    pub fn backward(&self, grad: &[f32], arg: &[u32]) -> Vec<f32> {
        let [ho, wo] = self.output().unwrap_or([0, 0]);
        let plane = self.input[0] * self.input[1];
        let mut gx = vec![0.0f32; self.planes * plane];
        if gx.is_empty() || ho * wo == 0 {
            return gx;
        }
        gx.par_chunks_mut(plane)
            .zip(grad.par_chunks(ho * wo).zip(arg.par_chunks(ho * wo)))
            .for_each(|(gx, (grad, arg))| {
                // Written before it is read: a fresh allocation's pages read first are mapped to
                // the shared zero page, and the first write to each then faults again and
                // flushes the other cores' TLBs (a quarter of the K = 2 step, measured).
                gx.fill(0.0);
                for (&g, &a) in grad.iter().zip(arg) {
                    gx[a as usize] += g;
                }
            });
        gx
    }
}

/// [`PoolGeometry::forward`] for one plane `x` with rows `w` long, 2×2 windows at stride 2:
/// `out` and `arg` hold `Wo` outputs per row. The general loop took about 9% of the small CNN's
/// step at K = 2.
fn pool_2x2(x: &[f32], w: usize, out: &mut [f32], arg: &mut [u32], wo: usize) {
    let rows = out.chunks_mut(wo).zip(arg.chunks_mut(wo));
    for (oh, (out, arg)) in rows.enumerate() {
        let top = 2 * oh * w;
        let (r0, r1) = (&x[top..top + w], &x[top + w..top + 2 * w]);
        for (ow, (o, a)) in out.iter_mut().zip(arg.iter_mut()).enumerate() {
            let c = 2 * ow;
            let mut best = (r0[c], top + c);
            for (v, k) in [
                (r0[c + 1], top + c + 1),
                (r1[c], top + w + c),
                (r1[c + 1], top + w + c + 1),
            ] {
                if v > best.0 || v.is_nan() {
                    best = (v, k);
                }
            }
            *o = best.0;
            // Fits: `PoolGeometry::output` refuses planes of 2³² positions or more.
            *a = best.1 as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn geometry(
        planes: usize,
        input: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> PoolGeometry {
        PoolGeometry {
            planes,
            input,
            kernel,
            stride,
            padding,
        }
    }

    /// 2×2 / 2 on even and odd sizes, overlapping 3×3 / 2 with padding 1 (ResNet's stem), 3×3
    /// / 1, and an uneven window.
    const GEOMETRIES: [PoolGeometry; 5] = [
        geometry(3, [6, 8], [2, 2], [2, 2], [0, 0]),
        geometry(2, [7, 5], [2, 2], [2, 2], [0, 0]),
        geometry(2, [9, 8], [3, 3], [2, 2], [1, 1]),
        geometry(1, [5, 5], [3, 3], [1, 1], [0, 0]),
        geometry(2, [6, 7], [2, 3], [1, 2], [1, 1]),
    ];

    /// Values with many ties (5 distinct values), so the first-maximum rule is exercised.
    fn values(len: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7) % 13) / 3) as f32).collect()
    }

    /// Forward and backward against the windows written out: the maximum of each window, the
    /// first in row-major order on ties, receives the window's gradient.
    #[test]
    fn matches_the_windows_written_out() {
        for g in GEOMETRIES {
            let [ho, wo] = g.output().unwrap();
            let [h, w] = g.input;
            let x = values(g.planes * h * w);
            let grad: Vec<f32> = (0..g.planes * ho * wo)
                .map(|i| 1.0 + i as f32 / 8.0)
                .collect();
            let (mut y, mut gx) = (Vec::new(), vec![0.0f32; x.len()]);
            for p in 0..g.planes {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let mut best: Option<(f32, usize)> = None;
                        for i in 0..g.kernel[0] {
                            for j in 0..g.kernel[1] {
                                let r = (oh * g.stride[0] + i).checked_sub(g.padding[0]);
                                let c = (ow * g.stride[1] + j).checked_sub(g.padding[1]);
                                let (Some(r), Some(c)) = (r, c) else { continue };
                                if r < h && c < w {
                                    let k = p * h * w + r * w + c;
                                    if best.is_none_or(|(b, _)| x[k] > b) {
                                        best = Some((x[k], k));
                                    }
                                }
                            }
                        }
                        let (v, k) = best.unwrap();
                        y.push(v);
                        gx[k] += grad[(p * ho + oh) * wo + ow];
                    }
                }
            }
            let (got, arg) = g.forward(&x);
            assert_eq!(got, y, "{g:?} forward");
            assert_eq!(g.backward(&grad, &arg), gx, "{g:?} backward");
        }
    }

    /// A NaN in a window is its maximum, as in PyTorch.
    #[test]
    fn nan_propagates() {
        let g = geometry(1, [2, 4], [2, 2], [2, 2], [0, 0]);
        let x = [1.0, f32::NAN, 5.0, 2.0, 3.0, 4.0, 1.0, 0.0];
        let (y, arg) = g.forward(&x);
        assert!(y[0].is_nan());
        assert_eq!((y[1], arg[0]), (5.0, 1));
        // The general loop (3 × 3 / 1): the last NaN of a window is its maximum.
        let g = geometry(1, [3, 4], [3, 3], [1, 1], [0, 0]);
        let x = [
            0.0,
            9.0,
            1.0,
            2.0,
            f32::NAN,
            3.0,
            4.0,
            5.0,
            6.0,
            f32::NAN,
            7.0,
            8.0,
        ];
        let (y, arg) = g.forward(&x);
        assert!(y[0].is_nan() && y[1].is_nan());
        assert_eq!(arg, [9, 9]);
    }

    #[test]
    fn refuses_what_it_does_not_support() {
        assert_eq!(
            geometry(1, [4, 4], [2, 2], [2, 2], [2, 0]).output(),
            None,
            "padding over half"
        );
        assert_eq!(
            geometry(1, [1, 4], [2, 2], [2, 2], [0, 0]).output(),
            None,
            "window too tall"
        );
        assert_eq!(
            geometry(1, [4, 4], [2, 2], [0, 2], [0, 0]).output(),
            None,
            "stride 0"
        );
    }
}
