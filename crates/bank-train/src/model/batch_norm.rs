//! Batch normalisation over `[N, C, H, W]` without a transpose.
//!
//! burn 0.21's `BatchNorm` computes channel statistics through `swap_dims(0, 1)` + `reshape`,
//! which on the CPU backends is a strided copy of the whole activation, forward and backward;
//! it took half the training time of the small CNN on flex. Here the statistics come from
//! reductions over contiguous dimensions (`[N, C, H·W]` → mean over H·W, then over N), which
//! gives the same values. Running statistics follow PyTorch: momentum 0.1, unbiased variance.

use burn::module::{Param, RunningState};
use burn::nn::Initializer;
use burn::prelude::*;

/// Configuration of [`BatchNorm2d`].
#[derive(Config, Debug)]
pub struct BatchNorm2dConfig {
    /// Channels C.
    pub channels: usize,
    /// Added to the variance.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Weight of the new batch in the running statistics.
    #[config(default = 0.1)]
    pub momentum: f64,
}

impl BatchNorm2dConfig {
    /// Builds the layer: γ = 1, β = 0, running mean 0 and variance 1.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BatchNorm2d<B> {
        BatchNorm2d {
            gamma: Initializer::Ones.init([self.channels], device),
            beta: Initializer::Zeros.init([self.channels], device),
            running_mean: RunningState::new(Tensor::zeros([self.channels], device)),
            running_var: RunningState::new(Tensor::ones([self.channels], device)),
            epsilon: self.epsilon,
            momentum: self.momentum,
        }
    }
}

/// Batch normalisation of 4-d activations (batch statistics when training, running ones in
/// inference, chosen by whether the backend tracks gradients, as burn's own layer does).
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: Backend> {
    /// Scale γ, `[C]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift β, `[C]`.
    pub beta: Param<Tensor<B, 1>>,
    /// Running mean, `[C]`.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (unbiased) variance, `[C]`.
    pub running_var: RunningState<Tensor<B, 1>>,
    epsilon: f64,
    momentum: f64,
}

impl<B: Backend> BatchNorm2d<B> {
    /// # Shapes
    /// - input and output: `[N, C, H, W]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let (mean, var) = if B::ad_enabled(&x.device()) {
            let flat = x.clone().reshape([n, c, h * w]);
            let mean = flat.clone().mean_dim(2).mean_dim(0); // [1, C, 1]
            let var = (flat - mean.clone()).square().mean_dim(2).mean_dim(0);
            let count = (n * h * w) as f64;
            let unbiased = count / (count - 1.0).max(1.0);
            let m = self.momentum;
            let update = |state: &RunningState<Tensor<B, 1>>, batch: Tensor<B, 3>, scale: f64| {
                let old = state.value_sync();
                state.update(
                    old.mul_scalar(1.0 - m)
                        .add(batch.detach().reshape([c]).mul_scalar(m * scale))
                        .detach(),
                );
            };
            update(&self.running_mean, mean.clone(), 1.0);
            update(&self.running_var, var.clone(), unbiased);
            (mean.reshape([1, c, 1, 1]), var.reshape([1, c, 1, 1]))
        } else {
            (
                self.running_mean.value().reshape([1, c, 1, 1]),
                self.running_var.value().reshape([1, c, 1, 1]),
            )
        };
        let scale = self.gamma.val().reshape([1, c, 1, 1]) / var.add_scalar(self.epsilon).sqrt();
        (x - mean) * scale + self.beta.val().reshape([1, c, 1, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::Distribution;

    #[test]
    fn matches_burns_batch_norm_in_training_and_inference() {
        type B = Autodiff<NdArray>;
        let device = Default::default();
        let x = Tensor::<B, 4>::random([4, 3, 5, 6], Distribution::Normal(2.0, 3.0), &device);
        let ours = BatchNorm2dConfig::new(3).init::<B>(&device);
        let theirs = nn::BatchNormConfig::new(3).init::<B>(&device);
        let a: Vec<f32> = ours.forward(x.clone()).into_data().to_vec().unwrap();
        let b: Vec<f32> = theirs.forward(x.clone()).into_data().to_vec().unwrap();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "training output differs by {diff}");
        // Running mean agrees exactly in definition; running variance is unbiased here
        // (PyTorch) and biased in burn: ratio n/(n−1) with n = 4·5·6.
        let rm = |t: Tensor<NdArray, 1>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
        let (m1, m2) = (
            rm(ours.running_mean.value_sync().inner()),
            rm(theirs.running_mean.value_sync().inner()),
        );
        let (v1, v2) = (
            rm(ours.running_var.value_sync().inner()),
            rm(theirs.running_var.value_sync().inner()),
        );
        for ch in 0..3 {
            assert!((m1[ch] - m2[ch]).abs() < 1e-5);
            // running = 0.9·1 + 0.1·var(·scale); recover the batch variances and compare.
            let (ours_var, burn_var) = ((v1[ch] - 0.9) / 0.1, (v2[ch] - 0.9) / 0.1);
            assert!((ours_var - burn_var * 120.0 / 119.0).abs() < 1e-3 * burn_var.abs().max(1.0));
        }
    }
}
