//! One training step: forward, the method's loss against the bank, backward, SGD, bank update.

use bank_data::Batch;
use bank_losses::{BankLogProbs, merged_positive_loss, multi_view_loss, nce_similarities};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::Result;
use crate::state::TrainState;

/// The loss of `batch`: NCE, or the full softmax over the bank with merged positives (once
/// merging is on) or the multi-view instance loss, plus λ·consistency.
///
/// # Shapes
/// - `features`: `[B·K, D]`, unit rows; output: scalar
fn loss<B: AutodiffBackend>(
    state: &mut TrainState<B>,
    batch: &Batch<B>,
    features: Tensor<B, 2>,
    tau: f64,
    device: &B::Device,
) -> Result<Tensor<B, 1>> {
    if let Some(nce) = state.nce.as_mut() {
        let noise = nce.sample_noise(batch.layout.rows(), device);
        let (pos, neg) = nce_similarities(&state.bank, features, batch.indices.clone(), noise)?;
        return Ok(nce.forward(pos, neg)?);
    }
    let lp = BankLogProbs::from_features(&state.bank, features, tau)?;
    let mut loss = match &state.groups {
        Some(g) => merged_positive_loss(&lp, batch.indices.clone(), g.clone())?,
        None => multi_view_loss(&lp, batch.indices.clone(), batch.layout)?,
    };
    if let Some(c) = &state.consistency {
        loss = loss + c.forward(&lp, batch.layout)?;
    }
    Ok(loss)
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
    let features = state.model.forward(batch.images.clone());
    let loss = loss(&mut state, &batch, features.clone(), tau, device)?;
    let grads = GradientsParams::from_grads(loss.backward(), &state.model);
    let model = state.model;
    state.model = state.optim.step(lr, model, grads);
    state
        .bank
        .update(batch.indices, features.detach(), batch.layout.views)?;
    state.step += 1;
    Ok((state, loss.into_scalar().elem::<f64>()))
}
