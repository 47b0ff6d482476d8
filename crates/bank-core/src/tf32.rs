//! Products that stay exact where the backend's matmul rounds f32 inputs to TF32.
//!
//! burn-cuda 0.21's tensor-core matmuls (cubek-matmul's `adjust_dtypes`) read f32 operands as
//! TF32: 11 significant bits, a relative error of up to 2⁻¹¹ per input when rounded to nearest
//! and 2⁻¹⁰ when truncated. For the bank's `[B·K, N]` similarities that is the usual trade-off
//! (PyTorch's `allow_tf32`), but the bank update averages a sample's views with a 0/1 matrix
//! product, and there a TF32 rounding would move every updated row by up to ~5e-4 of its length. [`tf32_exact_matmul`] splits the dense
//! operand in two parts that TF32 carries (almost) exactly.

use burn::prelude::*;

/// Scale of the high part: `round(x · 2¹¹) / 2¹¹` has at most 11 significant bits for |x| ≤ 1.
const HIGH_SCALE: f64 = 2048.0;

/// Splits `x` into `hi + lo == x` (exactly, in f32), where `hi = round(x · 2¹¹) / 2¹¹`.
///
/// For |x| ≤ 1 (unit rows), `hi` has at most 11 significant bits, so TF32 represents it exactly,
/// and |lo| ≤ 2⁻¹², so TF32's rounding of `lo` costs at most 2⁻²² absolute (2⁻²³ rounded to
/// nearest). Larger values are split too, and then lose no more than an unsplit product would.
///
/// # Shapes
/// - `x`: `[M, D]`; returns two `[M, D]` tensors.
pub(crate) fn split_tf32<B: Backend>(x: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let hi = (x.clone() * HIGH_SCALE).round() / HIGH_SCALE;
    let lo = x - hi.clone();
    (hi, lo)
}

/// `a × x` computed as `a × hi + a × lo` ([`split_tf32`]): even where the matmul rounds its
/// inputs to TF32, each term of a sum is off by at most 2⁻²² (|x| ≤ 1), so a mean over a
/// sample's views stays within that of the f32 one; `a`'s entries must be exact in TF32 (small
/// integers, as the 0/1 matrices this is for). Costs two matmuls instead of one.
///
/// # Shapes
/// - `a`: `[M, R]`, `x`: `[R, D]`; returns `[M, D]`.
pub(crate) fn tf32_exact_matmul<B: Backend>(a: Tensor<B, 2>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let (hi, lo) = split_tf32(x);
    a.clone().matmul(hi) + a.matmul(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray;

    /// TF32 as the tensor cores read an f32: the 13 low mantissa bits dropped (truncation, the
    /// worse of the hardware's two behaviours).
    fn to_tf32(x: f32) -> f32 {
        f32::from_bits(x.to_bits() & !0x1FFF)
    }

    fn pseudo_random_unit_rows(rows: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let mut v: Vec<f32> = (0..rows * d)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
            })
            .collect();
        for r in v.chunks_mut(d) {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter_mut().for_each(|x| *x /= n);
        }
        v
    }

    /// `a × x` on the host in f64, with each input passed through `round` first.
    fn host_product(
        a: &[f32],
        x: &[f32],
        (m, r, d): (usize, usize, usize),
        round: fn(f32) -> f32,
    ) -> Vec<f64> {
        let mut out = vec![0f64; m * d];
        for i in 0..m {
            for k in 0..r {
                for j in 0..d {
                    out[i * d + j] += round(a[i * r + k]) as f64 * round(x[k * d + j]) as f64;
                }
            }
        }
        out
    }

    #[test]
    fn the_split_is_exact_and_its_high_part_fits_tf32() {
        let (rows, d) = (12, 16);
        let x = pseudo_random_unit_rows(rows, d, 7);
        let device = Default::default();
        let t = Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [rows, d]), &device);
        let (hi, lo) = split_tf32(t);
        let hi = hi.into_data().to_vec::<f32>().unwrap();
        let lo = lo.into_data().to_vec::<f32>().unwrap();
        for i in 0..x.len() {
            assert_eq!(hi[i] as f64 + lo[i] as f64, x[i] as f64, "hi + lo at {i}");
            assert_eq!(
                to_tf32(hi[i]),
                hi[i],
                "hi[{i}] = {} is not a TF32 value",
                hi[i]
            );
            assert!(lo[i].abs() <= 1.0 / 4096.0, "|lo[{i}]| = {}", lo[i]);
        }
    }

    /// With the inputs rounded to TF32 as the tensor cores do, the split product stays within
    /// 1e-6 of the exact one, where the plain product is off by more than 1e-4.
    #[test]
    fn under_tf32_rounding_the_split_product_keeps_f32_accuracy() {
        let (m, r, d) = (6, 12, 16);
        let x = pseudo_random_unit_rows(r, d, 11);
        // Rows 0, 3 and 5 share a sample; the others are alone or in pairs.
        let groups = [0usize, 1, 1, 0, 2, 0];
        let a: Vec<f32> = (0..m)
            .flat_map(|i| (0..r).map(move |k| f32::from(groups[i] == groups[k % m])))
            .collect();
        let exact = host_product(&a, &x, (m, r, d), |v| v);
        let plain = host_product(&a, &x, (m, r, d), to_tf32);
        let device = Default::default();
        let t = Tensor::<B, 2>::from_data(TensorData::new(x, [r, d]), &device);
        let (hi, lo) = split_tf32(t);
        let hi = hi.into_data().to_vec::<f32>().unwrap();
        let lo = lo.into_data().to_vec::<f32>().unwrap();
        let split: Vec<f64> = host_product(&a, &hi, (m, r, d), to_tf32)
            .iter()
            .zip(host_product(&a, &lo, (m, r, d), to_tf32))
            .map(|(h, l)| h + l)
            .collect();
        let err = |v: &[f64]| {
            v.iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        };
        assert!(
            err(&plain) > 1e-4,
            "plain TF32 product error {}",
            err(&plain)
        );
        assert!(
            err(&split) < 1e-6,
            "split TF32 product error {}",
            err(&split)
        );
    }

    #[test]
    fn on_an_f32_backend_the_split_product_equals_the_plain_one() {
        let (m, r, d) = (4, 5, 8);
        let device = Default::default();
        let a = Tensor::<B, 2>::from_data(
            TensorData::new(
                (0..m * r)
                    .map(|i| f32::from(i % 3 == 0))
                    .collect::<Vec<_>>(),
                [m, r],
            ),
            &device,
        );
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(pseudo_random_unit_rows(r, d, 3), [r, d]),
            &device,
        );
        let want = a
            .clone()
            .matmul(x.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let got = tf32_exact_matmul(a, x).into_data().to_vec::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6, "{g} against {w}");
        }
    }
}
