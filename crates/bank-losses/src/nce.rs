//! NPID's noise-contrastive estimation: the cheap alternative to the full softmax for huge banks.

use bank_core::MemoryBank;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::error::positive;
use crate::{Error, Result};

/// Hyperparameters of [`NceLoss`]: `NceConfig::new(num_rows).with_noise(4096).init()`.
#[derive(Debug, Clone, PartialEq)]
pub struct NceConfig {
    /// Bank size N; noise rows are drawn uniformly, `P_n = 1/N`.
    pub num_rows: usize,
    /// Noise rows m per feature. Default 4096 (NPID).
    pub noise: usize,
    /// Temperature τ. Default 0.07 (NPID ImageNet).
    pub temperature: f64,
    /// Weight of the old value in the moving average of the normaliser Z, in [0, 1).
    /// Default 0.9. NPID fixes Z from the first batch; 0 re-estimates Z from every batch.
    pub z_momentum: f64,
}

impl NceConfig {
    /// NCE over a bank of `num_rows` rows with NPID's defaults.
    pub fn new(num_rows: usize) -> Self {
        Self {
            num_rows,
            noise: 4096,
            temperature: 0.07,
            z_momentum: 0.9,
        }
    }

    /// Sets the number of noise rows m.
    pub fn with_noise(mut self, noise: usize) -> Self {
        self.noise = noise;
        self
    }

    /// Sets the temperature τ.
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.temperature = temperature;
        self
    }

    /// Sets the momentum of the moving average of Z.
    pub fn with_z_momentum(mut self, z_momentum: f64) -> Self {
        self.z_momentum = z_momentum;
        self
    }

    /// Validates the values and builds the loss, with Z not yet estimated.
    pub fn init<B: Backend>(&self) -> Result<NceLoss<B>> {
        positive("temperature", self.temperature)?;
        for (field, v) in [("num_rows", self.num_rows), ("noise", self.noise)] {
            if v == 0 {
                return Err(Error::InvalidValue {
                    field,
                    value: "0".into(),
                    reason: "must be > 0",
                });
            }
        }
        if !(0.0..1.0).contains(&self.z_momentum) {
            return Err(Error::InvalidValue {
                field: "z_momentum",
                value: self.z_momentum.to_string(),
                reason: "must lie in [0, 1)",
            });
        }
        Ok(NceLoss {
            config: self.clone(),
            z: None,
        })
    }
}

/// NPID's NCE loss with a moving-average normaliser.
///
/// With `P(j|f) = exp(v_j·f/τ) / Z` and `h(j, f) = P(j|f) / (P(j|f) + m·P_n)`, the loss of a feature is
/// `−log h(i, f) − Σ_{noise j} log(1 − h(j, f))`, averaged over features. `h` is evaluated as
/// `sigmoid(s/τ − log Z − log(m/N))`, so neither log underflows.
///
/// Z is estimated from each batch as `N · mean over noise rows of exp(s/τ)` (the noise rows are a
/// uniform sample of the bank) and smoothed: `Z ← μ·Z + (1−μ)·Z_batch`; the first batch sets it.
/// Z is kept on the device and carries no gradient.
#[derive(Debug, Clone)]
pub struct NceLoss<B: Backend> {
    config: NceConfig,
    z: Option<Tensor<B, 1>>,
}

impl<B: Backend> NceLoss<B> {
    /// The configuration.
    pub fn config(&self) -> &NceConfig {
        &self.config
    }

    /// The current normaliser Z, read back to the host (for logging and checkpoints).
    pub fn z(&self) -> Option<f64> {
        self.z
            .as_ref()
            .map(|z| z.clone().into_scalar().elem::<f64>())
    }

    /// Restores Z (from a checkpoint).
    pub fn set_z(&mut self, z: f64, device: &B::Device) -> Result<()> {
        positive("z", z)?;
        self.z = Some(Tensor::from_floats([z as f32], device));
        Ok(())
    }

    /// Uniform noise indices in `0..N`, m per feature.
    ///
    /// # Shapes
    /// - output: `[M, m]`
    pub fn sample_noise(&self, features: usize, device: &B::Device) -> Tensor<B, 2, Int> {
        let n = self.config.num_rows;
        Tensor::<B, 2, Int>::random(
            [features, self.config.noise],
            Distribution::Uniform(0.0, n as f64),
            device,
        )
        .clamp(0, n as i64 - 1)
    }

    /// The loss, updating Z.
    ///
    /// # Shapes
    /// - `positive`: `[M]`, similarity of each feature with its own bank row
    /// - `noise`: `[M, m]`, similarities with its noise rows
    /// - output: `[1]`
    pub fn forward(&mut self, positive: Tensor<B, 1>, noise: Tensor<B, 2>) -> Result<Tensor<B, 1>> {
        let [m_rows, k] = noise.dims();
        if positive.dims()[0] != m_rows || k != self.config.noise {
            return Err(Error::Shape {
                what: "positive / noise",
                expected: format!("[M] and [M, {}]", self.config.noise),
                actual: vec![positive.dims()[0], m_rows, k],
            });
        }
        let tau = self.config.temperature;
        let n = self.config.num_rows as f64;

        let z_batch = noise.clone().detach().div_scalar(tau).exp().mean() * n;
        let z = match self.z.take() {
            None => z_batch,
            Some(z) => z * self.config.z_momentum + z_batch * (1.0 - self.config.z_momentum),
        };
        self.z = Some(z.clone());
        // x = log P(j|f) − log(m·P_n) = s/τ − log Z + log(N/m)
        let offset = (z.log().neg() + (n / k as f64).ln()).detach(); // [1]
        let x_pos = positive.div_scalar(tau) + offset.clone();
        let x_noise = noise.div_scalar(tau) + offset.unsqueeze_dim::<2>(0);
        // −log h = softplus(−x); −log(1 − h) = softplus(x)
        let loss = softplus(x_pos.neg()) + softplus(x_noise).sum_dim(1).squeeze_dim(1);
        Ok(loss.mean())
    }
}

/// Numerically stable `log(1 + exp(x))`.
fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + x.abs().neg().exp().log1p()
}

/// The similarities NCE needs, without touching the rest of the bank: each feature against its
/// own row and against its noise rows.
///
/// # Shapes
/// - `features`: `[M, D]`, `targets`: `[M]`, `noise_indices`: `[M, m]`
/// - output: `([M], [M, m])`
pub fn nce_similarities<B: Backend>(
    bank: &MemoryBank<B>,
    features: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    noise_indices: Tensor<B, 2, Int>,
) -> Result<(Tensor<B, 1>, Tensor<B, 2>)> {
    let [m, d] = features.dims();
    let [_, k] = noise_indices.dims();
    if d != bank.dim() {
        return Err(Error::Shape {
            what: "features",
            expected: format!("[M, {}]", bank.dim()),
            actual: vec![m, d],
        });
    }
    let own = bank.select(targets);
    let positive = (features.clone() * own).sum_dim(1).squeeze_dim(1);
    let noise_rows = bank
        .select(noise_indices.reshape([m * k]))
        .reshape([m, k, d]);
    let noise = noise_rows
        .matmul(features.unsqueeze_dim::<3>(2))
        .squeeze_dim(2);
    Ok((positive, noise))
}
