//! f32 matrix products on host memory: a bounds-checked call into the `gemm` crate (the GEMM
//! burn-flex itself multiplies with). bank-mining's host search and bank-train's host
//! convolutions multiply through it, so this is the workspace's one call into `gemm`.

/// A read-only matrix inside a slice: element `(i, j)` is at `i·row_stride + j·col_stride`, so
/// a transposed view is the same slice with the strides swapped. Made by [`MatRef::rows`] or
/// [`MatRef::transposed`]; its extent is checked against the slice when it is used.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with rows `cols` long.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with rows `cols` long.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    /// The strides as `gemm` takes them, `(column, row)`.
    ///
    /// # Panics
    /// Unless every element of a `rows × cols` matrix (both > 0) lies inside the slice, computed
    /// without overflow, and both strides fit in an `isize`.
    fn checked_strides(&self, rows: usize, cols: usize, what: &str) -> (isize, isize) {
        let last = last_offset(rows, cols, self.row_stride, self.col_stride);
        assert!(
            last.is_some_and(|last| last < self.data.len()),
            "{what}: a {rows} x {cols} matrix with strides ({}, {}) does not fit in {} elements",
            self.row_stride,
            self.col_stride,
            self.data.len()
        );
        (stride(self.col_stride, what), stride(self.row_stride, what))
    }
}

/// `(rows − 1)·row_stride + (cols − 1)·col_stride`, or `None` on overflow.
fn last_offset(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Option<usize> {
    (rows - 1)
        .checked_mul(row_stride)?
        .checked_add((cols - 1).checked_mul(col_stride)?)
}

/// A stride as the `isize` `gemm` takes.
///
/// # Panics
/// When it does not fit.
fn stride(value: usize, what: &str) -> isize {
    isize::try_from(value).unwrap_or_else(|_| panic!("{what}: stride {value} over isize::MAX"))
}

/// `dst = lhs · rhs` (`accumulate` false) or `dst += lhs · rhs` (true), where `lhs` is `m × k`,
/// `rhs` is `k × n` and `dst` is row-major `m × n` with rows `dst_row_stride ≥ n` apart (the
/// elements between rows are left alone). Runs on the calling thread: callers parallelise over
/// independent products.
///
/// # Panics
/// When a matrix does not fit in its slice or `dst_row_stride < n`: the checks that make the
/// call into `gemm` sound.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
) {
    let parallelism = gemm::Parallelism::None;
    call(
        m,
        n,
        k,
        (dst, dst_row_stride),
        accumulate,
        (lhs, rhs),
        parallelism,
    );
}

/// [`gemm`] on rayon's threads (the `gemm` crate splits the rows and columns of `dst`, never
/// the sum over `k`, so every element is summed in the same order whatever the threads): for
/// one large product, where [`gemm`] is for many independent ones.
///
/// # Panics
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_threaded(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
) {
    let parallelism = gemm::Parallelism::Rayon(0);
    call(
        m,
        n,
        k,
        (dst, dst_row_stride),
        accumulate,
        (lhs, rhs),
        parallelism,
    );
}

/// [`gemm`] with the `gemm` crate's `parallelism`.
#[allow(unsafe_code)]
fn call(
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_row_stride): (&mut [f32], usize),
    accumulate: bool,
    (lhs, rhs): (MatRef<'_>, MatRef<'_>),
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst_row_stride >= n,
        "dst rows {dst_row_stride} apart, {n} long"
    );
    let dst_len = last_offset(m, n, dst_row_stride, 1).and_then(|last| last.checked_add(1));
    assert!(
        dst_len.is_some_and(|len| len <= dst.len()),
        "dst: {m} rows {dst_row_stride} apart do not fit in {} elements",
        dst.len()
    );
    let dst_rs = stride(dst_row_stride, "dst");
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let (lhs_cs, lhs_rs) = lhs.checked_strides(m, k, "lhs");
    let (rhs_cs, rhs_rs) = rhs.checked_strides(k, n, "rhs");
    // SAFETY: `gemm` reads `lhs` at `i·rs + p·cs` for i < m, p < k and `rhs` at `p·rs + j·cs`
    // for p < k, j < n; `checked_strides` bounds the largest such offset, computed without
    // overflow, by the slice's length (strides are unsigned and fit in an isize, so the smallest
    // offset is 0). It writes (and with `read_dst`, reads) `dst` at `i·dst_row_stride + j` for
    // i < m, j < n, bounded the same way by `dst_len`; since `dst_row_stride ≥ n`, no two (i, j)
    // share an element. `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs,
            accumulate,
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: MatRef<'_>, b: MatRef<'_>) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| {
                        f64::from(a.data[i * a.row_stride + p * a.col_stride])
                            * f64::from(b.data[p * b.row_stride + j * b.col_stride])
                    })
                    .sum();
            }
        }
        out
    }

    /// Plain, transposed and accumulated products against the sums written out in f64, on
    /// shapes that are not multiples of any kernel width, with a padded destination row.
    #[test]
    fn products_match_the_sums() {
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (17, 33, 65), (9, 1, 4), (2, 3, 0)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let lhs = if ta {
                    MatRef::transposed(&a, m)
                } else {
                    MatRef::rows(&a, k)
                };
                let rhs = if tb {
                    MatRef::transposed(&b, k)
                } else {
                    MatRef::rows(&b, n)
                };
                let want = naive(m, n, k, lhs, rhs);
                let stride = n + 2;
                let mut dst = vec![0.5f32; m * stride];
                gemm(m, n, k, &mut dst, stride, true, lhs, rhs);
                let mut fresh = vec![f32::NAN; m * stride];
                gemm(m, n, k, &mut fresh, stride, false, lhs, rhs);
                for i in 0..m {
                    for j in 0..n {
                        let w = want[i * n + j];
                        let tol = 1e-5 * (1.0 + w.abs());
                        assert!((f64::from(dst[i * stride + j]) - 0.5 - w).abs() <= tol);
                        assert!((f64::from(fresh[i * stride + j]) - w).abs() <= tol);
                    }
                    if i + 1 < m {
                        assert_eq!(dst[i * stride + n], 0.5, "padding written");
                    }
                }
            }
        }
    }

    /// The threaded product equals the single-threaded one bit for bit on 1, 2, 3 and 8
    /// threads: the threads split the output, never a sum (the step's determinism rests on it).
    #[test]
    fn threaded_products_have_the_same_bits_on_any_number_of_threads() {
        let (m, n, k) = (70, 301, 1_000);
        let a: Vec<f32> = (0..m * k)
            .map(|i| (i as f32 * 0.618_034).fract() - 0.5)
            .collect();
        let b: Vec<f32> = (0..n * k)
            .map(|i| (i as f32 * 0.414_214).fract() - 0.5)
            .collect();
        let (lhs, rhs) = (MatRef::rows(&a, k), MatRef::transposed(&b, k));
        let mut one = vec![0.0f32; m * n];
        gemm(m, n, k, &mut one, n, false, lhs, rhs);
        let want = naive(m, n, k, lhs, rhs);
        assert!(
            one.iter()
                .zip(&want)
                .all(|(&g, &w)| (f64::from(g) - w).abs() < 1e-3)
        );
        for threads in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![f32::NAN; m * n];
            pool.install(|| gemm_threaded(m, n, k, &mut out, n, false, lhs, rhs));
            let same = out
                .iter()
                .zip(&one)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{threads} threads differ from the calling thread's product"
            );
        }
    }

    /// Strides whose extent overflows `usize` are refused, not wrapped into a small offset.
    #[test]
    fn overflowing_strides_are_refused() {
        let a = [1.0f32; 4];
        let wide = MatRef {
            data: &a,
            row_stride: usize::MAX,
            col_stride: 1,
        };
        let mut out = [0.0f32; 4];
        let lhs = std::panic::catch_unwind(move || {
            let mut out = [0.0f32; 4];
            gemm(
                2,
                2,
                2,
                &mut out,
                2,
                false,
                wide,
                MatRef::rows(&[1.0; 4], 2),
            );
        });
        assert!(lhs.is_err(), "an lhs row stride of usize::MAX");
        let dst = std::panic::catch_unwind(move || {
            gemm(
                2,
                1,
                2,
                &mut out,
                usize::MAX,
                false,
                MatRef::rows(&a, 2),
                MatRef::rows(&a, 1),
            );
        });
        assert!(dst.is_err(), "a dst row stride of usize::MAX");
    }

    #[test]
    #[should_panic(expected = "rhs")]
    fn a_short_operand_is_refused() {
        let a = [1.0f32; 6];
        let b = [1.0f32; 5];
        let mut out = [0.0f32; 4];
        gemm(
            2,
            2,
            3,
            &mut out,
            2,
            false,
            MatRef::rows(&a, 3),
            MatRef::rows(&b, 2),
        );
    }
}
