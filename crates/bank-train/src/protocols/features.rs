//! Features of a whole set, computed once without augmentation and kept on the host.

use std::sync::Arc;

use bank_data::{Dataset, LoaderConfig, MultiViewLoader};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::data_source::ViewSpec;
use crate::evaluate::eval_transform;
use crate::model::EmbeddingNet;
use crate::{Error, Result};

/// The embedding and the pooled backbone features of every image of a set, row-major, with the
/// labels (when known).
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// `[N, dim]` unit rows.
    pub embedding: Vec<f32>,
    /// Embedding dimension D.
    pub dim: usize,
    /// `[N, pooled_dim]`: the backbone's pooled features before the projection.
    pub pooled: Vec<f32>,
    /// Pooled feature dimension F.
    pub pooled_dim: usize,
    /// Label of every image, when the set is labelled.
    pub labels: Option<Vec<u32>>,
}

impl Features {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.embedding.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The embedding as a device tensor.
    ///
    /// # Shapes
    /// - output: `[N, D]`
    pub fn embedding_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        to_tensor(&self.embedding, self.len(), self.dim, device)
    }

    /// The pooled features as a device tensor.
    ///
    /// # Shapes
    /// - output: `[N, F]`
    pub fn pooled_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        to_tensor(&self.pooled, self.len(), self.pooled_dim, device)
    }
}

/// A row-major host matrix as a device tensor.
///
/// # Shapes
/// - output: `[rows, cols]`
pub fn to_tensor<B: Backend>(
    values: &[f32],
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values.to_vec(), [rows, cols]), device)
}

/// The features of every image of `dataset` under the evaluation transform of `view`, in order.
///
/// # Errors
/// An image that cannot be read (streamed datasets decode here);
/// [`Error::NonFiniteFeatures`] when a feature is NaN or infinite (a diverged network).
pub fn compute_features<B: Backend>(
    model: &EmbeddingNet<B>,
    dataset: &Arc<dyn Dataset>,
    view: &ViewSpec,
    batch_size: usize,
    device: &B::Device,
) -> Result<Features> {
    let loader = MultiViewLoader::new(
        Arc::clone(dataset),
        LoaderConfig::new(batch_size, 1).with_shuffle(false),
        eval_transform(view),
    )?;
    let (mut embedding, mut pooled) = (Vec::new(), Vec::new());
    let (mut dim, mut pooled_dim) = (0, 0);
    for batch in loader.epoch(0) {
        let (p, e) = model.features_and_embedding(batch?.into_device::<B>(device).images);
        dim = e.dims()[1];
        pooled_dim = p.dims()[1];
        embedding.extend(host(e));
        pooled.extend(host(p));
    }
    for (values, what) in [(&embedding, "embeddings"), (&pooled, "pooled features")] {
        if !values.iter().all(|v| v.is_finite()) {
            return Err(Error::NonFiniteFeatures { what });
        }
    }
    Ok(Features {
        embedding,
        dim,
        pooled,
        pooled_dim,
        labels: dataset.labels(),
    })
}

/// A tensor's values as `f32` on the host.
pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32")
}
