//! Writes an image-folder dataset made from CIFAR-10, to try `dataset = "image_folder"` on data
//! unlike CIFAR's: grey PNGs of mixed sizes in `train/<class>/` and `test/<class>/`.
//!
//! ```sh
//! cargo run --release -p bank-train --example make_image_folder -- \
//!     ../shared/data/cifar10/cifar10-jpeg.tar.gz /tmp/grey_mixed 500 100
//! ```
//! Arguments: the CIFAR-10 JPEG archive, the output folder, training images per class, test
//! images per class. Sizes cycle through 32×32, 48×40, 40×56, 24×24 and 64×64; image 0 of every
//! class is 256×256. The same arguments always give the same files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bank_data::{Dataset, DecodeOptions, FolderLayout, ImageDataset, read_image_archive};
use image::imageops::FilterType;

const SIZES: [(u32, u32); 5] = [(32, 32), (48, 40), (40, 56), (24, 24), (64, 64)];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [archive, out, train, test] = args.as_slice() else {
        bail!("usage: make_image_folder ARCHIVE OUT TRAIN_PER_CLASS TEST_PER_CLASS");
    };
    let out = PathBuf::from(out);
    if out.exists() {
        bail!("{} exists; choose a new folder", out.display());
    }
    let count = |what: &str, value: &str| -> Result<usize> {
        match value.parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{what}: `{value}` is not a whole number above 0"),
        }
    };
    let counts = [
        count("TRAIN_PER_CLASS", train)?,
        count("TEST_PER_CLASS", test)?,
    ];
    if !Path::new(archive).is_file() {
        bail!("{archive}: no such file (the CIFAR-10 JPEG archive)");
    }
    for (split, per_class) in [("train", counts[0]), ("test", counts[1])] {
        let set = read_image_archive(
            archive,
            split,
            FolderLayout::ClassFolders,
            DecodeOptions::default(),
        )?;
        let written = write_split(&set, &out.join(split), per_class)?;
        println!(
            "{split}: {written} grey PNGs in {}",
            out.join(split).display()
        );
    }
    Ok(())
}

/// The first `per_class` images of every class, grey, resized by their rank in the class.
fn write_split(set: &ImageDataset, dir: &Path, per_class: usize) -> Result<usize> {
    let mut taken = vec![0usize; set.class_names().len()];
    let mut written = 0;
    for i in 0..set.len() {
        let label = set.label(i).context("labelled")? as usize;
        let rank = taken[label];
        if rank == per_class {
            continue;
        }
        taken[label] += 1;
        let (w, h) = if rank == 0 {
            (256, 256)
        } else {
            SIZES[rank % SIZES.len()]
        };
        let loaded = set.image(i)?;
        let img = loaded.view();
        let rgb =
            image::RgbImage::from_raw(img.width as u32, img.height as u32, img.pixels.to_vec())
                .context("pixel buffer")?;
        let grey = image::DynamicImage::ImageRgb8(image::imageops::resize(
            &rgb,
            w,
            h,
            FilterType::Triangle,
        ))
        .to_luma8();
        let path = dir
            .join(&set.class_names()[label])
            .join(format!("{rank:04}.png"));
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        grey.save(&path)
            .with_context(|| path.display().to_string())?;
        written += 1;
    }
    Ok(written)
}
