//! The networks' convolutions and max-pools computed on host memory when the backend is
//! burn-flex, with backward passes of their own; on every other backend, burn's.
//!
//! On burn-flex 0.21 the small CNN's training step spent over half its time in these two
//! operations, most of it in burn's generic convolution weight gradient (a convolution with
//! swapped axes, see [`conv`]) and in flex's 3-d pooling kernel (see [`pool`]). Here they are
//! written as im2col + GEMM (`bank_core::host_gemm`: the `gemm` crate, which burn-flex itself
//! multiplies with) and as a
//! plain window scan, parallel over samples with rayon.
//!
//! burn offers no way to give one backend its own version of an operation without a new trait
//! bound on every generic function that uses it. So [`conv2d`] and [`max_pool2d`] take any
//! `B: Backend` and check at run time whether `B` is `Autodiff<Flex>` (training) or `Flex`
//! (inference, kNN); only then, for `f32` tensors and the shapes supported (no groups, no
//! dilation, no bias, symmetric explicit padding), they take the host path. Everything else
//! goes to burn's modules unchanged. The values agree with burn's within f32 rounding (they
//! sum in another order); the tests compare both, forward and backward.

mod conv;
mod pool;

mod flex;
#[cfg(feature = "tch")]
mod libtorch;
/// Without the `tch` feature there is no LibTorch backend to recognise.
#[cfg(not(feature = "tch"))]
mod libtorch {
    use super::ConvGeometry;
    use crate::model::BatchNorm2d;
    use burn::prelude::*;

    pub(super) fn conv_bn<B: Backend>(
        x: Tensor<B, 4>,
        _: Tensor<B, 4>,
        _: &BatchNorm2d<B>,
        _: ConvGeometry,
        _: bool,
    ) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        Err(x)
    }

    pub(super) fn relu<B: Backend, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        Err(x)
    }
}

use bank_core::same_type::cast;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::prelude::*;
use burn::tensor::DType;

use crate::model::BatchNorm2d;

pub(crate) use conv::ConvGeometry;
pub(crate) use pool::PoolGeometry;

/// `value` as a `U`; called only once `same_type::is::<T, U>` holds.
fn same<T: 'static, U: 'static>(value: T) -> U {
    cast(value).unwrap_or_else(|| unreachable!("`same` is called only when T is U"))
}

/// `conv.forward(x)`, on the host when the backend is burn-flex (see the module docs).
///
/// # Shapes
/// - input: `[N, C_in, H, W]`
/// - output: `[N, C_out, H_out, W_out]`
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if let Some(geometry) = conv_geometry(conv, &x) {
        match flex::conv2d(x, conv.weight.val(), geometry) {
            Ok(y) => return y,
            Err(x) => return conv.forward(x),
        }
    }
    conv.forward(x)
}

/// `pool.forward(x)`, on the host when the backend is burn-flex (see the module docs).
///
/// # Shapes
/// - input: `[N, C, H, W]`
/// - output: `[N, C, H_out, W_out]`
pub fn max_pool2d<B: Backend>(pool: &MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if let Some(geometry) = pool_geometry(pool, &x) {
        match flex::max_pool2d(x, geometry) {
            Ok(y) => return y,
            Err(x) => return pool.forward(x),
        }
    }
    pool.forward(x)
}

/// conv → BatchNorm (→ ReLU when `relu`) as one operation of ATen's when the backend is
/// LibTorch (see `libtorch`); `Err(x)` on any other backend or for a convolution the path does
/// not take (as [`conv2d`]'s), for the caller to run the layers one by one.
///
/// # Shapes
/// - input: `[N, C_in, H, W]`
/// - output: `[N, C_out, H_out, W_out]`
pub(crate) fn conv_bn<B: Backend>(
    conv: &Conv2d<B>,
    bn: &BatchNorm2d<B>,
    x: Tensor<B, 4>,
    relu: bool,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    match conv_geometry(conv, &x) {
        Some(g) if bn.gamma.dims() == [g.out_channels] => {
            libtorch::conv_bn(x, conv.weight.val(), bn, g, relu)
        }
        _ => Err(x),
    }
}

/// ReLU, with ATen's backward on `Autodiff<LibTorch>` (burn-tch's is `le` + `masked_fill`);
/// burn's elsewhere.
///
/// # Shapes
/// - input and output: any, the same
pub fn relu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    libtorch::relu(x).unwrap_or_else(burn::tensor::activation::relu)
}

/// Symmetric padding `[top/bottom, left/right]`, or `None` for any other configuration.
fn symmetric(padding: &PaddingConfig2d) -> Option<[usize; 2]> {
    match *padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    }
}

/// The host path's view of `conv` applied to `x`, when it supports it.
fn conv_geometry<B: Backend>(conv: &Conv2d<B>, x: &Tensor<B, 4>) -> Option<ConvGeometry> {
    let [batch, channels, h, w] = x.dims();
    let weight = conv.weight.val();
    let [out_channels, in_channels, kh, kw] = weight.dims();
    let supported = conv.groups == 1
        && conv.dilation == [1, 1]
        && conv.bias.is_none()
        && in_channels == channels
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32;
    let geometry = ConvGeometry {
        batch,
        channels,
        input: [h, w],
        out_channels,
        kernel: [kh, kw],
        stride: conv.stride,
        padding: symmetric(&conv.padding)?,
    };
    (supported && geometry.output().is_some()).then_some(geometry)
}

/// The host path's view of `pool` applied to `x`, when it supports it.
fn pool_geometry<B: Backend>(pool: &MaxPool2d, x: &Tensor<B, 4>) -> Option<PoolGeometry> {
    let [n, c, h, w] = x.dims();
    let supported = pool.dilation == [1, 1] && !pool.ceil_mode && x.dtype() == DType::F32;
    let geometry = PoolGeometry {
        planes: n * c,
        input: [h, w],
        kernel: pool.kernel_size,
        stride: pool.stride,
        padding: symmetric(&pool.padding)?,
    };
    (supported && geometry.output().is_some()).then_some(geometry)
}

#[cfg(all(test, feature = "tch"))]
mod libtorch_tests;

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::TensorData;

    use super::*;

    type Host = Autodiff<Flex>;
    type Reference = Autodiff<NdArray>;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 37 + seed * 11) % 29) as f32 - 14.0) / 9.0)
            .collect()
    }

    fn tensor<B: Backend>(values: &[f32], shape: [usize; 4]) -> Tensor<B, 4> {
        Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
    }

    fn vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{what}[{k}]: {x} vs {y}"
            );
        }
    }

    /// `conv` (host path) and `conv.forward` (burn's) on `B`, with the given weights: output,
    /// ∂L/∂x and ∂L/∂w for L = Σ out · r with r fixed.
    fn conv_run<B: burn::tensor::backend::AutodiffBackend>(
        config: &Conv2dConfig,
        x: &[f32],
        x_shape: [usize; 4],
        host: bool,
    ) -> [Vec<f32>; 3] {
        let mut conv = config.init::<B>(&Default::default());
        let w_shape = conv.weight.dims();
        let w = values(w_shape.iter().product(), 2);
        conv.weight = conv.weight.map(|_| tensor::<B>(&w, w_shape).require_grad());
        let x = tensor::<B>(x, x_shape).require_grad();
        let y = if host {
            conv2d(&conv, x.clone())
        } else {
            conv.forward(x.clone())
        };
        let r = tensor::<B>(&values(y.dims().iter().product(), 3), y.dims());
        let grads = (y.clone() * r).sum().backward();
        let gx = x.grad(&grads).unwrap();
        let gw = conv.weight.val().grad(&grads).unwrap();
        [vec(y), vec(gx), vec(gw)]
    }

    /// On `Autodiff<Flex>` the host convolution gives burn's values and gradients (computed on
    /// ndarray, an implementation of its own), for the convolutions of the small CNN and of
    /// ResNet's blocks; on `Flex` alone (inference) the same values.
    #[test]
    fn host_convolution_matches_burns() {
        let _turn = crate::backend_turn();
        let cases = [
            (3, 32, 3, 1, 1, [4, 3, 8, 8]),
            (8, 16, 3, 2, 1, [3, 8, 9, 7]),
            (8, 16, 1, 2, 0, [3, 8, 9, 7]),
            (5, 6, 3, 1, 0, [2, 5, 6, 6]),
        ];
        for (c_in, c_out, k, s, p, shape) in cases {
            let config = Conv2dConfig::new([c_in, c_out], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(false);
            let x = values(shape.iter().product(), 1);
            let on_host = config.init::<Host>(&Default::default());
            assert!(
                conv_geometry(&on_host, &tensor::<Host>(&x, shape)).is_some(),
                "host path"
            );
            let host = conv_run::<Host>(&config, &x, shape, true);
            let reference = conv_run::<Reference>(&config, &x, shape, false);
            for (what, (a, b)) in ["output", "dL/dx", "dL/dw"]
                .iter()
                .zip(host.iter().zip(&reference))
            {
                assert_close(a, b, &format!("k {k} s {s} p {p}: {what}"));
            }
            let conv = config.init::<Flex>(&Default::default());
            let inference = vec(conv2d(&conv, tensor::<Flex>(&x, shape)));
            let inner = vec(conv.forward(tensor::<Flex>(&x, shape)));
            assert_close(&inference, &inner, "inference on Flex");
        }
    }

    /// The host path is the one taken on flex, and only there.
    #[test]
    fn the_host_path_is_taken_on_flex_only() {
        let _turn = crate::backend_turn();
        let config = Conv2dConfig::new([2, 3], [3, 3]).with_bias(false);
        let g = |dims: [usize; 4]| ConvGeometry {
            batch: dims[0],
            channels: dims[1],
            input: [dims[2], dims[3]],
            out_channels: 3,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [0, 0],
        };
        let shape = [1, 2, 5, 5];
        let x = values(50, 1);
        let on_host =
            |w: Tensor<Host, 4>| flex::conv2d(tensor::<Host>(&x, shape), w, g(shape)).is_ok();
        assert!(on_host(
            config.init::<Host>(&Default::default()).weight.val()
        ));
        let w = config.init::<Reference>(&Default::default()).weight.val();
        assert!(flex::conv2d(tensor::<Reference>(&x, shape), w, g(shape)).is_err());
        let with_bias = Conv2dConfig::new([2, 3], [3, 3]).init::<Host>(&Default::default());
        assert!(
            conv_geometry(&with_bias, &tensor::<Host>(&x, shape)).is_none(),
            "bias: burn's"
        );
        let pool = MaxPool2dConfig::new([2, 2]).init();
        let empty = Tensor::<Host, 4>::zeros([0, 3, 4, 4], &Default::default());
        assert!(pool_geometry(&pool, &empty).is_none(), "no planes: burn's");
        let conv = Conv2dConfig::new([3, 4], [3, 3])
            .with_bias(false)
            .init::<Host>(&Default::default());
        assert!(conv_geometry(&conv, &empty).is_some());
        assert_eq!(conv2d(&conv, empty).dims(), [0, 4, 2, 2], "an empty batch");
    }

    /// Max-pools of the small CNN (2×2 / 2) and of ResNet's ImageNet stem (3×3 / 2, padding 1):
    /// values and ∂L/∂x against burn's on ndarray.
    #[test]
    fn host_max_pool_matches_burns() {
        let configs = [
            MaxPool2dConfig::new([2, 2]),
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
        ];
        for config in configs {
            let shape = [2, 3, 9, 8];
            // 5 distinct values: ties in most windows, where the first maximum takes the gradient.
            let x: Vec<f32> = values(shape.iter().product(), 4)
                .iter()
                .map(|v| v.round())
                .collect();
            let pool = config.init();
            assert!(
                pool_geometry(&pool, &tensor::<Host>(&x, shape)).is_some(),
                "host path"
            );
            let run = |host: bool| -> [Vec<f32>; 2] {
                if host {
                    let xt = tensor::<Host>(&x, shape).require_grad();
                    let y = max_pool2d(&config.init(), xt.clone());
                    let r = tensor::<Host>(&values(y.dims().iter().product(), 5), y.dims());
                    let grads = (y.clone() * r).sum().backward();
                    [vec(y), vec(xt.grad(&grads).unwrap())]
                } else {
                    let xt = tensor::<Reference>(&x, shape).require_grad();
                    let y = config.init().forward(xt.clone());
                    let r = tensor::<Reference>(&values(y.dims().iter().product(), 5), y.dims());
                    let grads = (y.clone() * r).sum().backward();
                    [vec(y), vec(xt.grad(&grads).unwrap())]
                }
            };
            let (host, reference) = (run(true), run(false));
            assert_close(&host[0], &reference[0], &format!("{config:?}: output"));
            assert_close(&host[1], &reference[1], &format!("{config:?}: dL/dx"));
        }
    }
}
