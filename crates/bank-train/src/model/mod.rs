//! The embedding networks: a backbone, a linear projection to D, L2 normalisation.

mod batch_norm;
mod embedding;
mod resnet;
mod small_cnn;

pub use batch_norm::{BatchNorm2d, BatchNorm2dConfig};
pub use embedding::{Arch, Backbone, EmbeddingNet, ModelConfig};
pub use resnet::{BasicBlock, Bottleneck, ResNet, ResNetConfig, ResidualBlock, Stem};
pub use small_cnn::{SmallCnn, SmallCnnConfig};

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;

/// A bias-free `k × k` convolution with "same" padding (for odd `k`) and the given stride,
/// initialised as torchvision does (Kaiming normal, fan-out, ReLU gain).
pub(crate) fn conv(in_ch: usize, out_ch: usize, k: usize, stride: usize) -> Conv2dConfig {
    Conv2dConfig::new([in_ch, out_ch], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .with_bias(false)
        .with_initializer(nn::Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
}

/// Conv → BatchNorm, the unit every network here is built from.
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    /// The convolution (no bias: BatchNorm follows).
    pub conv: Conv2d<B>,
    /// The normalisation.
    pub bn: BatchNorm2d<B>,
}

impl<B: Backend> ConvBn<B> {
    /// A `k × k` conv with `stride` from `in_ch` to `out_ch` channels, then BatchNorm.
    pub fn new(in_ch: usize, out_ch: usize, k: usize, stride: usize, device: &B::Device) -> Self {
        Self {
            conv: conv(in_ch, out_ch, k, stride).init(device),
            bn: BatchNorm2dConfig::new(out_ch).init(device),
        }
    }

    /// # Shapes
    /// - input: `[N, C_in, H, W]`
    /// - output: `[N, C_out, H/stride, W/stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.bn.forward(self.conv.forward(x))
    }
}
