//! The embedding networks: a backbone, a linear projection to D, L2 normalisation.

mod batch_norm;
mod embedding;
mod host;
mod resnet;
mod small_cnn;

pub use batch_norm::{BatchNorm2d, BatchNorm2dConfig};
pub use embedding::{Arch, Backbone, EmbeddingNet, ModelConfig};
pub use host::{conv2d, max_pool2d, relu};
pub use resnet::{BasicBlock, Bottleneck, ResNet, ResNetConfig, ResidualBlock, Stem};
pub use small_cnn::{SmallCnn, SmallCnnConfig};

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;

/// torchvision's ResNet initialisation of convolutions: Kaiming normal, fan-out, ReLU gain.
pub const TORCHVISION_RESNET_INIT: nn::Initializer = nn::Initializer::KaimingNormal {
    gain: std::f64::consts::SQRT_2,
    fan_out_only: true,
};

/// PyTorch's default initialisation of `nn.Conv2d` (`kaiming_uniform_(a=√5)`): uniform in
/// ±1/√fan_in, i.e. Kaiming uniform with gain 1/√3. The small CNN uses it, as a PyTorch
/// implementation of it does; torchvision's fan-out init makes conv2/conv3 1.7× larger, and under
/// BatchNorm and weight decay they then learn about half as fast (see benches/peer/README.md).
pub const PYTORCH_CONV_INIT: nn::Initializer = nn::Initializer::KaimingUniform {
    gain: 0.577_350_269_189_625_8, // 1/√3
    fan_out_only: false,
};

/// A bias-free `k × k` convolution with "same" padding (for odd `k`) and the given stride.
pub(crate) fn conv(
    in_ch: usize,
    out_ch: usize,
    k: usize,
    stride: usize,
    init: nn::Initializer,
) -> Conv2dConfig {
    Conv2dConfig::new([in_ch, out_ch], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .with_bias(false)
        .with_initializer(init)
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
    /// A `k × k` conv with `stride` from `in_ch` to `out_ch` channels, then BatchNorm; the conv
    /// initialised as torchvision's ResNets ([`TORCHVISION_RESNET_INIT`]).
    pub fn new(in_ch: usize, out_ch: usize, k: usize, stride: usize, device: &B::Device) -> Self {
        Self::with_init(in_ch, out_ch, k, stride, TORCHVISION_RESNET_INIT, device)
    }

    /// As [`ConvBn::new`] with the conv initialised by `init`.
    pub fn with_init(
        in_ch: usize,
        out_ch: usize,
        k: usize,
        stride: usize,
        init: nn::Initializer,
        device: &B::Device,
    ) -> Self {
        Self {
            conv: conv(in_ch, out_ch, k, stride, init).init(device),
            bn: BatchNorm2dConfig::new(out_ch).init(device),
        }
    }

    /// # Shapes
    /// - input: `[N, C_in, H, W]`
    /// - output: `[N, C_out, H/stride, W/stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_then(x, false)
    }

    /// `relu(self.forward(x))`; on LibTorch one operation of ATen's with the convolution and
    /// the normalisation (`host::conv_bn`).
    ///
    /// # Shapes
    /// - input: `[N, C_in, H, W]`
    /// - output: `[N, C_out, H/stride, W/stride]`
    pub fn forward_relu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_then(x, true)
    }

    /// conv → BatchNorm, then ReLU when `then_relu`: one operation of ATen's on LibTorch, the
    /// layers one by one elsewhere.
    ///
    /// # Shapes
    /// - input: `[N, C_in, H, W]`
    /// - output: `[N, C_out, H/stride, W/stride]`
    fn forward_then(&self, x: Tensor<B, 4>, then_relu: bool) -> Tensor<B, 4> {
        let x = match host::conv_bn(&self.conv, &self.bn, x, then_relu) {
            Ok(y) => return y,
            Err(x) => x,
        };
        let y = self.bn.forward(conv2d(&self.conv, x));
        if then_relu { relu(y) } else { y }
    }
}
