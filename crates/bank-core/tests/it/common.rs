//! Helpers shared by the integration tests.
#![allow(dead_code, unused_macros)]

use burn::prelude::*;

/// Instantiates a generic test `fn name<B: Backend>(device: &B::Device)` once per backend:
/// ndarray and flex, or wgpu alone with `--features wgpu`, or LibTorch (CPU device) alone with
/// `--features tch`, or CUDA (device 0) alone with `--features cuda` (the CPU run already covers
/// the CPU backends, and each instantiation costs minutes of compile time). CUDA needs a GPU and
/// its driver, so nothing runs it unless asked: `cargo xtask test --cuda`.
macro_rules! on_backends {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[cfg(not(any(feature = "wgpu", feature = "tch", feature = "cuda")))]
                #[test]
                fn ndarray() {
                    super::$test::<burn::backend::NdArray>(&Default::default());
                }
                #[cfg(not(any(feature = "wgpu", feature = "tch", feature = "cuda")))]
                #[test]
                fn flex() {
                    super::$test::<burn::backend::Flex>(&Default::default());
                }
                #[cfg(feature = "wgpu")]
                #[test]
                fn wgpu() {
                    super::$test::<burn::backend::Wgpu>(&Default::default());
                }
                #[cfg(feature = "tch")]
                #[test]
                fn tch() {
                    super::$test::<burn::backend::LibTorch>(&Default::default());
                }
                #[cfg(feature = "cuda")]
                #[test]
                fn cuda() {
                    super::$test::<burn::backend::Cuda>(&Default::default());
                }
            }
        )*
    };
}

/// Like [`on_backends!`] for `fn name<B: AutodiffBackend>(device: &B::Device)`: ndarray and flex,
/// or wgpu alone with `--features wgpu`, or LibTorch alone with `--features tch`, or CUDA alone
/// with `--features cuda`.
///
/// Not `NdArray<f64>`: burn keeps the default float dtype per device, and ndarray's f32 and f64
/// backends share one device, so mixing them in one test binary makes f32 tensors come out f64.
macro_rules! on_autodiff_backends {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[cfg(not(any(feature = "wgpu", feature = "tch", feature = "cuda")))]
                #[test]
                fn ndarray() {
                    super::$test::<burn::backend::Autodiff<burn::backend::NdArray>>(&Default::default());
                }
                #[cfg(not(any(feature = "wgpu", feature = "tch", feature = "cuda")))]
                #[test]
                fn flex() {
                    super::$test::<burn::backend::Autodiff<burn::backend::Flex>>(&Default::default());
                }
                #[cfg(feature = "wgpu")]
                #[test]
                fn wgpu() {
                    super::$test::<burn::backend::Autodiff<burn::backend::Wgpu>>(&Default::default());
                }
                #[cfg(feature = "tch")]
                #[test]
                fn tch() {
                    super::$test::<burn::backend::Autodiff<burn::backend::LibTorch>>(&Default::default());
                }
                #[cfg(feature = "cuda")]
                #[test]
                fn cuda() {
                    super::$test::<burn::backend::Autodiff<burn::backend::Cuda>>(&Default::default());
                }
            }
        )*
    };
}

/// Row-major f32 values of a 2-d tensor.
pub fn values<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// A deterministic pseudo-random matrix (xorshift), independent of any backend's RNG.
pub fn host_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// Normalises each row of a row-major matrix in f64.
pub fn normalize_rows(m: &mut [f64], cols: usize) {
    for row in m.chunks_exact_mut(cols) {
        let n = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
}

/// The relative error that rounding one matmul input may add on `B`, beyond what an f32 product
/// already has: TF32's 2⁻¹⁰ on CUDA, whose tensor-core matmuls read f32 operands as TF32
/// (burn-cuda 0.21, cubek-matmul's `adjust_dtypes`; truncation, the worse of the hardware's two
/// behaviours), and 0 on the other backends, whose tolerances stay as they were. A product of
/// two such inputs is then off by up to about `2 · roundoff` of `|a·b|`.
pub fn matmul_input_roundoff<B: Backend>(device: &B::Device) -> f64 {
    if B::name(device).to_lowercase().contains("cuda") {
        2f64.powi(-10)
    } else {
        0.0
    }
}

/// Largest absolute difference.
pub fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// A 2-d float tensor from row-major values (converted to the backend's float type).
pub fn tensor<B: Backend>(
    values: Vec<f32>,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// The single value of a `[1]` tensor.
pub fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
}

/// A 1-d index tensor.
pub fn indices<B: Backend>(values: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}
