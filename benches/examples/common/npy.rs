//! `.npy` files exchanged with the Python peers (`benches/peer/`): read and write whole arrays.
//! Shared by the examples through `#[path = "common/npy.rs"] mod npy;`.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use anyhow::Context;
use npyz::WriterBuilder;

/// The values of a `.npy` file (row-major) and its shape.
///
/// # Errors
/// A file that cannot be opened, is not a `.npy` file or does not hold values of type `T`; the
/// error names the file.
#[allow(dead_code)] // Not every example reads.
pub fn read<T: npyz::Deserialize>(path: &Path) -> anyhow::Result<(Vec<T>, Vec<usize>)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .with_context(|| format!("{}: not a .npy file", path.display()))?;
    let shape = npy.shape().iter().map(|&s| s as usize).collect();
    let dtype = npy.dtype();
    let values = npy
        .into_vec::<T>()
        .with_context(|| format!("{}: unexpected value type {dtype:?}", path.display()))?;
    Ok((values, shape))
}

/// Writes `values` (row-major, `shape`) as a `.npy` file.
///
/// # Errors
/// A file that cannot be created or written; the error names it.
pub fn write<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[usize],
    values: &[T],
) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let shape: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .with_context(|| path.display().to_string())?;
    writer
        .extend(values.iter().copied())
        .with_context(|| path.display().to_string())?;
    writer
        .finish()
        .with_context(|| path.display().to_string())?;
    Ok(())
}
