//! The memory bank: storage, similarities and the momentum update.

use std::ops::Range;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Element, FloatDType, IndexingUpdateOp};

use crate::{
    Error, Precision, Result, SimilarityChunks, ViewLayout, l2_normalize, shard_positions,
    tf32::tf32_exact_matmul,
};

/// N unit rows of dimension D on a device, one per training image.
///
/// The bank never joins the autodiff graph: features given to [`MemoryBank::update`] are detached,
/// and the rows are never marked as requiring gradients. Rows may be stored in f16
/// ([`Precision::F16`]); all arithmetic is done in f32.
#[derive(Debug, Clone)]
pub struct MemoryBank<B: Backend> {
    /// `[N, D]`, in `storage_dtype(precision)`.
    rows: Tensor<B, 2>,
    momentum: f64,
    precision: Precision,
}

impl<B: Backend> MemoryBank<B> {
    /// Assembles a bank from unit rows (f32, or already in `precision`), checking momentum and precision support.
    pub(crate) fn from_parts(
        rows: Tensor<B, 2>,
        momentum: f64,
        precision: Precision,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::InvalidValue {
                field: "momentum",
                value: momentum.to_string(),
                reason: "must lie in [0, 1)",
            });
        }
        check_precision::<B>(&rows.device(), precision)?;
        let rows = rows.cast(storage_dtype::<B>(precision));
        Ok(Self {
            rows,
            momentum,
            precision,
        })
    }

    /// Number of rows N.
    pub fn num_rows(&self) -> usize {
        self.rows.dims()[0]
    }

    /// Row dimension D.
    pub fn dim(&self) -> usize {
        self.rows.dims()[1]
    }

    /// Update momentum m (weight of the old row).
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// Storage precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The device the rows live on.
    pub fn device(&self) -> B::Device {
        self.rows.device()
    }

    /// The same bank on `device` (a copy of the rows; a data-parallel replica's bank).
    pub fn to_device(&self, device: &B::Device) -> Self {
        Self {
            rows: self.rows.clone().to_device(device),
            momentum: self.momentum,
            precision: self.precision,
        }
    }

    /// All rows in the backend's float type (f32 on every shipped backend).
    ///
    /// # Shapes
    /// - output: `[N, D]`
    pub fn rows(&self) -> Tensor<B, 2> {
        self.rows.clone().cast(compute_dtype::<B>())
    }

    /// The stored rows in their storage precision (what persistence writes).
    pub(crate) fn stored_rows(&self) -> &Tensor<B, 2> {
        &self.rows
    }

    /// Replaces every row (e.g. after averaging the rows of merged groups). Rows are re-normalised.
    ///
    /// # Shapes
    /// - `rows`: `[N, D]`
    pub fn set_rows(&mut self, rows: Tensor<B, 2>) -> Result<()> {
        self.check_features("rows", &rows, Some(self.num_rows()))?;
        self.rows = l2_normalize(rows.detach().cast(compute_dtype::<B>()))
            .cast(storage_dtype::<B>(self.precision));
        Ok(())
    }

    /// Dot products of each feature with every bank row: `features · Vᵀ`. The temperature τ is
    /// applied by the losses, not here. Gradients flow to `features`, never to the bank.
    ///
    /// # Shapes
    /// - `features`: `[M, D]`
    /// - output: `[M, N]`
    pub fn similarities(&self, features: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        self.check_features("features", &features, None)?;
        Ok(features.matmul(self.rows().transpose()))
    }

    /// Like [`MemoryBank::similarities`] but in blocks of at most `max_columns` bank rows, so that
    /// no more than `M × max_columns` similarities exist at once (kNN, mining).
    ///
    /// # Shapes
    /// - `features`: `[M, D]`
    /// - each item: `(first column, [M, c])` with `c ≤ max_columns`
    pub fn similarity_chunks(
        &self,
        features: Tensor<B, 2>,
        max_columns: usize,
    ) -> Result<SimilarityChunks<'_, B>> {
        self.check_features("features", &features, None)?;
        if max_columns == 0 {
            return Err(Error::InvalidValue {
                field: "max_columns",
                value: "0".into(),
                reason: "must be > 0",
            });
        }
        Ok(SimilarityChunks::new(&self.rows, features, max_columns))
    }

    /// Rows of the bank selected by index, as f32.
    ///
    /// # Shapes
    /// - `indices`: `[M]`
    /// - output: `[M, D]`
    pub fn select(&self, indices: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        self.rows.clone().select(0, indices).cast(FloatDType::F32)
    }

    /// The momentum update of Bulat et al. (eq. 1 with K views), applied **once per sample**:
    ///
    /// `v_i ← normalise(m·v_i + (1−m)·mean f)`, the mean taken over every row of the batch whose
    /// index is `i` (its `views` views, laid out as in [`ViewLayout`]).
    ///
    /// Rows sharing an index are first combined, so an index that appears K times (or in two
    /// samples) moves its row once, towards the mean of all its features. `features` are detached.
    /// Indices must be `< N`; they are not checked on the device.
    ///
    /// # Shapes
    /// - `indices`: `[B·K]`
    /// - `features`: `[B·K, D]`, L2-normalised embeddings
    pub fn update(
        &mut self,
        indices: Tensor<B, 1, Int>,
        features: Tensor<B, 2>,
        views: usize,
    ) -> Result<()> {
        self.check_update(&indices, &features, views)?;
        let delta = self.delta(indices.clone(), indices.clone(), features);
        self.add_to_rows(indices, delta);
        Ok(())
    }

    /// The rows `range` of this bank as a bank of their own (a copy): one device's shard of a
    /// bank split by rows, which [`MemoryBank::update_shard`] then keeps in step with the
    /// whole.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] for an empty range or one beyond the bank's rows.
    pub fn rows_range(&self, range: Range<usize>) -> Result<Self> {
        if range.is_empty() || range.end > self.num_rows() {
            return Err(Error::InvalidValue {
                field: "range",
                value: format!("{range:?}"),
                reason: "must be a non-empty range of the bank's rows",
            });
        }
        Ok(Self {
            rows: self.rows.clone().slice([range, 0..self.dim()]),
            momentum: self.momentum,
            precision: self.precision,
        })
    }

    /// [`MemoryBank::update`] for a shard that holds the rows `first..first + n` of a bank
    /// split by rows: `indices` are indices of the whole bank, and only the rows inside the
    /// shard move. Each shard's rows come out as [`MemoryBank::update`] of the whole bank with
    /// the same batch would leave them (the same batch-wide mean per sample, the changes of the
    /// rows outside masked to zero): bit for bit where the backend's scatter-add adds in a fixed
    /// order (the CPU backends); on a GPU backend, whose scatter-add adds a repeated index's
    /// terms atomically, a row that several batch rows move may differ in its last bits.
    ///
    /// # Shapes
    /// - `indices`: `[B·K]`, indices of the whole bank
    /// - `features`: `[B·K, D]`, L2-normalised embeddings
    ///
    /// # Errors
    /// As [`MemoryBank::update`].
    pub fn update_shard(
        &mut self,
        indices: Tensor<B, 1, Int>,
        features: Tensor<B, 2>,
        views: usize,
        first: usize,
    ) -> Result<()> {
        self.check_update(&indices, &features, views)?;
        let (local, inside) = shard_positions(indices.clone(), first..first + self.num_rows());
        let delta = self.delta(indices, local.clone(), features) * inside.unsqueeze_dim::<2>(1);
        self.add_to_rows(local, delta);
        Ok(())
    }

    fn check_update(
        &self,
        indices: &Tensor<B, 1, Int>,
        features: &Tensor<B, 2>,
        views: usize,
    ) -> Result<()> {
        let rows = features.dims()[0];
        self.check_features("features", features, None)?;
        if indices.dims()[0] != rows {
            return Err(Error::Shape {
                what: "indices",
                expected: format!("[{rows}] (one per feature row)"),
                actual: indices.dims().to_vec(),
            });
        }
        if ViewLayout::from_rows(rows, views).is_none() {
            return Err(Error::InvalidValue {
                field: "views",
                value: views.to_string(),
                reason: "must be > 0 and divide the number of feature rows",
            });
        }
        Ok(())
    }

    /// Each batch row's share of its bank row's change, `[R, D]`: rows are grouped by
    /// `indices`; `rows_at` are the same rows' positions in this bank.
    fn delta(
        &self,
        indices: Tensor<B, 1, Int>,
        rows_at: Tensor<B, 1, Int>,
        features: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let rows = features.dims()[0];
        let features = features.detach().cast(compute_dtype::<B>());

        // same[r, s] = 1 when rows r and s carry the same index; each row then sees the mean of
        // every feature of its sample, and writes 1/count of the change, so the row moves once.
        // The product is split so that a matmul that rounds to TF32 (CUDA's) keeps f32 accuracy.
        let column = indices.clone().unsqueeze_dim::<2>(1).expand([rows, rows]);
        let line = indices.unsqueeze_dim::<2>(0).expand([rows, rows]);
        let same = column.equal(line).float();
        let count = same.clone().sum_dim(1); // [R, 1]
        let mean = tf32_exact_matmul(same, features) / count.clone();

        let old = self.select(rows_at);
        let m = self.momentum;
        let new = l2_normalize(old.clone() * m + mean * (1.0 - m));
        (new - old) / count
    }

    /// Adds `delta` to the rows `rows_at`. The rows are moved out of `self` first, so that a
    /// backend may update them in place: `self.rows.clone().select_assign(..)` would hold a
    /// second handle on them and make it copy the whole bank at every step.
    fn add_to_rows(&mut self, rows_at: Tensor<B, 1, Int>, delta: Tensor<B, 2>) {
        let empty = Tensor::<B, 2>::empty([0, self.dim()], &self.rows.device());
        let empty = empty.cast(self.rows.dtype());
        let rows = std::mem::replace(&mut self.rows, empty);
        self.rows = rows.select_assign(
            0,
            rows_at,
            delta.cast(storage_dtype::<B>(self.precision)),
            IndexingUpdateOp::Add,
        );
    }

    fn check_features(
        &self,
        what: &'static str,
        features: &Tensor<B, 2>,
        rows: Option<usize>,
    ) -> Result<()> {
        let [m, d] = features.dims();
        if d != self.dim() || rows.is_some_and(|r| r != m) {
            return Err(Error::Shape {
                what,
                expected: match rows {
                    Some(r) => format!("[{r}, {}]", self.dim()),
                    None => format!("[M, {}]", self.dim()),
                },
                actual: vec![m, d],
            });
        }
        Ok(())
    }
}

impl<B: AutodiffBackend> MemoryBank<B> {
    /// The same bank on the inner (non-autodiff) backend, sharing storage: for evaluation.
    pub fn inner(&self) -> MemoryBank<B::InnerBackend> {
        MemoryBank {
            rows: self.rows.clone().inner(),
            momentum: self.momentum,
            precision: self.precision,
        }
    }
}

/// Fails when the backend cannot store `precision` on `device` (ndarray has no f16).
pub(crate) fn check_precision<B: Backend>(device: &B::Device, precision: Precision) -> Result<()> {
    if precision != Precision::F32 && !B::supports_dtype(device, precision.dtype()) {
        return Err(Error::UnsupportedPrecision {
            backend: B::name(device),
            precision,
        });
    }
    Ok(())
}

/// The dtype all bank arithmetic is done in: the backend's float element (f32 on the shipped backends).
pub(crate) fn compute_dtype<B: Backend>() -> FloatDType {
    <B::FloatElem as Element>::dtype().into()
}

/// The dtype rows are stored in: the compute dtype, or f16 when asked for.
pub(crate) fn storage_dtype<B: Backend>(precision: Precision) -> FloatDType {
    match precision {
        Precision::F32 => compute_dtype::<B>(),
        Precision::F16 => FloatDType::F16,
    }
}
