//! ResNet-18 (basic blocks, [2, 2, 2, 2]) and ResNet-50 (bottlenecks, [3, 4, 6, 3]), He et al.
//! 2016, with either the CIFAR stem (3×3 conv, stride 1, no max-pool) or the ImageNet stem
//! (7×7 conv, stride 2, 3×3 max-pool). An ImageNet stem on 32×32 images ruins CIFAR results.

use burn::nn::PaddingConfig2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;

use super::{ConvBn, max_pool2d, relu};

/// The first layers of the network.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Stem {
    /// 3×3 conv, stride 1, no pooling: for 32×32 images.
    Cifar,
    /// 7×7 conv, stride 2, then 3×3 max-pool with stride 2: for ImageNet-sized images.
    ImageNet,
}

/// Configuration of a [`ResNet`].
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Bottleneck blocks (ResNet-50 and deeper) instead of basic blocks.
    pub bottleneck: bool,
    /// The stem.
    pub stem: Stem,
    /// Input channels (3 RGB, 1 grey).
    #[config(default = 3)]
    pub channels: usize,
}

impl ResNetConfig {
    /// ResNet-18 with the given stem.
    pub fn resnet18(stem: Stem) -> Self {
        Self::new([2, 2, 2, 2], false, stem)
    }

    /// ResNet-50 with the given stem.
    pub fn resnet50(stem: Stem) -> Self {
        Self::new([3, 4, 6, 3], true, stem)
    }

    /// Features before the projection: 512 (basic) or 2048 (bottleneck).
    pub fn features(&self) -> usize {
        512 * if self.bottleneck { 4 } else { 1 }
    }

    /// Builds the network on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let (stem, max_pool) = match self.stem {
            Stem::Cifar => (ConvBn::new(self.channels, 64, 3, 1, device), None),
            Stem::ImageNet => (
                ConvBn::new(self.channels, 64, 7, 2, device),
                Some(
                    MaxPool2dConfig::new([3, 3])
                        .with_strides([2, 2])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(),
                ),
            ),
        };
        let expansion = if self.bottleneck { 4 } else { 1 };
        let mut blocks = Vec::new();
        let mut in_ch = 64;
        for (stage, &count) in self.layers.iter().enumerate() {
            let width = 64 << stage;
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                blocks.push(if self.bottleneck {
                    ResidualBlock::Bottleneck(Bottleneck::new(in_ch, width, stride, device))
                } else {
                    ResidualBlock::Basic(BasicBlock::new(in_ch, width, stride, device))
                });
                in_ch = width * expansion;
            }
        }
        ResNet {
            stem,
            max_pool,
            blocks,
            gap: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
        }
    }
}

/// Two 3×3 convolutions with a shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    conv1: ConvBn<B>,
    conv2: ConvBn<B>,
    shortcut: Option<ConvBn<B>>,
}

impl<B: Backend> BasicBlock<B> {
    fn new(in_ch: usize, out_ch: usize, stride: usize, device: &B::Device) -> Self {
        Self {
            conv1: ConvBn::new(in_ch, out_ch, 3, stride, device),
            conv2: ConvBn::new(out_ch, out_ch, 3, 1, device),
            shortcut: (stride != 1 || in_ch != out_ch)
                .then(|| ConvBn::new(in_ch, out_ch, 1, stride, device)),
        }
    }

    /// # Shapes
    /// - input: `[N, C_in, H, W]`; output: `[N, C_out, H/stride, W/stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let identity = match &self.shortcut {
            Some(s) => s.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.conv1.forward_relu(x);
        relu(self.conv2.forward(y) + identity)
    }
}

/// 1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4, with a shortcut.
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    reduce: ConvBn<B>,
    conv: ConvBn<B>,
    expand: ConvBn<B>,
    shortcut: Option<ConvBn<B>>,
}

impl<B: Backend> Bottleneck<B> {
    fn new(in_ch: usize, width: usize, stride: usize, device: &B::Device) -> Self {
        let out_ch = width * 4;
        Self {
            reduce: ConvBn::new(in_ch, width, 1, 1, device),
            conv: ConvBn::new(width, width, 3, stride, device),
            expand: ConvBn::new(width, out_ch, 1, 1, device),
            shortcut: (stride != 1 || in_ch != out_ch)
                .then(|| ConvBn::new(in_ch, out_ch, 1, stride, device)),
        }
    }

    /// # Shapes
    /// - input: `[N, C_in, H, W]`; output: `[N, 4·width, H/stride, W/stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let identity = match &self.shortcut {
            Some(s) => s.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.reduce.forward_relu(x);
        let y = self.conv.forward_relu(y);
        relu(self.expand.forward(y) + identity)
    }
}

/// A residual block of either kind.
// Built once per run; the variants' size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ResidualBlock<B: Backend> {
    /// ResNet-18/34 block.
    Basic(BasicBlock<B>),
    /// ResNet-50+ block.
    Bottleneck(Bottleneck<B>),
}

impl<B: Backend> ResidualBlock<B> {
    /// # Shapes
    /// - input: `[N, C_in, H, W]`; output: `[N, C_out, H', W']`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::Basic(b) => b.forward(x),
            Self::Bottleneck(b) => b.forward(x),
        }
    }
}

/// A residual network up to its global average pool.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    stem: ConvBn<B>,
    max_pool: Option<MaxPool2d>,
    blocks: Vec<ResidualBlock<B>>,
    gap: AdaptiveAvgPool2d,
}

impl<B: Backend> ResNet<B> {
    /// # Shapes
    /// - input: `[N, 3, H, W]`
    /// - output: `[N, 512]` (basic blocks) or `[N, 2048]` (bottlenecks)
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.stem.forward_relu(x);
        if let Some(pool) = &self.max_pool {
            x = max_pool2d(pool, x);
        }
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.gap.forward(x).flatten(1, 3)
    }
}
