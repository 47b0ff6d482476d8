//! The small CNN for CPU runs: conv3×3(32)-BN-ReLU, max-pool 2, conv3×3(64)-BN-ReLU, max-pool 2,
//! conv3×3(128)-BN-ReLU, global average pool (128 features). No conv bias. Convolutions are
//! initialised as PyTorch's `nn.Conv2d` ([`PYTORCH_CONV_INIT`](super::PYTORCH_CONV_INIT)).

use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;

use super::{ConvBn, PYTORCH_CONV_INIT, max_pool2d};

/// Configuration of [`SmallCnn`].
#[derive(Config, Debug)]
pub struct SmallCnnConfig {
    /// Input channels (3 RGB, 1 grey).
    #[config(default = 3)]
    pub channels: usize,
}

impl SmallCnnConfig {
    /// Builds the network on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> SmallCnn<B> {
        SmallCnn {
            block1: ConvBn::with_init(self.channels, 32, 3, 1, PYTORCH_CONV_INIT, device),
            block2: ConvBn::with_init(32, 64, 3, 1, PYTORCH_CONV_INIT, device),
            block3: ConvBn::with_init(64, 128, 3, 1, PYTORCH_CONV_INIT, device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            gap: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
        }
    }
}

/// Three conv-BN-ReLU stages with two max-pools and a global average pool.
#[derive(Module, Debug)]
pub struct SmallCnn<B: Backend> {
    block1: ConvBn<B>,
    block2: ConvBn<B>,
    block3: ConvBn<B>,
    pool: MaxPool2d,
    gap: AdaptiveAvgPool2d,
}

impl<B: Backend> SmallCnn<B> {
    /// Features before the projection.
    pub const FEATURES: usize = 128;

    /// # Shapes
    /// - input: `[N, C, H, W]` (C = the configured channels)
    /// - output: `[N, 128]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = max_pool2d(&self.pool, self.block1.forward_relu(x));
        let x = max_pool2d(&self.pool, self.block2.forward_relu(x));
        let x = self.block3.forward_relu(x);
        self.gap.forward(x).flatten(1, 3)
    }
}
