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

    /// The same loss with Z on `device` (a data-parallel replica's copy).
    pub fn to_device(self, device: &B::Device) -> Self {
        Self {
            config: self.config,
            z: self.z.map(|z| z.to_device(device)),
        }
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
    ///
    /// # Errors
    /// [`Error::Shape`] when `positive` and `noise` do not match.
    pub fn forward(&mut self, positive: Tensor<B, 1>, noise: Tensor<B, 2>) -> Result<Tensor<B, 1>> {
        self.check(&positive, &noise)?;
        let n = self.config.num_rows as f64;
        let z_batch = noise
            .clone()
            .detach()
            .div_scalar(self.config.temperature)
            .exp()
            .mean()
            * n;
        let z = self.smooth(z_batch);
        Ok(self.loss_given(positive, noise, z))
    }

    /// [`NceLoss::forward`] for one device's share of a batch split across devices
    /// (data-parallel training): the mean loss of its `M_r` rows, with `Z_batch` estimated from
    /// the whole batch. `combine` sums `[Σ exp(s/τ), count]` of the noise similarities over the
    /// devices (an all-reduce), so every device updates Z alike, as one device with the whole
    /// batch would. A device without rows passes `None` and only takes part in the update of Z.
    ///
    /// # Shapes
    /// - `rows`: `Some(([M_r], [M_r, m]))`, as [`NceLoss::forward`]
    /// - output: `Some([1])` with rows
    ///
    /// # Errors
    /// [`Error::Shape`] when the similarities do not match; `combine`'s errors.
    pub fn forward_shared<E: From<Error>>(
        &mut self,
        rows: Option<(Tensor<B, 1>, Tensor<B, 2>)>,
        device: &B::Device,
        combine: impl FnOnce(Tensor<B, 1>) -> std::result::Result<Tensor<B, 1>, E>,
    ) -> std::result::Result<Option<Tensor<B, 1>>, E> {
        let local = match &rows {
            Some((positive, noise)) => {
                self.check(positive, noise)?;
                let [m, k] = noise.dims();
                let exp = noise
                    .clone()
                    .detach()
                    .div_scalar(self.config.temperature)
                    .exp();
                let count = Tensor::from_floats([(m * k) as f32], device);
                Tensor::cat(vec![exp.sum(), count], 0)
            }
            None => Tensor::zeros([2], device),
        };
        let total = combine(local)?;
        let (sum, count) = (total.clone().slice(0..1), total.slice(1..2));
        let z_batch = sum / count * self.config.num_rows as f64;
        let z = self.smooth(z_batch);
        Ok(rows.map(|(positive, noise)| self.loss_given(positive, noise, z)))
    }

    fn check(&self, positive: &Tensor<B, 1>, noise: &Tensor<B, 2>) -> Result<()> {
        let [m_rows, k] = noise.dims();
        if positive.dims()[0] != m_rows || k != self.config.noise {
            return Err(Error::Shape {
                what: "positive / noise",
                expected: format!("[M] and [M, {}]", self.config.noise),
                actual: vec![positive.dims()[0], m_rows, k],
            });
        }
        Ok(())
    }

    /// `Z ← μ·Z + (1−μ)·Z_batch` (the first batch sets it); the new Z.
    fn smooth(&mut self, z_batch: Tensor<B, 1>) -> Tensor<B, 1> {
        let z = match self.z.take() {
            None => z_batch,
            Some(z) => z * self.config.z_momentum + z_batch * (1.0 - self.config.z_momentum),
        };
        self.z = Some(z.clone());
        z
    }

    /// The mean loss of the rows given Z.
    fn loss_given(
        &self,
        positive: Tensor<B, 1>,
        noise: Tensor<B, 2>,
        z: Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        let tau = self.config.temperature;
        let n = self.config.num_rows as f64;
        let k = noise.dims()[1];
        // x = log P(j|f) − log(m·P_n) = s/τ − log Z + log(N/m)
        let offset = (z.log().neg() + (n / k as f64).ln()).detach(); // [1]
        let x_pos = positive.div_scalar(tau) + offset.clone();
        let x_noise = noise.div_scalar(tau) + offset.unsqueeze_dim::<2>(0);
        // −log h = softplus(−x); −log(1 − h) = softplus(x)
        let loss = softplus(x_pos.neg()) + softplus(x_noise).sum_dim(1).squeeze_dim(1);
        loss.mean()
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

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::NdArray;

    fn rows(m: usize, k: usize, seed: usize) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let device = Default::default();
        let v = |i: usize| ((i * 37 + seed * 11) % 19) as f32 / 19.0 - 0.5;
        let pos: Vec<f32> = (0..m).map(v).collect();
        let neg: Vec<f32> = (0..m * k).map(|i| v(i + 100)).collect();
        (
            Tensor::from_data(TensorData::new(pos, [m]), &device),
            Tensor::from_data(TensorData::new(neg, [m, k]), &device),
        )
    }

    fn scalar(t: &Tensor<B, 1>) -> f64 {
        t.clone().into_scalar().elem::<f64>()
    }

    /// A batch split 3 + 5 (+ a device without rows) across devices, the shards' sums combined by
    /// hand: the rows-weighted shard losses and every device's Z are the whole batch's, over two
    /// batches (the second smooths Z).
    #[test]
    fn shards_of_a_batch_give_the_whole_batchs_loss_and_z() {
        let device = Default::default();
        let config = NceConfig::new(1000).with_noise(4).with_temperature(0.07);
        let mut whole = config.init::<B>().unwrap();
        let mut devices: Vec<NceLoss<B>> = (0..3).map(|_| config.init().unwrap()).collect();
        for batch in 0..2 {
            let (pos, neg) = rows(8, 4, batch);
            let want = scalar(&whole.forward(pos.clone(), neg.clone()).unwrap());
            let parts = [Some((0, 3)), Some((3, 8)), None];
            let part_rows = |p: Option<(usize, usize)>| {
                p.map(|(a, b)| (pos.clone().slice(a..b), neg.clone().slice([a..b, 0..4])))
            };
            // What each device contributes, then every device combines all contributions.
            let local = |p: Option<(usize, usize)>| match part_rows(p) {
                Some((_, n)) => {
                    let s = scalar(&n.clone().div_scalar(0.07).exp().sum());
                    [s as f32, n.dims().iter().product::<usize>() as f32]
                }
                None => [0.0, 0.0],
            };
            let total = parts
                .iter()
                .map(|&p| local(p))
                .fold([0f32; 2], |a, b| [a[0] + b[0], a[1] + b[1]]);
            let mut got = 0.0;
            for (nce, &p) in devices.iter_mut().zip(&parts) {
                let mine = local(p);
                let combine = |sent: Tensor<B, 1>| -> Result<Tensor<B, 1>> {
                    // What the device sends is its own contribution.
                    let sent: Vec<f32> = sent.into_data().to_vec().unwrap();
                    for (s, m) in sent.iter().zip(mine) {
                        assert!(
                            (s - m).abs() <= 1e-5 * m.abs().max(1.0),
                            "{sent:?} vs {mine:?}"
                        );
                    }
                    Ok(Tensor::from_floats(total, &device))
                };
                let loss = nce.forward_shared(part_rows(p), &device, combine).unwrap();
                if let (Some(l), Some((a, b))) = (loss, p) {
                    got += scalar(&l) * (b - a) as f64 / 8.0;
                }
            }
            assert!(
                (got - want).abs() < 1e-5 * want.abs(),
                "batch {batch}: {got} vs {want}"
            );
            for nce in &devices {
                let (z, zw) = (nce.z().unwrap(), whole.z().unwrap());
                assert!((z - zw).abs() < 1e-5 * zw, "batch {batch}: Z {z} vs {zw}");
            }
        }
    }
}
