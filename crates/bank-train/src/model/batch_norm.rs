//! Batch normalisation over `[N, C, H, W]` without a transpose.
//!
//! burn 0.21's `BatchNorm` computes channel statistics through `swap_dims(0, 1)` + `reshape`,
//! which on the CPU backends is a strided copy of the whole activation, forward and backward;
//! it took half the training time of the small CNN on flex. Here the statistics come from
//! reductions over contiguous dimensions (`[N, C, H·W]` → mean over H·W, then over N), which
//! gives the same values. On burn-flex every per-channel operand is laid out as `[N, C, 1, 1]`
//! ([`per_sample`]), which keeps its broadcast arithmetic on its SIMD path ([`ChannelLayout`]).
//! Running statistics follow PyTorch: momentum 0.1, unbiased variance.

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
    /// The constant added to the variance.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// The weight of a new batch in the running statistics.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// # Shapes
    /// - input and output: `[N, C, H, W]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let device = x.device();
        let layout = ChannelLayout::for_backend::<B>(&device, n);
        let (mean, var) = if B::ad_enabled(&device) {
            let flat = x.clone().reshape([n, c, h * w]);
            let mean = flat.clone().mean_dim(2).mean_dim(0); // [1, C, 1]
            let centred = flat
                - layout
                    .operand(mean.clone().reshape([c]))
                    .squeeze_dim::<3>(3);
            let var = centred.square().mean_dim(2).mean_dim(0);
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
            (mean.reshape([c]), var.reshape([c]))
        } else {
            (self.running_mean.value(), self.running_var.value())
        };
        let scale = self.gamma.val() / var.add_scalar(self.epsilon).sqrt();
        (x - layout.operand(mean)) * layout.operand(scale) + layout.operand(self.beta.val())
    }
}

/// How a per-channel `[C]` vector meets `[N, C, H, W]` activations.
#[derive(Clone, Copy)]
enum ChannelLayout {
    /// `[1, C, 1, 1]`, broadcast over N, H and W by the backend.
    Broadcast,
    /// `[N, C, 1, 1]`, materialised ([`per_sample`]).
    PerSample(usize),
}

impl ChannelLayout {
    /// `PerSample` on burn-flex, `Broadcast` elsewhere. burn offers no way to ask a backend how
    /// it broadcasts, so this goes by its name, as measured on the small CNN's training step:
    /// on flex `PerSample` made the step 1.6–2× faster; on LibTorch it gained nothing (ATen
    /// broadcasts `[1, C, 1, 1]` in vector code; A/B runs there swung ±15% either way), so the
    /// other backends keep the operations they had.
    fn for_backend<B: Backend>(device: &B::Device, n: usize) -> Self {
        if B::name(device).contains("flex") {
            Self::PerSample(n)
        } else {
            Self::Broadcast
        }
    }

    fn operand<B: Backend>(self, v: Tensor<B, 1>) -> Tensor<B, 4> {
        match self {
            Self::Broadcast => v.unsqueeze_dims(&[0, 2, 3]),
            Self::PerSample(n) => per_sample(v, n),
        }
    }
}

/// A per-channel `[C]` vector laid out for `[N, C, H, W]` as `[N, C, 1, 1]`, materialised
/// (contiguous, not a stride-0 view of `[1, C, 1, 1]`).
///
/// burn-flex runs `x - v` with `v` broadcast over H·W in a SIMD loop when `v`'s outer dimensions
/// are contiguous; a `[1, C, 1, 1]` operand (stride 0 over N) falls back to a scalar strided
/// iterator, which took about 35% of the small CNN's training step on flex. The copy is N·C
/// values; the forward values are unchanged (the gradients of the operand are summed in another
/// order).
fn per_sample<B: Backend>(v: Tensor<B, 1>, n: usize) -> Tensor<B, 4> {
    let [c] = v.dims();
    v.reshape([1, c]).expand([n, c]).reshape([n, c, 1, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::AutodiffModule;
    use burn::tensor::Distribution;

    #[test]
    fn matches_burns_batch_norm_in_training_and_inference() {
        let _turn = crate::backend_turn();
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

    /// Gradients (input, γ, β) against burn's own layer, training mode, under a random linear
    /// loss; then inference mode on the running statistics against the formula. ndarray takes
    /// the broadcast layout, flex the per-sample one.
    #[test]
    fn gradients_match_burns_batch_norm() {
        let _turn = crate::backend_turn();
        gradients_match_burns_batch_norm_on::<NdArray>();
        gradients_match_burns_batch_norm_on::<burn::backend::Flex>();
    }

    fn gradients_match_burns_batch_norm_on<I: Backend>() {
        type B<I> = Autodiff<I>;
        let device = Default::default();
        let x = Tensor::<B<I>, 4>::random([3, 4, 5, 2], Distribution::Normal(-1.0, 2.0), &device);
        let weights =
            Tensor::<B<I>, 4>::random([3, 4, 5, 2], Distribution::Normal(0.0, 1.0), &device);
        let init_affine = |gamma: &Param<Tensor<B<I>, 1>>, beta: &Param<Tensor<B<I>, 1>>| {
            let g = Tensor::<B<I>, 1>::from_floats([0.5, 1.5, -2.0, 1.0], &device);
            let b = Tensor::<B<I>, 1>::from_floats([0.1, -0.3, 0.0, 2.0], &device);
            (
                gamma.clone().map(|_| g.require_grad()),
                beta.clone().map(|_| b.require_grad()),
            )
        };
        let mut ours = BatchNorm2dConfig::new(4).init::<B<I>>(&device);
        (ours.gamma, ours.beta) = init_affine(&ours.gamma, &ours.beta);
        let mut theirs = nn::BatchNormConfig::new(4).init::<B<I>>(&device);
        (theirs.gamma, theirs.beta) = init_affine(&theirs.gamma, &theirs.beta);

        let grads_of = |y: Tensor<B<I>, 4>,
                        x: &Tensor<B<I>, 4>,
                        g: &Param<Tensor<B<I>, 1>>,
                        b: &Param<Tensor<B<I>, 1>>| {
            let grads = (y * weights.clone()).sum().backward();
            let v = |t: Tensor<I, 1>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
            let gx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
            (
                gx,
                v(g.val().grad(&grads).unwrap()),
                v(b.val().grad(&grads).unwrap()),
            )
        };
        let xa = x.clone().require_grad();
        let xb = x.clone().require_grad();
        let a = grads_of(ours.forward(xa.clone()), &xa, &ours.gamma, &ours.beta);
        let b = grads_of(theirs.forward(xb.clone()), &xb, &theirs.gamma, &theirs.beta);
        for (what, p, q) in [
            ("x", &a.0, &b.0),
            ("gamma", &a.1, &b.1),
            ("beta", &a.2, &b.2),
        ] {
            let scale = q.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = p.iter().zip(q).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                diff <= 1e-4 * scale.max(1.0),
                "{what}: gradients differ by {diff} (scale {scale})"
            );
        }

        // Inference: (x − running mean) / sqrt(running var + ε) · γ + β, value by value.
        let ours = ours.valid();
        let x = x.inner();
        let y: Vec<f32> = ours.forward(x.clone()).into_data().to_vec().unwrap();
        let xs: Vec<f32> = x.into_data().to_vec().unwrap();
        let stat = |t: Tensor<I, 1>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
        let (rm, rv) = (
            stat(ours.running_mean.value()),
            stat(ours.running_var.value()),
        );
        let (g, b) = (stat(ours.gamma.val()), stat(ours.beta.val()));
        for (i, (&xi, &yi)) in xs.iter().zip(&y).enumerate() {
            let ch = (i / 10) % 4;
            let want = (xi - rm[ch]) / (rv[ch] + 1e-5).sqrt() * g[ch] + b[ch];
            assert!(
                (yi - want).abs() < 1e-5 * want.abs().max(1.0),
                "value {i}: {yi} vs {want}"
            );
        }
    }
}
