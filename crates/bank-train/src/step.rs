//! One training step: forward, the method's loss against the bank, backward, SGD, bank update.

use bank_core::MemoryBank;
use bank_data::Batch;
use bank_losses::{ConsistencyLoss, NceLoss, Positives, SoftmaxObjective, nce_similarities};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::Result;
use crate::state::TrainState;

/// The gradients of the step's loss and its value (on the inner backend).
pub(crate) type LossGrads<B> = (
    <B as AutodiffBackend>::Gradients,
    Tensor<<B as AutodiffBackend>::InnerBackend, 1>,
);

/// NCE: autodiff through the noise and positive similarities (`K + 1` columns, not `N`).
fn nce_grads<B: AutodiffBackend>(
    nce: &mut NceLoss<B>,
    bank: &MemoryBank<B>,
    batch: &Batch<B>,
    features: Tensor<B, 2>,
    device: &B::Device,
) -> Result<LossGrads<B>> {
    let noise = nce.sample_noise(batch.layout.rows(), device);
    let (pos, neg) = nce_similarities(bank, features, batch.indices.clone(), noise)?;
    let loss = nce.forward(pos, neg)?;
    Ok((loss.backward(), loss.inner()))
}

/// The full softmax over the bank with merged positives (once merging is on) or the multi-view
/// instance loss, plus λ·consistency: value and `∂L/∂features` in closed form on the inner
/// backend ([`SoftmaxObjective`]), then one backward pass from the features into the model
/// through the surrogate `Σ features ⊙ ∂L/∂features`, whose gradient is exactly that.
///
/// The gradient is multiplied by `share` (1 on one device; a replica's fraction of the batch's
/// samples in data-parallel training, so that the replicas' summed gradients are the gradient
/// of the whole batch's mean loss). The returned loss is not scaled.
pub(crate) fn softmax_grads<B: AutodiffBackend>(
    target: SoftmaxTarget<'_, B>,
    batch: &Batch<B>,
    features: Tensor<B, 2>,
    tau: f64,
    share: f64,
) -> Result<LossGrads<B>> {
    let objective = SoftmaxObjective::new(tau)?
        .with_consistency(target.consistency)
        .with_block_rows(target.block_rows);
    let positives = match target.groups {
        Some(g) => Positives::Groups(g.clone().inner()),
        None => Positives::Own,
    };
    let out = objective.eval(
        &target.bank.inner(),
        features.clone().inner(),
        batch.indices.clone().inner(),
        &positives,
        batch.layout,
    )?;
    Ok((backward_from(features, out.features_grad, share), out.loss))
}

/// The model's gradients for a loss whose gradient with respect to `features` is
/// `share · features_grad`: one backward pass through the surrogate `Σ features ⊙ (share ·
/// features_grad)`, whose gradient is exactly that.
///
/// # Shapes
/// - `features`, `features_grad`: `[M, D]`
pub(crate) fn backward_from<B: AutodiffBackend>(
    features: Tensor<B, 2>,
    features_grad: Tensor<B::InnerBackend, 2>,
    share: f64,
) -> B::Gradients {
    let grad = Tensor::from_inner(features_grad);
    let grad = if share == 1.0 {
        grad
    } else {
        grad.mul_scalar(share)
    };
    (features * grad).sum().backward()
}

/// What the softmax objective of a step is computed against: the bank, the merge groups and
/// the consistency term.
#[derive(Clone, Copy)]
pub(crate) struct SoftmaxTarget<'a, B: AutodiffBackend> {
    /// The bank (a constant of the step).
    pub bank: &'a MemoryBank<B>,
    /// The group id of every bank row, once merging is on.
    pub groups: Option<&'a Tensor<B, 1, Int>>,
    /// λ·consistency, when on.
    pub consistency: Option<ConsistencyLoss>,
    /// Bank rows per block of the similarities (0: all at once).
    pub block_rows: usize,
}

impl<'a, B: AutodiffBackend> SoftmaxTarget<'a, B> {
    /// The target of `state`.
    pub(crate) fn of(state: &'a TrainState<B>) -> Self {
        Self {
            bank: &state.bank,
            groups: state.groups.as_ref(),
            consistency: state.consistency,
            block_rows: state.block_rows,
        }
    }
}

/// Trains on `batch` at learning rate `lr`; returns the new state and the loss (the one
/// device→host read of the step). The bank is updated once per sample from the mean of its
/// detached views. The state is taken by value so that the optimiser owns the only handle on the
/// parameters it updates.
///
/// # Errors
/// Shape or index errors from the losses and the bank.
pub fn train_step<B: AutodiffBackend>(
    mut state: TrainState<B>,
    batch: Batch<B>,
    lr: f64,
    tau: f64,
    device: &B::Device,
) -> Result<(TrainState<B>, f64)> {
    state.holds_whole_bank()?;
    let features = state.model.forward(batch.images.clone());
    let (grads, loss) = match state.nce.as_mut() {
        Some(nce) => nce_grads(nce, &state.bank, &batch, features.clone(), device)?,
        None => softmax_grads(
            SoftmaxTarget::of(&state),
            &batch,
            features.clone(),
            tau,
            1.0,
        )?,
    };
    let grads = GradientsParams::from_grads(grads, &state.model);
    let model = state.model;
    state.model = state.optim.step(lr, model, grads);
    state
        .bank
        .update(batch.indices, features.detach(), batch.layout.views)?;
    state.step += 1;
    Ok((state, loss.into_scalar().elem::<f64>()))
}

#[cfg(test)]
mod tests {
    use bank_core::ViewLayout;
    use bank_losses::{BankLogProbs, merged_positive_loss, multi_view_loss};
    use burn::module::{Module, ModuleVisitor, Param};

    use super::*;
    use crate::TrainConfig;

    type A = burn::backend::Autodiff<burn::backend::NdArray>;

    /// Every float parameter's gradient, flattened, in visiting order.
    struct Grads<'a>(&'a <A as AutodiffBackend>::Gradients, Vec<f32>);

    impl ModuleVisitor<A> for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
            if let Some(g) = param.val().grad(self.0) {
                self.1
                    .extend(g.into_data().convert::<f32>().to_vec::<f32>().unwrap());
            }
        }
    }

    /// The closed-form step's model gradients and loss against autodiff through the reference
    /// losses of bank-losses (a second implementation), with and without merged groups.
    #[test]
    fn closed_form_gradients_equal_autodiff_through_the_reference_losses() {
        let _turn = crate::backend_turn();
        let device = Default::default();
        let config = TrainConfig::load(
            None,
            &["train.views=2".into(), "method.consistency=0.5".into()],
        )
        .unwrap();
        let n = 40;
        let layout = ViewLayout::new(3, 2);
        let images = Tensor::<A, 4>::random(
            [6, 3, 16, 16],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let indices = Tensor::<A, 1, Int>::from_ints([0, 0, 5, 5, 39, 39], &device);
        let batch = Batch {
            images,
            indices: indices.clone(),
            labels: None,
            samples: vec![0, 5, 39],
            layout,
        };
        let tau = config.method.temperature;
        for merged in [false, true] {
            let mut state = TrainState::<A>::new(&config, n, &device).unwrap();
            let groups: Vec<i64> = (0..n as i64).map(|j| j / 4).collect();
            let groups = Tensor::<A, 1, Int>::from_ints(groups.as_slice(), &device);
            state.groups = merged.then(|| groups.clone());

            let features = state.model.forward(batch.images.clone());
            let (grads, loss) =
                softmax_grads(SoftmaxTarget::of(&state), &batch, features, tau, 1.0).unwrap();
            let mut got = Grads(&grads, Vec::new());
            state.model.visit(&mut got);

            let features = state.model.forward(batch.images.clone());
            let lp = BankLogProbs::from_features(&state.bank, features, tau).unwrap();
            let main = if merged {
                merged_positive_loss(&lp, indices.clone(), groups).unwrap()
            } else {
                multi_view_loss(&lp, indices.clone(), layout).unwrap()
            };
            let want_loss = main + state.consistency.unwrap().forward(&lp, layout).unwrap();
            let want_value = want_loss.clone().into_scalar();
            let reference = want_loss.backward();
            let mut want = Grads(&reference, Vec::new());
            state.model.visit(&mut want);

            let loss = loss.into_scalar();
            assert!(
                (loss - want_value).abs() < 1e-5,
                "loss {loss} vs {want_value}"
            );
            assert_eq!(got.1.len(), want.1.len());
            let scale = want.1.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
            for (i, (g, w)) in got.1.iter().zip(&want.1).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-3 * scale,
                    "merged {merged}: parameter value {i}: closed form {g}, autodiff {w}"
                );
            }
        }
    }
}
