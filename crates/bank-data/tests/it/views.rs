//! Views of mixed-size images (issue 10, bad input 3), antialiased downscaling, the evaluation
//! view of non-square images, one-channel output and channel statistics.

use std::sync::Arc;

use bank_data::*;

use crate::common::pattern;

fn store_of(sizes: &[(usize, usize)]) -> ImageDataset {
    let mut store = ImageStore::default();
    for (i, &(h, w)) in sizes.iter().enumerate() {
        store.push(h, w, &pattern(h * w * 3, i as u64 + 1));
    }
    ImageDataset::new(store, None, Vec::new(), "memory")
}

#[test]
fn mixed_sizes_render_at_the_configured_side_whatever_the_first_image() {
    // First image 64×40, one 256×256 among 32×32 ones.
    let mut sizes = vec![(64, 40)];
    sizes.extend([(32, 32); 20]);
    sizes.insert(7, (256, 256));
    let ds = Arc::new(store_of(&sizes));
    let transform = Transform::Augment(AugmentConfig::new(32).with_normalize(Normalize::IDENTITY));
    let loader = MultiViewLoader::new(
        Arc::clone(&ds),
        LoaderConfig::new(22, 2).with_shuffle(false),
        transform,
    )
    .unwrap();
    let batch = loader.batch(0, &(0..22).collect::<Vec<_>>()).unwrap();
    assert_eq!((batch.size, batch.channels), (32, 3));
    assert_eq!(batch.images.len(), 44 * 3 * 32 * 32);
    // Each view is a random-resized crop of its own original image (crop inside it).
    for (i, &(h, w)) in sizes.iter().enumerate() {
        let image = ds.get(i);
        for k in 0..2 {
            let p = transform.params(&image, 0, 0, k);
            assert!(
                p.crop.x >= 0.0 && p.crop.x + p.crop.width <= w as f32,
                "{i}"
            );
            assert!(
                p.crop.y >= 0.0 && p.crop.y + p.crop.height <= h as f32,
                "{i}"
            );
            let mut expected = vec![0f32; 3 * 32 * 32];
            transform.apply(&image, 0, 0, k, &mut expected);
            let row = (i * 2 + k as usize) * 3 * 32 * 32;
            assert_eq!(&batch.images[row..row + expected.len()], &expected[..]);
        }
    }
}

#[test]
fn large_downscales_are_antialiased_and_upscales_stay_bilinear() {
    // Vertical stripes of period 4 (0, 0, 255, 255): the true local mean is ½ everywhere.
    let (h, w) = (320, 320);
    let pixels: Vec<u8> = (0..h * w)
        .flat_map(|p| [if (p % w) % 4 < 2 { 0 } else { 255 }; 3])
        .collect();
    let image = ImageRef {
        index: 0,
        height: h,
        width: w,
        pixels: &pixels,
    };
    let out = crop_resize(&image, &CropRect::pixels(0, 0, w, h), false, 32);
    let worst = out.iter().map(|v| (v - 0.5).abs()).fold(0f32, f32::max);
    assert!(
        worst < 0.05,
        "aliasing: worst deviation from the mean {worst}"
    );
    // Plain bilinear would sample columns 4.5 + 10·o: always between two black columns.
    // A 2× downscale keeps the 2-tap bilinear (checked exactly in augment.rs), and so do
    // upscales: a 4×4 block upscaled to 8 keeps its corner values exact.
    let small: Vec<u8> = (0..16u8).flat_map(|v| [v * 10; 3]).collect();
    let image = ImageRef {
        index: 0,
        height: 4,
        width: 4,
        pixels: &small,
    };
    let up = crop_resize(&image, &CropRect::pixels(0, 0, 4, 4), false, 8);
    assert_eq!(up[0], 0.0);
    assert!((up[(8 * 8 - 1) * 3] - 150.0 / 255.0).abs() < 1e-6);
    // Bilinear at output (0, 1): source x = 0.25 → a quarter of the way from 0 to 10.
    assert!((up[3] - 2.5 / 255.0).abs() < 1e-6);
}

#[test]
fn the_eval_view_of_a_non_square_image_resizes_the_shorter_side_and_crops_the_centre() {
    // 40 rows × 64 columns: a red border of 12 columns on each side, grey ramps in the middle.
    let (h, w) = (40, 64);
    let pixels: Vec<u8> = (0..h * w)
        .flat_map(|p| {
            let (y, x) = (p / w, p % w);
            if !(12..52).contains(&x) {
                [255, 0, 0]
            } else {
                [(x * 4) as u8, (y * 6) as u8, 50]
            }
        })
        .collect();
    let image = ImageRef {
        index: 0,
        height: h,
        width: w,
        pixels: &pixels,
    };
    let eval = EvalConfig::new(20, 20).with_normalize(Normalize::IDENTITY);
    let p = eval.params(h, w);
    // Shorter side 40 → 20 (factor ½): the centre 40×40 of the original.
    assert_eq!(
        (p.crop.x, p.crop.y, p.crop.width, p.crop.height),
        (12.0, 0.0, 40.0, 40.0)
    );
    let mut out = vec![0f32; 3 * 20 * 20];
    Transform::Eval(eval).apply(&image, 0, 0, 0, &mut out);
    // No red border inside, and each output pixel is the mean of its 2×2 source block.
    for (y, x) in [(0, 0), (19, 19), (7, 13)] {
        let (sy, sx) = (2 * y, 12 + 2 * x);
        let mean = |c: usize| {
            [(sy, sx), (sy, sx + 1), (sy + 1, sx), (sy + 1, sx + 1)]
                .iter()
                .map(|&(yy, xx)| f32::from(pixels[(yy * w + xx) * 3 + c]))
                .sum::<f32>()
                / 4.0
                / 255.0
        };
        for c in 0..3 {
            assert!(
                (out[c * 400 + y * 20 + x] - mean(c)).abs() < 1e-5,
                "{y},{x},{c}"
            );
        }
    }
}

#[test]
fn one_channel_views_are_the_luma_of_the_three_channel_views() {
    let ds = Arc::new(store_of(&[(32, 32), (50, 30), (17, 90)]));
    for base in [
        Transform::Augment(
            AugmentConfig::new(16)
                .with_hue(0.2)
                .with_normalize(Normalize::IDENTITY),
        ),
        Transform::Eval(EvalConfig::new(16, 16).with_normalize(Normalize::IDENTITY)),
    ] {
        let one = match base {
            Transform::Augment(a) => Transform::Augment(a.with_channels(1)),
            Transform::Eval(e) => Transform::Eval(e.with_channels(1)),
        };
        let run = |t| {
            MultiViewLoader::new(
                Arc::clone(&ds),
                LoaderConfig::new(3, 2).with_shuffle(false),
                t,
            )
            .unwrap()
            .batch(1, &[0, 1, 2])
            .unwrap()
        };
        let (rgb, grey) = (run(base), run(one));
        assert_eq!(grey.channels, 1);
        assert_eq!(grey.images.len() * 3, rgb.images.len());
        let plane = 16 * 16;
        for row in 0..6 {
            for p in 0..plane {
                let v = |c: usize| rgb.images[(row * 3 + c) * plane + p];
                let luma = 0.299 * v(0) + 0.587 * v(1) + 0.114 * v(2);
                assert!((grey.images[row * plane + p] - luma).abs() < 1e-6);
            }
        }
    }
    let bad = Transform::Augment(AugmentConfig::new(16).with_channels(2));
    let e = MultiViewLoader::new(ds, LoaderConfig::new(1, 1), bad)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("augment.channels"), "{e}");
}

#[test]
fn channel_stats_match_a_direct_computation() {
    let ds = store_of(&[(8, 8), (5, 12), (3, 3)]);
    let (mut sum, mut sq, mut luma, mut luma_sq, mut n) = ([0f64; 3], [0f64; 3], 0f64, 0f64, 0f64);
    for i in 0..3 {
        for px in ds.get(i).pixels.chunks(3) {
            let v: Vec<f64> = px.iter().map(|&b| f64::from(b) / 255.0).collect();
            for c in 0..3 {
                sum[c] += v[c];
                sq[c] += v[c] * v[c];
            }
            let y = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
            luma += y;
            luma_sq += y * y;
            n += 1.0;
        }
    }
    let stats = channel_stats(&ds, 100, 0, 3).unwrap();
    for c in 0..3 {
        let m = sum[c] / n;
        assert!((f64::from(stats.mean[c]) - m).abs() < 1e-6);
        assert!((f64::from(stats.std[c]) - (sq[c] / n - m * m).sqrt()).abs() < 1e-6);
    }
    let grey = channel_stats(&ds, 100, 0, 1).unwrap();
    let m = luma / n;
    assert!((f64::from(grey.mean[0]) - m).abs() < 1e-6);
    assert!((f64::from(grey.std[0]) - (luma_sq / n - m * m).sqrt()).abs() < 1e-6);
    // A sample of 1 is one of the images, chosen by the seed.
    let one = channel_stats(&ds, 1, 5, 3).unwrap();
    let singles: Vec<Normalize> = (0..3)
        .map(|i| channel_stats(&ds.select(&[i]), 1, 0, 3).unwrap())
        .collect();
    assert!(singles.contains(&one));
    assert!(channel_stats(&ds, 0, 0, 3).is_err());
}

/// A channel that is constant over the sample (green and blue empty, as red-stained microscopy
/// saved as RGB) gets standard deviation 1 instead of 0, which `data.std` refuses and a
/// division would blow up; red keeps its own, computed by hand: values 0 and 1 in equal numbers
/// have mean 0.5 and standard deviation 0.5.
#[test]
fn a_constant_channel_is_normalised_with_standard_deviation_one() {
    let mut store = ImageStore::default();
    for i in 0..4 {
        let red = if i % 2 == 0 { 0 } else { 255 };
        store.push(2, 2, &[red, 0, 7].repeat(4));
    }
    let ds = ImageDataset::new(store, None, Vec::new(), "memory");
    let stats = channel_stats(&ds, 100, 0, 3).unwrap();
    assert!((stats.mean[0] - 0.5).abs() < 1e-6 && (stats.std[0] - 0.5).abs() < 1e-6);
    assert!(stats.mean[1].abs() < 1e-7 && (stats.mean[2] - 7.0 / 255.0).abs() < 1e-6);
    assert_eq!((stats.std[1], stats.std[2]), (1.0, 1.0), "{stats:?}");
}
