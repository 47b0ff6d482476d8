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
