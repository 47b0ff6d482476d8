//! The host path on burn-flex: the run-time check of the backend, and the two operations as
//! autodiff operations of `Autodiff<Flex>` with their own backward.

use std::sync::Arc;

use bank_core::same_type::is;
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

use super::{ConvGeometry, PoolGeometry, same};

type Trained = Autodiff<Flex>;

/// The flex primitive of a tensor on `Flex`.
fn primitive<B: Backend>(tensor: Tensor<B, 4>) -> FlexTensor {
    same::<_, Tensor<Flex, 4>>(tensor).into_primitive().tensor()
}

/// A tensor on `B` (which is `Flex` or `Autodiff<Flex>`) from its primitive.
fn wrap<B: Backend, P: 'static>(primitive: P) -> Tensor<B, 4> {
    if is::<B, Flex>() {
        same(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(
            same(primitive),
        )))
    } else {
        same(Tensor::<Trained, 4>::from_primitive(
            TensorPrimitive::Float(same(primitive)),
        ))
    }
}

/// The autodiff primitive of a tensor on `Autodiff<Flex>`.
fn tracked<B: Backend>(tensor: Tensor<B, 4>) -> FloatTensor<Trained> {
    same::<_, Tensor<Trained, 4>>(tensor)
        .into_primitive()
        .tensor()
}

/// A flex tensor laid out row-major (copied only when its layout is not).
fn host(tensor: &FlexTensor) -> FlexTensor {
    tensor.to_contiguous()
}

/// The `f32` elements of a tensor returned by [`host`] (the dispatch admits `f32` only).
fn elements(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("an f32 tensor, made contiguous by `host`")
}

/// A row-major flex tensor of `shape` holding `values` (moved, not copied).
fn flex_tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The convolution's output shape `[N, C_out, Ho, Wo]`.
fn conv_shape(g: &ConvGeometry) -> [usize; 4] {
    let [ho, wo] = g.output().unwrap_or([0, 0]);
    [g.batch, g.out_channels, ho, wo]
}

/// The convolution's forward on flex primitives.
fn conv_forward(g: &ConvGeometry, x: &FlexTensor, weight: &FlexTensor) -> FlexTensor {
    let (x, weight) = (host(x), host(weight));
    flex_tensor(g.forward(elements(&x), elements(&weight)), conv_shape(g))
}

/// The convolution on `Autodiff<Flex>` or `Flex`; `Err(x)` on any other backend.
pub(super) fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    g: ConvGeometry,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    if is::<B, Flex>() {
        return Ok(wrap::<B, _>(conv_forward(
            &g,
            &primitive(x),
            &primitive(weight),
        )));
    }
    if !is::<B, Trained>() {
        return Err(x);
    }
    let (x, weight) = (tracked(x), tracked(weight));
    let y = match HostConv2d
        .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = conv_forward(&g, &x.primitive, &weight.primitive);
            prep.finish((x.primitive, weight.primitive, g), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(conv_forward(&g, &x.primitive, &weight.primitive)),
    };
    Ok(wrap::<B, _>(y))
}

/// The convolution's backward: `∂L/∂x` and `∂L/∂weight` from `∂L/∂out`.
#[derive(Debug)]
struct HostConv2d;

impl Backward<Flex, 2> for HostConv2d {
    type State = (FlexTensor, FlexTensor, ConvGeometry);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = host(&grads.consume::<Flex>(&ops.node));
        let (x, weight, g) = ops.state;
        if let Some(node) = node_x {
            let weight = host(&weight);
            let gx = g.input_grad(elements(&weight), elements(&grad));
            let shape = [g.batch, g.channels, g.input[0], g.input[1]];
            grads.register::<Flex>(node.id, flex_tensor(gx, shape));
        }
        if let Some(node) = node_weight {
            let x = host(&x);
            let gw = g.weight_grad(elements(&x), elements(&grad));
            let shape = [g.out_channels, g.channels, g.kernel[0], g.kernel[1]];
            grads.register::<Flex>(node.id, flex_tensor(gw, shape));
        }
    }
}

/// The max-pool's output shape `[N, C, Ho, Wo]` for input `[N, C, ..]`.
fn pool_shape(g: &PoolGeometry, [n, c]: [usize; 2]) -> [usize; 4] {
    let [ho, wo] = g.output().unwrap_or([0, 0]);
    [n, c, ho, wo]
}

/// The max-pool on `Autodiff<Flex>` or `Flex`; `Err(x)` on any other backend.
pub(super) fn max_pool2d<B: Backend>(
    x: Tensor<B, 4>,
    g: PoolGeometry,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [n, c, _, _] = x.dims();
    if is::<B, Flex>() {
        let (y, _) = g.forward(elements(&host(&primitive(x))));
        return Ok(wrap::<B, _>(flex_tensor(y, pool_shape(&g, [n, c]))));
    }
    if !is::<B, Trained>() {
        return Err(x);
    }
    let x = tracked(x);
    let (y, arg) = g.forward(elements(&host(&x.primitive)));
    let y = flex_tensor(y, pool_shape(&g, [n, c]));
    let y = match HostMaxPool2d
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((Arc::new(arg), g, [n, c]), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Ok(wrap::<B, _>(y))
}

/// The max-pool's backward: `∂L/∂out` routed to each window's maximum.
#[derive(Debug)]
struct HostMaxPool2d;

impl Backward<Flex, 1> for HostMaxPool2d {
    type State = (Arc<Vec<u32>>, PoolGeometry, [usize; 2]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = host(&grads.consume::<Flex>(&ops.node));
        let (arg, g, [n, c]) = ops.state;
        if let Some(node) = node_x {
            let gx = g.backward(elements(&grad), &arg);
            let shape = [n, c, g.input[0], g.input[1]];
            grads.register::<Flex>(node.id, flex_tensor(gx, shape));
        }
    }
}
