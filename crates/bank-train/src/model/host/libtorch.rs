//! The LibTorch path: conv → BatchNorm (→ ReLU) as one autodiff operation of
//! `Autodiff<LibTorch>` whose forward and backward are ATen's own, and ReLU with ATen's
//! `threshold_backward`.
//!
//! burn-tch 0.21 overrides neither the convolution's backward nor ReLU's, so burn's generic
//! formulas run (a transposed convolution, a convolution over swapped axes, `le` + `masked_fill`),
//! and burn 0.21 has no BatchNorm operation for a backend to provide, so ours
//! ([`BatchNorm2d`](crate::model::BatchNorm2d)) is a dozen element-wise operations; together
//! they kept the small CNN's step at about 0.75× PyTorch's (`docs/results.md`, "Where tch loses
//! to PyTorch"). tch 0.22 binds neither `convolution_backward` nor `native_batch_norm_backward`,
//! so the backward goes through LibTorch's own autograd: the forward runs on detached leaves
//! that require a gradient, and the backward asks ATen for the gradient of ⟨output, ∂L/∂output⟩
//! with respect to them (a vector-Jacobian product: tch's `run_backward` seeds its roots with
//! ones, so the root is that scalar). This costs one dot product and one scaling over the
//! output, where the graph behind it is PyTorch's own (oneDNN's convolution backward, the fused
//! BatchNorm kernels).
//!
//! burn-tch writes a tensor in place when it believes it holds the tensor's storage alone (an
//! `Arc` count); the graph reads its inputs and its output during the backward, so the
//! operation's state keeps burn's handles to them, which makes burn see them shared.

use bank_core::same_type::is;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::libtorch::TchTensor;
use burn::backend::{Autodiff, LibTorch};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;

use super::{ConvGeometry, same};
use crate::model::BatchNorm2d;

type Plain = LibTorch;
type Trained = Autodiff<LibTorch>;

/// The LibTorch primitive of a tensor on `LibTorch`.
fn plain<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> TchTensor {
    same::<_, Tensor<Plain, D>>(tensor)
        .into_primitive()
        .tensor()
}

/// The autodiff primitive of a tensor on `Autodiff<LibTorch>`.
fn tracked<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> FloatTensor<Trained> {
    same::<_, Tensor<Trained, D>>(tensor)
        .into_primitive()
        .tensor()
}

/// A tensor on `B` (`LibTorch`) from its primitive.
fn wrap_plain<B: Backend, const D: usize>(primitive: TchTensor) -> Tensor<B, D> {
    same(Tensor::<Plain, D>::from_primitive(TensorPrimitive::Float(
        primitive,
    )))
}

/// A tensor on `B` (`Autodiff<LibTorch>`) from its primitive.
fn wrap_tracked<B: Backend, const D: usize>(primitive: FloatTensor<Trained>) -> Tensor<B, D> {
    same(Tensor::<Trained, D>::from_primitive(
        TensorPrimitive::Float(primitive),
    ))
}

/// The BatchNorm settings ATen's `batch_norm` takes besides its tensors.
#[derive(Clone, Copy, Debug)]
struct Norm {
    training: bool,
    momentum: f64,
    epsilon: f64,
}

/// conv → BatchNorm (→ ReLU) in ATen, on tch tensors. In training, `running` is updated in
/// place (PyTorch's rule: momentum, unbiased variance), so it must be a copy.
///
/// # Shapes
/// - x: `[N, C_in, H, W]`; weight: `[C_out, C_in, kh, kw]`; γ, β and `running`: `[C_out]`
/// - output: `[N, C_out, H_out, W_out]`
fn unit_forward(
    x: &tch::Tensor,
    [weight, gamma, beta]: [&tch::Tensor; 3],
    running: [&tch::Tensor; 2],
    g: &ConvGeometry,
    norm: Norm,
    relu: bool,
) -> tch::Tensor {
    let to_i64 = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
    let y = x.conv2d(
        weight,
        None::<tch::Tensor>,
        to_i64(g.stride),
        to_i64(g.padding),
        [1, 1],
        1,
    );
    // cuDNN where ATen would take it (as `torch.nn.functional.batch_norm` does); on the CPU
    // ATen's own kernels either way.
    let y = y.batch_norm(
        Some(gamma),
        Some(beta),
        Some(running[0]),
        Some(running[1]),
        norm.training,
        norm.momentum,
        norm.epsilon,
        true,
    );
    if relu { y.relu() } else { y }
}

/// conv → BatchNorm (→ ReLU) on `Autodiff<LibTorch>` (batch statistics, running ones updated) or
/// `LibTorch` (running statistics); `Err(x)` on any other backend, and in training when a
/// channel has fewer than 2 values per batch (N · H_out · W_out < 2: ATen's unbiased running
/// variance would divide by 0, where the generic layer guards it).
///
/// # Shapes
/// - x: `[N, C_in, H, W]`; weight: `[C_out, C_in, kh, kw]`
/// - output: `[N, C_out, H_out, W_out]`
pub(super) fn conv_bn<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bn: &BatchNorm2d<B>,
    g: ConvGeometry,
    relu: bool,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    if is::<B, Plain>() {
        return Ok(conv_bn_inference(x, weight, bn, &g, relu));
    }
    let [ho, wo] = g.output().unwrap_or([0, 0]);
    if !is::<B, Trained>() || g.batch * ho * wo < 2 {
        return Err(x);
    }
    Ok(conv_bn_trained(x, weight, bn, g, relu))
}

/// [`conv_bn`] on `LibTorch`: the running statistics, no graph.
///
/// # Shapes
/// - as [`conv_bn`]
fn conv_bn_inference<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bn: &BatchNorm2d<B>,
    g: &ConvGeometry,
    relu: bool,
) -> Tensor<B, 4> {
    let norm = Norm {
        training: false,
        momentum: bn.momentum(),
        epsilon: bn.epsilon(),
    };
    let w = plain(weight).tensor;
    let [gamma, beta, mean, var] = [
        bn.gamma.val(),
        bn.beta.val(),
        bn.running_mean.value(),
        bn.running_var.value(),
    ]
    .map(|t| plain(t).tensor);
    let y = unit_forward(
        &plain(x).tensor,
        [&w, &gamma, &beta],
        [&mean, &var],
        g,
        norm,
        relu,
    );
    wrap_plain(TchTensor::new(y))
}

/// [`conv_bn`] on `Autodiff<LibTorch>`: ATen's graph on leaves sharing burn's storage, the
/// running statistics updated, and the autodiff op that will run the graph's backward.
///
/// # Shapes
/// - as [`conv_bn`]
fn conv_bn_trained<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bn: &BatchNorm2d<B>,
    g: ConvGeometry,
    relu: bool,
) -> Tensor<B, 4> {
    let norm = Norm {
        training: true,
        momentum: bn.momentum(),
        epsilon: bn.epsilon(),
    };
    let inputs = [
        tracked(x),
        tracked(weight),
        tracked(bn.gamma.val()),
        tracked(bn.beta.val()),
    ];
    let running = [bn.running_mean.value_sync(), bn.running_var.value_sync()]
        .map(|t| tracked(t).primitive.tensor.copy());
    let wanted = inputs.each_ref().map(|t| !t.node.requirement.is_none());
    let leaves: [TchTensor; 4] = std::array::from_fn(|i| {
        TchTensor::new(
            inputs[i]
                .primitive
                .tensor
                .detach()
                .set_requires_grad(wanted[i]),
        )
    });
    let y = tch::with_grad(|| {
        unit_forward(
            &leaves[0].tensor,
            [&leaves[1].tensor, &leaves[2].tensor, &leaves[3].tensor],
            [&running[0], &running[1]],
            &g,
            norm,
            relu,
        )
    });
    update_running(bn, &running);
    let graph = UnitGraph {
        root: TchTensor::new(y),
        leaves: std::array::from_fn(|i| wanted[i].then(|| leaves[i].clone())),
        held: inputs.each_ref().map(|t| t.primitive.clone()),
        output: None,
    };
    wrap_tracked(finish(inputs, graph))
}

/// Gives `bn` the running statistics ATen updated, as copies: ATen's graph keeps the tensors it
/// updated (its BatchNorm backward checks that they were not written since), and burn-tch may
/// write a running-statistics tensor it holds alone in place at the next update.
fn update_running<B: Backend>(bn: &BatchNorm2d<B>, [mean, var]: &[tch::Tensor; 2]) {
    let state = |t: &tch::Tensor| {
        let inner =
            Tensor::<Plain, 1>::from_primitive(TensorPrimitive::Float(TchTensor::new(t.copy())));
        same::<_, Tensor<B, 1>>(Tensor::<Trained, 1>::from_inner(inner))
    };
    bn.running_mean.update(state(mean));
    bn.running_var.update(state(var));
}

/// The output of [`conv_bn_trained`] as an autodiff tensor, with [`UnitBackward`] recorded when
/// a parent wants a gradient. Burn's handle to the output is held in the graph too.
fn finish(inputs: [FloatTensor<Trained>; 4], mut graph: UnitGraph) -> FloatTensor<Trained> {
    let output = TchTensor::new(graph.root.tensor.detach());
    match UnitBackward
        .prepare::<NoCheckpointing>(inputs.map(|t| t.node))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            graph.output = Some(output.clone());
            prep.finish(graph, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// What [`UnitBackward`] needs: ATen's graph and the burn handles it reads.
#[derive(Clone, Debug)]
struct UnitGraph {
    /// The output with ATen's graph behind it.
    root: TchTensor,
    /// The leaves x, weight, γ, β of that graph, where burn wants their gradient.
    leaves: [Option<TchTensor>; 4],
    /// Burn's handles to the inputs x, weight, γ, β, held so that burn-tch never writes them in
    /// place while the graph still reads them.
    held: [TchTensor; 4],
    /// Burn's handle to the output, held for the same reason (ATen's ReLU reads it).
    output: Option<TchTensor>,
}

/// The backward of [`conv_bn`]: ATen's, through LibTorch's autograd.
#[derive(Debug)]
struct UnitBackward;

impl Backward<Plain, 4> for UnitBackward {
    type State = UnitGraph;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Plain>(&ops.node);
        let UnitGraph {
            root,
            leaves,
            held,
            output,
        } = ops.state;
        let wanted: Vec<&tch::Tensor> = leaves.iter().flatten().map(|t| &t.tensor).collect();
        let found = vjp(&root.tensor, &grad.tensor, &wanted);
        // ATen's graph is spent: burn-tch may write what it holds again.
        drop((held, output));
        // A leaf is there exactly where its parent wants a gradient (both from the node's
        // requirement), in the same order.
        let parents = ops.parents.iter().flatten();
        for (node, gradient) in parents.zip(found) {
            grads.register::<Plain>(node.id, TchTensor::new(gradient));
        }
    }
}

/// `∂⟨root, grad⟩/∂leaves` by LibTorch's autograd: the vector-Jacobian product of `root`'s graph
/// with `grad`, one tensor per leaf.
fn vjp(root: &tch::Tensor, grad: &tch::Tensor, leaves: &[&tch::Tensor]) -> Vec<tch::Tensor> {
    tch::with_grad(|| {
        let product = root.flatten(0, -1).dot(&grad.flatten(0, -1).detach());
        tch::Tensor::run_backward(&[product], leaves, false, false)
    })
}

/// ReLU on `Autodiff<LibTorch>` with ATen's `threshold_backward`; `Err(x)` elsewhere (burn's
/// ReLU on `LibTorch` is already ATen's).
///
/// # Shapes
/// - input and output: any, the same
pub(super) fn relu<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !is::<B, Trained>() {
        return Err(x);
    }
    let x = tracked(x);
    let y = TchTensor::new(x.primitive.tensor.relu());
    let y = match ReluBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Ok(wrap_tracked(y))
}

/// ReLU's backward: `∂L/∂out` where the output is positive, else 0. The state is the output
/// (held, so burn-tch never overwrites it).
#[derive(Debug)]
struct ReluBackward;

impl Backward<Plain, 1> for ReluBackward {
    type State = TchTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<Plain>(&ops.node);
        if let Some(node) = node_x {
            let gx = ops.state.tensor.threshold_backward(&grad.tensor, 0.0);
            grads.register::<Plain>(node.id, TchTensor::new(gx));
        }
    }
}
