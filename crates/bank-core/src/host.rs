//! A bank's rows in host memory: what a bank file holds, and what the shards of a bank split by
//! rows across devices are gathered into, so that no single device holds every row.

use std::ops::Range;

use burn::prelude::*;

use crate::bank::check_precision;
use crate::{Error, MemoryBank, Precision, Result};

/// The rows of a bank in host memory, in its storage precision (f32, or f16), with its momentum:
/// everything a bank file records besides attachments.
///
/// Read and written with [`HostBank::load_with`] and [`HostBank::save_with`] (the format of
/// [`MemoryBank::save`]); moved to a device with [`HostBank::to_device`].
#[derive(Debug, Clone)]
pub struct HostBank {
    /// `[N, D]`, f32 or f16 as `precision` says.
    pub(crate) rows: TensorData,
    pub(crate) momentum: f64,
    pub(crate) precision: Precision,
}

impl HostBank {
    /// Number of rows N.
    pub fn num_rows(&self) -> usize {
        self.rows.shape[0]
    }

    /// Row dimension D.
    pub fn dim(&self) -> usize {
        self.rows.shape[1]
    }

    /// Update momentum m.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// Storage precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes per stored value.
    fn value_bytes(&self) -> usize {
        match self.precision {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// The rows `range` as a bank of their own (a copy).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming `range` when it is empty or reaches beyond the rows.
    pub fn rows_range(&self, range: Range<usize>) -> Result<Self> {
        if range.is_empty() || range.end > self.num_rows() {
            return Err(Error::InvalidValue {
                field: "range",
                value: format!("{range:?}"),
                reason: "must be a non-empty range of the bank's rows",
            });
        }
        let row = self.dim() * self.value_bytes();
        let bytes = self.rows.as_bytes()[range.start * row..range.end * row].to_vec();
        Ok(Self {
            rows: TensorData::from_bytes_vec(bytes, [range.len(), self.dim()], self.rows.dtype),
            momentum: self.momentum,
            precision: self.precision,
        })
    }

    /// The rows `rows` (indices into this bank, in the order given) as a bank of their own.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming `rows` when there are none, or one is beyond the bank.
    pub fn select(&self, rows: &[usize]) -> Result<Self> {
        let n = self.num_rows();
        if let Some(bad) = rows.iter().find(|&&r| r >= n) {
            return Err(Error::InvalidValue {
                field: "rows",
                value: bad.to_string(),
                reason: "must index the bank's rows",
            });
        }
        if rows.is_empty() {
            return Err(Error::InvalidValue {
                field: "rows",
                value: "none".into(),
                reason: "at least one row is needed",
            });
        }
        let width = self.dim() * self.value_bytes();
        let bytes = self.rows.as_bytes();
        let picked = rows
            .iter()
            .flat_map(|&r| &bytes[r * width..(r + 1) * width])
            .copied()
            .collect();
        Ok(Self {
            rows: TensorData::from_bytes_vec(picked, [rows.len(), self.dim()], self.rows.dtype),
            momentum: self.momentum,
            precision: self.precision,
        })
    }

    /// The banks `parts`, row after row, as one (the shards of a bank split by rows, in order).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming `parts` when there are none, or when their dimensions,
    /// momenta or precisions differ.
    pub fn concat(parts: &[Self]) -> Result<Self> {
        let first = parts.first().ok_or(Error::InvalidValue {
            field: "parts",
            value: "none".into(),
            reason: "at least one part is needed",
        })?;
        if let Some(odd) = parts.iter().find(|p| {
            (p.dim(), p.precision, p.momentum.to_bits())
                != (first.dim(), first.precision, first.momentum.to_bits())
        }) {
            return Err(Error::InvalidValue {
                field: "parts",
                value: format!(
                    "D {} m {} {} against D {} m {} {}",
                    odd.dim(),
                    odd.momentum,
                    odd.precision,
                    first.dim(),
                    first.momentum,
                    first.precision
                ),
                reason: "parts of one bank share its dimension, momentum and precision",
            });
        }
        let n = parts.iter().map(Self::num_rows).sum();
        let bytes = parts
            .iter()
            .flat_map(|p| p.rows.as_bytes())
            .copied()
            .collect();
        Ok(Self {
            rows: TensorData::from_bytes_vec(bytes, [n, first.dim()], first.rows.dtype),
            momentum: first.momentum,
            precision: first.precision,
        })
    }

    /// Every row as f32, row-major `[N·D]` (a copy; f16 rows are converted).
    pub fn rows_f32(&self) -> Vec<f32> {
        self.rows
            .clone()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32")
    }

    /// Whether every value is finite.
    pub fn is_finite(&self) -> bool {
        match self.rows.as_slice::<f32>() {
            Ok(v) => v.iter().all(|x| x.is_finite()),
            // f16 rows: converted to f32 first (a copy).
            Err(_) => self.rows_f32().iter().all(|x| x.is_finite()),
        }
    }

    /// The bank on `device`.
    ///
    /// # Errors
    /// [`Error::UnsupportedPrecision`] for f16 rows on a backend without f16;
    /// [`Error::InvalidValue`] for a momentum outside `[0, 1)`.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> Result<MemoryBank<B>> {
        check_precision::<B>(device, self.precision)?;
        let dtype = self.precision.dtype();
        let rows = Tensor::<B, 2>::from_data(self.rows.clone(), (device, dtype));
        MemoryBank::from_parts(rows, self.momentum, self.precision)
    }
}

impl<B: Backend> MemoryBank<B> {
    /// The bank's rows in host memory, in their storage precision (what [`MemoryBank::save`]
    /// writes). One read from the device.
    pub fn to_host(&self) -> HostBank {
        HostBank {
            // Files always hold f32 or f16, whatever the backend's own float type.
            rows: self
                .stored_rows()
                .to_data()
                .convert_dtype(self.precision().dtype()),
            momentum: self.momentum(),
            precision: self.precision(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBankConfig;

    type B = burn::backend::NdArray;

    fn values(bank: &MemoryBank<B>) -> Vec<f32> {
        bank.rows().into_data().to_vec().unwrap()
    }

    #[test]
    fn ranges_and_their_concatenation_give_back_the_rows() {
        let device = Default::default();
        let bank = MemoryBankConfig::new(10, 3)
            .with_momentum(0.3)
            .init::<B>(&device)
            .unwrap();
        let host = bank.to_host();
        let all = values(&bank);
        let parts: Vec<HostBank> = [0..4, 4..5, 5..10]
            .into_iter()
            .map(|r| host.rows_range(r).unwrap())
            .collect();
        let second = parts[1].to_device::<B>(&device).unwrap();
        assert_eq!(values(&second), all[12..15]);
        assert_eq!(second.momentum(), 0.3);
        let back = HostBank::concat(&parts)
            .unwrap()
            .to_device::<B>(&device)
            .unwrap();
        assert_eq!(values(&back), all);
        assert!(host.rows_range(3..3).is_err());
        assert!(host.rows_range(8..11).is_err());
        let other = MemoryBankConfig::new(2, 4)
            .init::<B>(&device)
            .unwrap()
            .to_host();
        assert!(HostBank::concat(&[host.clone(), other]).is_err());
        assert!(HostBank::concat(&[]).is_err());
    }

    #[test]
    fn a_nan_row_is_not_finite() {
        let device = Default::default();
        let bank = MemoryBankConfig::new(4, 2).init::<B>(&device).unwrap();
        assert!(bank.to_host().is_finite());
        let mut v = values(&bank);
        v[5] = f32::NAN;
        let host = HostBank {
            rows: TensorData::new(v, [4, 2]),
            momentum: 0.5,
            precision: Precision::F32,
        };
        assert!(!host.is_finite());
    }
}
