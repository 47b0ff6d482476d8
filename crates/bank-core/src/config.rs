//! Construction of a [`MemoryBank`].

use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use std::ops::Range;

use crate::{Error, MemoryBank, Precision, Result};

/// Configuration of a [`MemoryBank`]:
/// `MemoryBankConfig::new(n, d).with_momentum(0.5).init(&device)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBankConfig {
    /// Number of rows N: one per training image.
    pub num_rows: usize,
    /// Dimension D of each row (128 in NPID).
    pub dim: usize,
    /// Momentum m of the update `v ← normalise(m·v + (1−m)·f)`; m weights the **old** row, as in
    /// NPID. Must lie in [0, 1). Default 0.5.
    pub momentum: f64,
    /// Storage precision of the rows. Default f32.
    pub precision: Precision,
    /// Seed of the random initial rows. Default 0.
    pub seed: u64,
}

impl MemoryBankConfig {
    /// A bank of `num_rows` rows of dimension `dim`, momentum 0.5, f32 storage, seed 0.
    pub fn new(num_rows: usize, dim: usize) -> Self {
        Self {
            num_rows,
            dim,
            momentum: 0.5,
            precision: Precision::F32,
            seed: 0,
        }
    }

    /// Sets the update momentum m (weight of the old row).
    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// Sets the storage precision.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Sets the seed of the random initial rows.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks every field, naming the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if self.num_rows == 0 {
            return Err(invalid("num_rows", self.num_rows, "must be > 0"));
        }
        if self.dim == 0 {
            return Err(invalid("dim", self.dim, "must be > 0"));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(invalid("momentum", self.momentum, "must lie in [0, 1)"));
        }
        Ok(())
    }

    /// A bank of random unit rows (Gaussian directions, uniform on the sphere), generated on the
    /// host from `seed` so that every backend starts from the same bank.
    ///
    /// # Errors
    /// Invalid settings ([`MemoryBankConfig::validate`]); f16 rows on a backend without f16.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<MemoryBank<B>> {
        self.init_rows(0..self.num_rows, device)
    }

    /// The rows `range` of the bank [`MemoryBankConfig::init`] makes, as a bank of their own: one
    /// device's shard of a bank split by rows, without the other rows ever reaching a device.
    /// The rows before `range` are drawn and passed over on the host.
    ///
    /// # Errors
    /// As [`MemoryBankConfig::init`], and [`Error::InvalidValue`] naming `range` when it is
    /// empty or reaches beyond `num_rows`.
    pub fn init_rows<B: Backend>(
        &self,
        range: Range<usize>,
        device: &B::Device,
    ) -> Result<MemoryBank<B>> {
        self.validate()?;
        if range.is_empty() || range.end > self.num_rows {
            return Err(invalid(
                "range",
                format!("{range:?}"),
                "must be a non-empty range of the bank's rows",
            ));
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut row = vec![0f32; self.dim];
        let mut values = Vec::with_capacity(range.len() * self.dim);
        for i in 0..range.end {
            let mut norm2 = 0f64;
            for v in row.iter_mut() {
                let x: f64 = StandardNormal.sample(&mut rng);
                *v = x as f32;
                norm2 += x * x;
            }
            if i >= range.start {
                let inv = 1.0 / norm2.sqrt().max(1e-12);
                values.extend(row.iter().map(|&v| (v as f64 * inv) as f32));
            }
        }
        let data = TensorData::new(values, [range.len(), self.dim]);
        MemoryBank::from_parts(
            Tensor::from_data(data, device),
            self.momentum,
            self.precision,
        )
    }

    /// A bank whose rows are the given features `[num_rows, dim]`, L2-normalised.
    pub fn init_from_features<B: Backend>(&self, features: Tensor<B, 2>) -> Result<MemoryBank<B>> {
        self.validate()?;
        let dims = features.dims();
        if dims != [self.num_rows, self.dim] {
            return Err(Error::Shape {
                what: "features",
                expected: format!("[{}, {}]", self.num_rows, self.dim),
                actual: dims.to_vec(),
            });
        }
        let rows = crate::l2_normalize(features.detach().cast(crate::bank::compute_dtype::<B>()));
        MemoryBank::from_parts(rows, self.momentum, self.precision)
    }
}

fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> Error {
    Error::InvalidValue {
        field,
        value: value.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::NdArray;

    #[test]
    fn a_range_of_rows_is_that_part_of_the_whole_bank() {
        let device = Default::default();
        let config = MemoryBankConfig::new(9, 5).with_seed(7);
        let whole: Vec<f32> = config
            .init::<B>(&device)
            .unwrap()
            .rows()
            .into_data()
            .to_vec()
            .unwrap();
        for range in [0..9, 0..1, 3..7, 8..9] {
            let part = config.init_rows::<B>(range.clone(), &device).unwrap();
            assert_eq!(part.num_rows(), range.len());
            let got: Vec<f32> = part.rows().into_data().to_vec().unwrap();
            assert_eq!(got, whole[range.start * 5..range.end * 5], "{range:?}");
        }
        for bad in [4..4, 7..10] {
            let err = config.init_rows::<B>(bad, &device).unwrap_err();
            assert!(err.to_string().contains("range"), "{err}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let bad = [
            (MemoryBankConfig::new(0, 4), "num_rows"),
            (MemoryBankConfig::new(4, 0), "dim"),
            (MemoryBankConfig::new(4, 4).with_momentum(1.0), "momentum"),
            (MemoryBankConfig::new(4, 4).with_momentum(-0.1), "momentum"),
            (
                MemoryBankConfig::new(4, 4).with_momentum(f64::NAN),
                "momentum",
            ),
        ];
        for (cfg, field) in bad {
            match cfg.validate() {
                Err(Error::InvalidValue { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{cfg:?}: expected invalid {field}, got {other:?}"),
            }
        }
        assert!(
            MemoryBankConfig::new(4, 4)
                .with_momentum(0.0)
                .validate()
                .is_ok()
        );
    }
}
