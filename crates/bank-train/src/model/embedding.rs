//! Backbone → linear projection to D → L2 normalisation: the network f of the method.

use bank_core::l2_normalize;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{ResNet, ResNetConfig, SmallCnn, SmallCnnConfig, Stem};

/// Which backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// The small CNN for CPU runs.
    SmallCnn,
    /// ResNet-18 with the CIFAR stem.
    Resnet18,
    /// ResNet-18 with the ImageNet stem.
    Resnet18Imagenet,
    /// ResNet-50 with the ImageNet stem.
    Resnet50,
    /// ResNet-50 with the CIFAR stem.
    Resnet50Cifar,
}

impl Arch {
    /// The backbone's first activation for a view of side `size` pixels: (channels, side) of the
    /// stem convolution's output, which the network holds for every view of a batch: the small
    /// CNN's 32 channels and a CIFAR stem's 64 at full size, an ImageNet stem's 64 at half
    /// (stride 2, padding 3, 7×7).
    pub fn first_activation(self, size: usize) -> (usize, usize) {
        match self {
            Self::SmallCnn => (32, size),
            Self::Resnet18 | Self::Resnet50Cifar => (64, size),
            Self::Resnet18Imagenet | Self::Resnet50 => (64, (size + 2 * 3 - 7) / 2 + 1),
        }
    }

    /// The backbone's output width, which the embedding head projects to `model.dim`: the small
    /// CNN's 128, a ResNet-18's 512, a ResNet-50's 2048.
    pub fn features(self) -> usize {
        match self {
            Self::SmallCnn => 128,
            Self::Resnet18 | Self::Resnet18Imagenet => 512,
            Self::Resnet50 | Self::Resnet50Cifar => 2048,
        }
    }

    /// The smallest input side (pixels) the backbone maps to a non-empty feature map: the small
    /// CNN's two 2×2 max-pools (floor) need 4; a ResNet's stride-2 3×3 convolutions and max-pool
    /// (padding 1) keep at least one position from any size.
    pub fn min_image_size(self) -> usize {
        match self {
            Self::SmallCnn => 4,
            Self::Resnet18 | Self::Resnet18Imagenet | Self::Resnet50 | Self::Resnet50Cifar => 1,
        }
    }
}

/// Configuration of an [`EmbeddingNet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// The backbone.
    pub arch: Arch,
    /// Embedding dimension D (128).
    pub dim: usize,
    /// Input channels (3 RGB, 1 grey).
    pub channels: usize,
}

impl ModelConfig {
    /// `arch` projected to `dim`, on RGB input.
    pub fn new(arch: Arch, dim: usize) -> Self {
        Self {
            arch,
            dim,
            channels: 3,
        }
    }

    /// Sets the input channels (1 for grey input).
    pub fn with_channels(mut self, channels: usize) -> Self {
        self.channels = channels;
        self
    }

    /// Builds the network on `device` (seed the backend first for reproducible weights).
    pub fn init<B: Backend>(&self, device: &B::Device) -> EmbeddingNet<B> {
        let (backbone, features) = match self.arch {
            Arch::SmallCnn => (
                Backbone::Small(
                    SmallCnnConfig::new()
                        .with_channels(self.channels)
                        .init(device),
                ),
                SmallCnn::<B>::FEATURES,
            ),
            arch => {
                let config = match arch {
                    Arch::Resnet18 => ResNetConfig::resnet18(Stem::Cifar),
                    Arch::Resnet18Imagenet => ResNetConfig::resnet18(Stem::ImageNet),
                    Arch::Resnet50 => ResNetConfig::resnet50(Stem::ImageNet),
                    _ => ResNetConfig::resnet50(Stem::Cifar),
                };
                let features = config.features();
                (
                    Backbone::ResNet(config.with_channels(self.channels).init(device)),
                    features,
                )
            }
        };
        debug_assert_eq!(
            features,
            self.arch.features(),
            "Arch::features of {:?}",
            self.arch
        );
        EmbeddingNet {
            backbone,
            head: LinearConfig::new(features, self.dim).init(device),
        }
    }
}

/// The backbone of an [`EmbeddingNet`].
// Built once per run; the variants' size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    /// The small CNN.
    Small(SmallCnn<B>),
    /// A ResNet.
    ResNet(ResNet<B>),
}

/// f: image → unit vector in R^D.
#[derive(Module, Debug)]
pub struct EmbeddingNet<B: Backend> {
    backbone: Backbone<B>,
    head: Linear<B>,
}

impl<B: Backend> EmbeddingNet<B> {
    /// Backbone features before the projection (for a linear probe).
    ///
    /// # Shapes
    /// - input: `[N, C, H, W]`; output: `[N, F]`
    pub fn features(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        match &self.backbone {
            Backbone::Small(n) => n.forward(images),
            Backbone::ResNet(n) => n.forward(images),
        }
    }

    /// The L2-normalised embedding.
    ///
    /// # Shapes
    /// - input: `[N, C, H, W]`; output: `[N, D]`, unit rows
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        l2_normalize(self.head.forward(self.features(images)))
    }

    /// The pooled backbone features and the L2-normalised embedding of one forward pass.
    ///
    /// # Shapes
    /// - input: `[N, C, H, W]`; output: (`[N, F]`, `[N, D]` unit rows)
    pub fn features_and_embedding(&self, images: Tensor<B, 4>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let pooled = self.features(images);
        let embedding = l2_normalize(self.head.forward(pooled.clone()));
        (pooled, embedding)
    }
}
