//! Model shapes, unit norm, and parameter counts against torchvision's published figures.

use bank_train::model::{Arch, ModelConfig};
use burn::backend::NdArray;
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::Distribution;

/// BatchNorm channels of a ResNet: the stem, every block's norms and each stage's shortcut.
fn resnet_bn_channels(layers: [usize; 4], bottleneck: bool) -> usize {
    let mut total = 64;
    for (stage, &blocks) in layers.iter().enumerate() {
        let w = 64 << stage;
        let (per_block, out) = if bottleneck {
            (6 * w, 4 * w)
        } else {
            (2 * w, w)
        };
        // The first block of a stage has a projection shortcut unless shapes already match.
        let shortcut = if stage == 0 && !bottleneck { 0 } else { out };
        total += blocks * per_block + shortcut;
    }
    total
}

/// `model` maps two random `side`×`side` images to two unit rows of 128.
fn embeds_unit_rows(model: &bank_train::model::EmbeddingNet<NdArray>, arch: Arch, side: usize) {
    let device = Default::default();
    let images =
        Tensor::<NdArray, 4>::random([2, 3, side, side], Distribution::Normal(0.0, 1.0), &device);
    let f = model.forward(images);
    assert_eq!(f.dims(), [2, 128], "{arch:?} at {side}×{side}");
    let norms: Vec<f32> = f
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .into_data()
        .to_vec()
        .unwrap();
    assert!(
        norms.iter().all(|n| (n - 1.0).abs() < 1e-4),
        "{arch:?}: norms {norms:?}"
    );
}

/// `backbone_params` counts trainable parameters as PyTorch does; burn's `num_params` also counts
/// BatchNorm running mean and variance (2 per channel), given as `bn_channels`.
fn check(arch: Arch, side: usize, backbone_params: usize, bn_channels: usize) {
    let _turn = crate::backend_turn();
    let device = Default::default();
    let model = ModelConfig::new(arch, 128).init::<NdArray>(&device);
    embeds_unit_rows(&model, arch, side);
    // Backbone + BatchNorm running statistics + projection (features·128 weights + 128 biases).
    let features = match arch {
        Arch::SmallCnn => 128,
        Arch::Resnet18 | Arch::Resnet18Imagenet => 512,
        _ => 2048,
    };
    assert_eq!(
        model.num_params(),
        backbone_params + 2 * bn_channels + features * 128 + 128,
        "{arch:?}"
    );
}

#[test]
fn small_cnn_has_the_specified_layers() {
    // 3·3·3·32 + 2·32 + 3·3·32·64 + 2·64 + 3·3·64·128 + 2·128 (no conv bias).
    check(
        Arch::SmallCnn,
        32,
        864 + 64 + 18_432 + 128 + 73_728 + 256,
        32 + 64 + 128,
    );
}

#[test]
fn resnet18_with_cifar_stem_matches_torchvision_minus_the_stem_difference() {
    // torchvision resnet18 without fc: 11,176,512; the 3×3 stem has 1,728 weights, not 9,408.
    let bn = resnet_bn_channels([2, 2, 2, 2], false);
    assert_eq!(bn, 4_800);
    check(Arch::Resnet18, 32, 11_176_512 - 9_408 + 1_728, bn);
}

#[test]
fn resnet50_with_imagenet_stem_matches_torchvision() {
    // torchvision resnet50: 25,557,032 parameters, of which fc has 2,049,000.
    let bn = resnet_bn_channels([3, 4, 6, 3], true);
    assert_eq!(bn, 26_560);
    check(Arch::Resnet50, 64, 25_557_032 - 2_049_000, bn);
}

/// Collects the standard deviation of every 4-d (conv) and 2-d (linear) weight, in visit order.
struct WeightStds(Vec<(usize, [usize; 2], f64)>);

impl<B: Backend> burn::module::ModuleVisitor<B> for WeightStds {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
        let t = param.val();
        let dims = t.dims();
        if D != 4 && D != 2 {
            return;
        }
        let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        self.0.push((D, [dims[0], dims[1]], var.sqrt()));
    }
}

#[test]
fn small_cnn_weights_start_as_pytorchs_defaults() {
    // PyTorch's nn.Conv2d and nn.Linear draw U(±1/√fan_in): std 1/√(3·fan_in). The small CNN's
    // convs have fan_in 9·C_in (C_in = 3, 32, 64) and the head 128. A PyTorch peer of the same
    // network starts there; torchvision's fan-out init would be 0.75×, 1.73×, 1.73× of it.
    let _turn = crate::backend_turn();
    let device = Default::default();
    <NdArray as Backend>::seed(&device, 7);
    let model = ModelConfig::new(Arch::SmallCnn, 128).init::<NdArray>(&device);
    let mut stds = WeightStds(Vec::new());
    model.visit(&mut stds);
    let weights: Vec<(usize, f64)> = stds
        .0
        .iter()
        .map(|&(d, dims, std)| {
            // conv [out, in, k, k]: fan_in = in·9; linear (burn stores [in, out]): fan_in = in.
            let fan_in = if d == 4 { dims[1] * 9 } else { dims[0] };
            (fan_in, std)
        })
        .collect();
    assert_eq!(weights.len(), 4, "three convs and the head: {weights:?}");
    for (fan_in, std) in weights {
        let expected = 1.0 / (3.0 * fan_in as f64).sqrt();
        assert!(
            (std / expected - 1.0).abs() < 0.06,
            "fan_in {fan_in}: std {std:.4}, PyTorch default {expected:.4}"
        );
    }
}

/// Every backbone maps views of its `min_image_size` to unit embeddings (what the config check
/// lets through works), and the small CNN's minimum is tight: one pixel less and its second
/// max-pool has nothing left to pool.
#[test]
fn every_backbone_embeds_views_of_its_minimum_size() {
    let _turn = crate::backend_turn();
    let device = Default::default();
    for arch in [
        Arch::SmallCnn,
        Arch::Resnet18,
        Arch::Resnet18Imagenet,
        Arch::Resnet50,
        Arch::Resnet50Cifar,
    ] {
        let model = ModelConfig::new(arch, 128).init::<NdArray>(&device);
        embeds_unit_rows(&model, arch, arch.min_image_size());
    }
    // One pixel less: the small CNN either panics or gives no finite embedding.
    let model = ModelConfig::new(Arch::SmallCnn, 128).init::<NdArray>(&device);
    let images =
        Tensor::<NdArray, 4>::random([2, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
    let finite = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let f: Vec<f32> = model.forward(images).into_data().to_vec().unwrap();
        f.iter().all(|v| v.is_finite())
    }));
    assert!(
        !matches!(finite, Ok(true)),
        "the small CNN embeds 3×3 views"
    );
}
