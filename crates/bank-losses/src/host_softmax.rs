//! The bank softmax's row passes on host memory when the backend is burn-flex.
//!
//! On burn-flex 0.21 each of the softmax's passes over the `[M, N]` similarities (row maximum,
//! shift, exponential, row sum, scaling) is a separate operation over the whole matrix, one
//! thread each, the exponential a scalar call per element: at N = 50,000 and M = 512 they took
//! about as long as the step's two matrix products together. Here each row is done in one
//! visit while it sits in the cache (maximum, then `exp(x − max)` written in place and summed),
//! the exponential eight lanes at a time ([`Lanes::exp`], `wide`'s polynomial, within a few ulp),
//! the rows spread over the threads with rayon, each row's work compiled for AVX2 as well and
//! chosen at run time (`multiversion`; the same bits either way, see [`crate::lanes`]).
//!
//! Like `bank-train`'s host convolutions, the functions take any `B: Backend` and check at run
//! time ([`bank_core::same_type`]) whether `B` is `Flex` and the tensor `f32`; on any other
//! backend they give the tensor back and the caller uses burn's operations. The results agree
//! with burn's to f32 rounding (another exponential, another summation order).

use burn::prelude::*;
use multiversion::multiversion;
use rayon::prelude::*;

use crate::lanes::{LANES, Lanes};

/// The largest value of `row` (`−∞` when empty). NaN entries are skipped here; they make
/// their row's sum NaN in [`exp_shifted_sum`], as in burn.
#[inline(always)]
pub(crate) fn row_max(row: &[f32]) -> f32 {
    let mut lanes = Lanes::splat(f32::NEG_INFINITY);
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        lanes = lanes.max(Lanes::load(chunk));
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    lanes
        .to_array()
        .into_iter()
        .fold(tail, |m, x| if x > m { x } else { m })
}

/// `x ← exp(x − shift)` for each of up to [`LANES`] values, through the same lanes as the full
/// chunks (the unused lanes hold a value whose exponential is 0); returns their sum.
#[cold]
#[inline(never)]
fn exp_tail(values: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [-1e4; LANES];
    for (lane, &x) in lanes.iter_mut().zip(values.iter()) {
        *lane = x - shift;
    }
    let e = Lanes(lanes).exp().to_array();
    values.copy_from_slice(&e[..values.len()]);
    values.iter().sum()
}

/// `x ← exp(x − shift)` for each value of `row`; returns their sum.
#[inline(always)]
pub(crate) fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
    let mut sum = Lanes::ZERO;
    let shift_lanes = Lanes::splat(shift);
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        let e = (Lanes::load(chunk) - shift_lanes).exp();
        chunk.copy_from_slice(&e.to_array());
        sum += e;
    }
    let tail = chunks.into_remainder();
    let tail_sum = if tail.is_empty() {
        0.0
    } else {
        exp_tail(tail, shift)
    };
    sum.reduce_add() + tail_sum
}

/// One row in place: `x ← exp(x − shift)`, with `shift` the row's maximum unless given;
/// returns the shift and the sum of the new values.
#[multiversion(targets("x86_64+avx2"))]
fn exp_row_in_place(row: &mut [f32], shift: Option<f32>) -> (f32, f32) {
    let shift = shift.unwrap_or_else(|| row_max(row));
    (shift, exp_shifted_sum(row, shift))
}

/// Row by row of the row-major `[rows, cols]` matrix `values`: `x ← exp(x − max_row)` in place.
/// Returns each row's maximum and the sum of its new values.
///
/// # Panics
/// When `cols` is 0 or does not divide `values.len()`.
pub(crate) fn exp_shifted_rows_in_place(values: &mut [f32], cols: usize) -> (Vec<f32>, Vec<f32>) {
    assert!(cols > 0 && values.len().is_multiple_of(cols));
    let rows = values.len() / cols;
    let (mut max, mut sum) = (vec![0.0; rows], vec![0.0; rows]);
    values
        .par_chunks_mut(cols)
        .zip(max.par_iter_mut().zip(sum.par_iter_mut()))
        .for_each(|(row, (max, sum))| (*max, *sum) = exp_row_in_place(row, None));
    (max, sum)
}

/// Row by row of the row-major `[rows, cols]` matrix `values`: `exp(x)` into a new matrix, and
/// each row's sum of it.
///
/// # Panics
/// When `cols` is 0 or does not divide `values.len()`.
pub(crate) fn exp_rows(values: &[f32], cols: usize) -> (Vec<f32>, Vec<f32>) {
    assert!(cols > 0 && values.len().is_multiple_of(cols));
    let mut out = vec![0.0; values.len()];
    let mut sum = vec![0.0; values.len() / cols];
    out.par_chunks_mut(cols)
        .zip(values.par_chunks(cols))
        .zip(sum.par_iter_mut())
        .for_each(|((dst, row), sum)| {
            dst.copy_from_slice(row);
            *sum = exp_row_in_place(dst, Some(0.0)).1;
        });
    (out, sum)
}

/// Row `r` of the row-major `[rows, cols]` matrix `values` multiplied by `factors[r]`, in place.
///
/// # Panics
/// When `cols` is 0 or `values` is not `factors.len()` rows of `cols`.
pub(crate) fn scale_rows_in_place(values: &mut [f32], cols: usize, factors: &[f32]) {
    assert!(cols > 0 && values.len() == factors.len() * cols);
    values
        .par_chunks_mut(cols)
        .zip(factors.par_iter())
        .for_each(|(row, &f)| row.iter_mut().for_each(|x| *x *= f));
}

/// A softmax's exponentials with their row statistics, all `[M, ·]` tensors on one device.
pub(crate) struct RowExp<B: Backend> {
    /// `exp(z − max_row z)`, `[M, N]`.
    pub exp: Tensor<B, 2>,
    /// `max_row z`, `[M, 1]`.
    pub max: Tensor<B, 2>,
    /// `Σ_row exp(z − max_row z)`, `[M, 1]`.
    pub sum: Tensor<B, 2>,
}

/// A column of `values` as an `[M, 1]` tensor.
fn column<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 2> {
    let m = values.len();
    Tensor::from_data(TensorData::new(values, [m, 1]), device)
}

/// `exp(z − max_row z)` of `logits` in place, with the row maxima and sums, on burn-flex;
/// `Err(logits)` on any other backend or dtype.
///
/// # Shapes
/// - `logits`: `[M, N]`
pub(crate) fn exp_shifted<B: Backend>(logits: Tensor<B, 2>) -> Result<RowExp<B>, Tensor<B, 2>> {
    let device = logits.device();
    let [_, n] = logits.dims();
    let (exp, (max, sum)) = flex::with_values_mut(logits, |v| exp_shifted_rows_in_place(v, n))?;
    Ok(RowExp {
        exp,
        max: column(max, &device),
        sum: column(sum, &device),
    })
}

/// `exp(shifted)` in a new tensor with its row sums, on burn-flex; `None` on any other backend
/// or dtype.
///
/// # Shapes
/// - `shifted`: `[M, N]`; output `[M, N]`, `[M, 1]`
pub(crate) fn exp_with_row_sums<B: Backend>(
    shifted: &Tensor<B, 2>,
) -> Option<(Tensor<B, 2>, Tensor<B, 2>)> {
    let device = shifted.device();
    let dims = shifted.dims();
    let (exp, sum) = flex::with_values(shifted, |v| exp_rows(v, dims[1]))?;
    let exp = Tensor::from_data(TensorData::new(exp, dims), &device);
    Some((exp, column(sum, &device)))
}

/// `values` with row `r` multiplied by `factors[r]`, in place on burn-flex, with burn's
/// broadcast product elsewhere.
///
/// # Shapes
/// - `values`: `[M, N]`, `factors`: `[M, 1]`
pub(crate) fn scale_rows<B: Backend>(values: Tensor<B, 2>, factors: Tensor<B, 2>) -> Tensor<B, 2> {
    let [_, n] = values.dims();
    let Some(f) = flex::host_values(&factors) else {
        return values * factors;
    };
    match flex::with_values_mut(values, |v| scale_rows_in_place(v, n, &f)) {
        Ok((scaled, ())) => scaled,
        Err(values) => values * factors,
    }
}

#[cfg(feature = "flex")]
pub(crate) mod flex {
    //! Moving burn-flex's `f32` storage in and out of the generic tensors.

    use bank_core::same_type::{cast, is};
    use burn::prelude::*;
    use burn::tensor::{DType, TensorPrimitive};
    use burn_flex::{Flex, FlexTensor};

    /// Whether `tensor` is a non-empty `f32` tensor on `Flex`: the functions of this module
    /// work on it.
    pub(crate) fn is_host<B: Backend>(tensor: &Tensor<B, 2>) -> bool {
        is::<B, Flex>() && tensor.dtype() == DType::F32 && tensor.shape().num_elements() > 0
    }

    /// The row-major primitive of a non-empty `f32` tensor on `Flex` (copied only when its
    /// layout is not row-major over the whole buffer).
    fn primitive<B: Backend>(tensor: Tensor<B, 2>) -> Result<FlexTensor, Tensor<B, 2>> {
        if !is_host(&tensor) {
            return Err(tensor);
        }
        let flex = cast::<_, Tensor<Flex, 2>>(tensor).expect("B is Flex");
        Ok(flex.into_primitive().tensor().to_contiguous())
    }

    /// Calls `f` on the values of a row-major `f32` tensor on `Flex` (written in place when
    /// the tensor holds its storage alone, else in a copy) and returns the tensor with `f`'s
    /// result; `Err(tensor)` on any other backend or dtype, or when empty.
    pub(crate) fn with_values_mut<B: Backend, R>(
        tensor: Tensor<B, 2>,
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> Result<(Tensor<B, 2>, R), Tensor<B, 2>> {
        let mut host = primitive(tensor)?;
        let out = f(host.storage_mut::<f32>());
        let tensor = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(host));
        Ok((cast(tensor).expect("B is Flex"), out))
    }

    /// `f` of the values of an `f32` tensor on `Flex`; `None` on any other backend or dtype.
    pub(crate) fn with_values<B: Backend, R>(
        tensor: &Tensor<B, 2>,
        f: impl FnOnce(&[f32]) -> R,
    ) -> Option<R> {
        let host = primitive(tensor.clone()).ok()?;
        Some(f(host.storage::<f32>()))
    }

    /// The values of a small `f32` tensor on `Flex`, copied.
    pub(crate) fn host_values<B: Backend>(tensor: &Tensor<B, 2>) -> Option<Vec<f32>> {
        with_values(tensor, <[f32]>::to_vec)
    }
}

#[cfg(not(feature = "flex"))]
pub(crate) mod flex {
    //! Without burn-flex every tensor takes burn's operations.

    use burn::prelude::*;

    pub(crate) fn is_host<B: Backend>(_: &Tensor<B, 2>) -> bool {
        false
    }

    pub(crate) fn with_values_mut<B: Backend, R>(
        tensor: Tensor<B, 2>,
        _: impl FnOnce(&mut [f32]) -> R,
    ) -> Result<(Tensor<B, 2>, R), Tensor<B, 2>> {
        Err(tensor)
    }

    pub(crate) fn with_values<B: Backend, R>(
        _: &Tensor<B, 2>,
        _: impl FnOnce(&[f32]) -> R,
    ) -> Option<R> {
        None
    }

    pub(crate) fn host_values<B: Backend>(_: &Tensor<B, 2>) -> Option<Vec<f32>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[rows, cols]` matrix of logits in [−20, 20].
    fn logits(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 40.0)
            .collect()
    }

    /// Each row's maximum, `exp(x − max)` and the sum, in f64.
    fn reference(values: &[f32], cols: usize) -> Vec<(f64, Vec<f64>, f64)> {
        values
            .chunks(cols)
            .map(|row| {
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
                let e: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
                let sum = e.iter().sum();
                (max, e, sum)
            })
            .collect()
    }

    #[test]
    fn rows_match_f64_for_every_tail_length() {
        for cols in [1, 7, 8, 9, 15, 16, 17, 1000, 1003] {
            let rows = 5;
            let original = logits(rows, cols);
            let mut v = original.clone();
            let (max, sum) = exp_shifted_rows_in_place(&mut v, cols);
            for (r, (m, e, s)) in reference(&original, cols).into_iter().enumerate() {
                assert_eq!(max[r] as f64, m, "max of row {r}, {cols} columns");
                assert!(
                    ((sum[r] as f64 - s) / s).abs() < 1e-5,
                    "{cols}: {} vs {s}",
                    sum[r]
                );
                for (c, want) in e.into_iter().enumerate() {
                    let got = v[r * cols + c] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * want.max(1e-30) + 1e-37,
                        "row {r} col {c} of {cols}: {got} vs {want}"
                    );
                }
            }
            let (e, s) = exp_rows(&original, cols);
            for (r, row) in original.chunks(cols).enumerate() {
                let want: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
                assert!(((s[r] as f64 - want) / want).abs() < 1e-5);
                for (c, &x) in row.iter().enumerate() {
                    let want = (x as f64).exp();
                    let got = e[r * cols + c] as f64;
                    assert!((got - want).abs() <= 1e-6 * want, "{x}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn nan_makes_its_row_nan_and_no_other() {
        let cols = 19;
        let mut v = logits(3, cols);
        v[cols + 4] = f32::NAN;
        v[2 * cols + 17] = f32::NAN; // in the tail
        let (max, sum) = exp_shifted_rows_in_place(&mut v, cols);
        assert!(sum[0].is_finite());
        assert!(sum[1].is_nan() && sum[2].is_nan());
        // The maximum skips the NaN: the row's other values stay finite.
        assert!(max.iter().all(|m| m.is_finite()), "{max:?}");
        assert!(v[cols + 3].is_finite() && v[cols + 4].is_nan());
    }

    #[cfg(feature = "flex")]
    #[test]
    fn flex_takes_the_host_path_and_other_backends_burns_ops() {
        use burn::backend::{Flex, NdArray};
        let values = [[1.0f32, 2.0, -1.0], [3.0, 5.0, 5.0]];
        let flex = Tensor::<Flex, 2>::from_data(values, &Default::default());
        let RowExp {
            exp: shifted,
            max,
            sum,
        } = exp_shifted(flex.clone()).ok().unwrap();
        let e = |x: f32| x.exp();
        let want = [e(-1.0), 1.0, e(-3.0), e(-2.0), 1.0, 1.0];
        let got = shifted.into_data().to_vec::<f32>().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w, "{got:?} vs {want:?}");
        }
        assert_eq!(max.into_data().to_vec::<f32>().unwrap(), vec![2.0, 5.0]);
        let sum = sum.into_data().to_vec::<f32>().unwrap();
        assert!((sum[0] - (1.0 + e(-1.0) + e(-3.0))).abs() < 1e-6, "{sum:?}");
        assert!((sum[1] - (2.0 + e(-2.0))).abs() < 1e-6, "{sum:?}");
        assert!(exp_with_row_sums(&flex).is_some());

        // A transposed (strided) flex tensor is read in its logical layout, and the tensor it
        // views is left alone.
        let transposed = flex.clone().transpose();
        let RowExp { max, .. } = exp_shifted(transposed).ok().unwrap();
        assert_eq!(
            max.into_data().to_vec::<f32>().unwrap(),
            vec![3.0, 5.0, 5.0]
        );
        let unchanged = flex.clone().into_data().to_vec::<f32>().unwrap();
        assert_eq!(unchanged, vec![1.0, 2.0, -1.0, 3.0, 5.0, 5.0]);

        let ndarray = Tensor::<NdArray, 2>::from_data(values, &Default::default());
        assert!(exp_shifted(ndarray.clone()).is_err());
        assert!(exp_with_row_sums(&ndarray).is_none());
        // Scaling takes either path with the same result.
        let factors = [[2.0f32], [-0.5]];
        let on_flex = scale_rows(flex, Tensor::from_data(factors, &Default::default()));
        let on_ndarray = scale_rows(ndarray, Tensor::from_data(factors, &Default::default()));
        let want = vec![2.0, 4.0, -2.0, -1.5, -2.5, -2.5];
        assert_eq!(on_flex.into_data().to_vec::<f32>().unwrap(), want);
        assert_eq!(on_ndarray.into_data().to_vec::<f32>().unwrap(), want);
    }

    #[test]
    fn rows_are_scaled_by_their_own_factor() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        scale_rows_in_place(&mut v, 3, &[2.0, -0.5]);
        assert_eq!(v, vec![2.0, 4.0, 6.0, -2.0, -2.5, -3.0]);
    }
}
