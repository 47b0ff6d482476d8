//! Helpers shared by the tests.

use std::path::PathBuf;

/// `../shared/data` beside the workspace (override with `MEMBANK_SHARED_DATA`).
pub fn shared_data() -> PathBuf {
    if let Ok(dir) = std::env::var("MEMBANK_SHARED_DATA") {
        return PathBuf::from(dir);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(
        dir.join("cifar10").is_dir(),
        "real test data missing: expected {} (see ../shared/data/README.md)",
        dir.display()
    );
    dir
}

/// Writes a PNG of `height × width` RGB pixels.
pub fn write_png(path: &std::path::Path, height: u32, width: u32, pixels: &[u8]) {
    image::RgbImage::from_raw(width, height, pixels.to_vec())
        .unwrap()
        .save(path)
        .unwrap();
}

/// A deterministic pseudo-random byte pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// The first `n` members under `prefix` (e.g. `"test/cat/"`) of the real CIFAR-10 JPEG archive:
/// `(member name, bytes)`.
pub fn cifar_jpegs(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let archive = shared_data().join("cifar10/cifar10-jpeg.tar.gz");
    let file = std::fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_string();
        if entry.header().entry_type().is_file() && name.starts_with(prefix) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            out.push((name, bytes));
            if out.len() == n {
                break;
            }
        }
    }
    out
}

/// Decodes with the `image` crate alone (the independent reference): RGB8 pixels.
pub fn reference_rgb(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().into_rgb8()
}
