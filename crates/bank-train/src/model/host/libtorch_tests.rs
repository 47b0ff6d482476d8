//! The LibTorch path (`libtorch`) against burn's layers on ndarray, an implementation of its
//! own: values, every gradient and the running statistics.

use burn::backend::{Autodiff, LibTorch, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;

use super::*;
use crate::model::ConvBn;
use crate::model::PYTORCH_CONV_INIT;

type Torch = Autodiff<LibTorch>;
type Reference = Autodiff<NdArray>;

fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 37 + seed * 11) % 29) as f32 - 14.0) / 9.0)
        .collect()
}

fn tensor<B: Backend, const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
}

fn vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 2e-4 * scale, "{what}[{k}]: {x} vs {y}");
    }
}

/// A conv → BatchNorm unit with fixed weights, γ and β on `B`.
fn unit<B: Backend>(c_in: usize, c_out: usize, k: usize, stride: usize) -> ConvBn<B> {
    let mut unit = ConvBn::with_init(
        c_in,
        c_out,
        k,
        stride,
        PYTORCH_CONV_INIT,
        &Default::default(),
    );
    let w_shape = unit.conv.weight.dims();
    let w = values(w_shape.iter().product(), 2);
    unit.conv.weight = unit
        .conv
        .weight
        .map(|_| tensor::<B, 4>(&w, w_shape).require_grad());
    let gamma: Vec<f32> = (0..c_out).map(|i| 0.5 + i as f32 / 4.0).collect();
    let beta: Vec<f32> = (0..c_out).map(|i| i as f32 / 3.0 - 0.5).collect();
    unit.bn.gamma = unit
        .bn
        .gamma
        .map(|_| tensor::<B, 1>(&gamma, [c_out]).require_grad());
    unit.bn.beta = unit
        .bn
        .beta
        .map(|_| tensor::<B, 1>(&beta, [c_out]).require_grad());
    unit
}

/// Two units used as in a residual block, on `B`: `relu(h + (a + u2(a)))` with h = 2x and
/// a = u1_relu(h) (h and a read again after a unit consumed them), then
/// L = Σ out · r. Returns the output, ∂L/∂x, the gradients of both units' weight, γ and β, and
/// the first unit's running mean and variance after the step, then its output in inference.
fn block_run<B: AutodiffBackend>(x: &[f32], shape: [usize; 4]) -> Vec<Vec<f32>> {
    let c = shape[1];
    let (u1, u2) = (unit::<B>(c, c, 3, 1), unit::<B>(c, c, 1, 1));
    let xt = tensor::<B, 4>(x, shape).require_grad();
    // As in a residual block, a unit consumes its input and a clone of it is added after; and
    // a unit's output is added to after the next unit read a copy. Without the units holding
    // burn's handles, burn-tch would add in place into `a` (ATen's ReLU reads it in the
    // backward) and into `identity` (the convolution's saved input).
    let h = xt.clone().mul_scalar(2.0);
    let identity = h.clone();
    let a = u1.forward_relu(h);
    let b = u2.forward(a.clone().mul_scalar(1.0));
    let y = relu(identity + (a + b));
    let r = tensor::<B, 4>(&values(y.dims().iter().product(), 3), y.dims());
    let grads = (y.clone() * r).sum().backward();
    let mut out = vec![vec(y), vec(xt.grad(&grads).unwrap())];
    for u in [&u1, &u2] {
        out.push(vec(u.conv.weight.val().grad(&grads).unwrap()));
        out.push(vec(u.bn.gamma.val().grad(&grads).unwrap()));
        out.push(vec(u.bn.beta.val().grad(&grads).unwrap()));
    }
    out.push(vec(u1.bn.running_mean.value_sync()));
    out.push(vec(u1.bn.running_var.value_sync()));
    let inference = u1.valid();
    out.push(vec(
        inference.forward_relu(tensor::<B::InnerBackend, 4>(x, shape))
    ));
    out
}

/// On `Autodiff<LibTorch>` the unit is ATen's graph; its values, the gradients of the input,
/// weights, γ and β, the running statistics and the inference output match burn's layers on
/// ndarray, through a residual sum that reads the input again.
#[test]
fn libtorch_units_match_burns_layers() {
    let shape = [3, 4, 7, 6];
    let x = values(shape.iter().product(), 1);
    let probe = unit::<Torch>(4, 6, 3, 1);
    let on_torch = conv_bn(&probe.conv, &probe.bn, tensor::<Torch, 4>(&x, shape), true);
    assert!(on_torch.is_ok(), "Autodiff<LibTorch> takes ATen's unit");
    let on_ndarray = unit::<Reference>(4, 6, 3, 1);
    assert!(
        conv_bn(
            &on_ndarray.conv,
            &on_ndarray.bn,
            tensor::<Reference, 4>(&x, shape),
            true
        )
        .is_err()
    );

    let torch = block_run::<Torch>(&x, shape);
    let reference = block_run::<Reference>(&x, shape);
    let names = [
        "output",
        "dL/dx",
        "unit 1 dL/dw",
        "unit 1 dL/dγ",
        "unit 1 dL/dβ",
        "unit 2 dL/dw",
        "unit 2 dL/dγ",
        "unit 2 dL/dβ",
        "running mean",
        "running var",
        "inference",
    ];
    assert_eq!(torch.len(), names.len());
    for ((what, a), b) in names.iter().zip(&torch).zip(&reference) {
        assert_close(a, b, what);
    }
}

/// A unit whose input is not tracked (the images) and whose parameters are: only the
/// parameters get gradients, and they match.
#[test]
fn libtorch_unit_with_an_untracked_input() {
    let shape = [2, 3, 5, 5];
    let x = values(shape.iter().product(), 4);
    let run = |torch: bool| -> Vec<Vec<f32>> {
        fn go<B: AutodiffBackend>(x: &[f32], shape: [usize; 4]) -> Vec<Vec<f32>> {
            let u = unit::<B>(3, 5, 3, 2);
            let y = u.forward_relu(tensor::<B, 4>(x, shape));
            let r = tensor::<B, 4>(&values(y.dims().iter().product(), 6), y.dims());
            let grads = (y.clone() * r).sum().backward();
            vec![
                vec(y),
                vec(u.conv.weight.val().grad(&grads).unwrap()),
                vec(u.bn.gamma.val().grad(&grads).unwrap()),
                vec(u.bn.beta.val().grad(&grads).unwrap()),
            ]
        }
        if torch {
            go::<Torch>(&x, shape)
        } else {
            go::<Reference>(&x, shape)
        }
    };
    for ((what, a), b) in ["output", "dL/dw", "dL/dγ", "dL/dβ"]
        .iter()
        .zip(run(true))
        .zip(run(false))
    {
        assert_close(&a, &b, what);
    }
}

/// Two forwards of one unit before one backward (as two views through the same network, or
/// gradient accumulation): the second forward reads and updates the running statistics that
/// the first one's graph still holds. A frozen convolution (no gradient for its weight) before a
/// tracked input is in the middle of the parents. Against ndarray.
#[test]
fn libtorch_unit_twice_before_one_backward_and_frozen_weights() {
    fn go<B: AutodiffBackend>(x: &[f32], shape: [usize; 4]) -> Vec<Vec<f32>> {
        let mut u = unit::<B>(3, 4, 3, 1);
        u.conv.weight = u.conv.weight.map(|w| w.set_require_grad(false));
        let x1 = tensor::<B, 4>(x, shape).require_grad();
        let x2 = x1.clone().mul_scalar(-0.5).add_scalar(0.25);
        let (y1, y2) = (u.forward_relu(x1.clone()), u.forward(x2));
        let r1 = tensor::<B, 4>(&values(y1.dims().iter().product(), 7), y1.dims());
        let r2 = tensor::<B, 4>(&values(y2.dims().iter().product(), 8), y2.dims());
        let grads = ((y1.clone() * r1).sum() + (y2.clone() * r2).sum()).backward();
        assert!(
            u.conv.weight.val().grad(&grads).is_none(),
            "a frozen weight"
        );
        vec![
            vec(y1),
            vec(y2),
            vec(x1.grad(&grads).unwrap()),
            vec(u.bn.gamma.val().grad(&grads).unwrap()),
            vec(u.bn.beta.val().grad(&grads).unwrap()),
            vec(u.bn.running_mean.value_sync()),
            vec(u.bn.running_var.value_sync()),
        ]
    }
    let shape = [2, 3, 6, 5];
    let x = values(shape.iter().product(), 9);
    let names = [
        "first output",
        "second output",
        "dL/dx",
        "dL/dγ",
        "dL/dβ",
        "running mean",
        "running var",
    ];
    let (torch, reference) = (go::<Torch>(&x, shape), go::<Reference>(&x, shape));
    for ((what, a), b) in names.iter().zip(&torch).zip(&reference) {
        assert_close(a, b, what);
    }
}
