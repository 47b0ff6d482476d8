//! Feature export: the embedding, the pooled backbone features, the labels, the class names and
//! each image's source, as one safetensors file and as `.npy` files beside it, so that
//! `safetensors.numpy.load_file` and `numpy.load` read them directly.
//!
//! For `--out DIR/feats` (or `DIR/feats.safetensors`) the files are:
//! - `DIR/feats.safetensors`: tensors `embedding` `[N, D]` f32, `pooled_features` `[N, F]` f32
//!   (absent for the bank), `labels` `[N]` i64 (−1 when unlabelled), `merge_groups` `[N]` i64
//!   (the bank of a run with merging); metadata `class_names` and `item_sources` (JSON arrays);
//! - `DIR/feats.<name>.npy` for each tensor, plus `DIR/feats.class_names.npy` and
//!   `DIR/feats.item_sources.npy` (unicode string arrays, `<U`).
//!
//! An export never overwrites (an earlier export's files would mix with this one's) and leaves
//! nothing behind when it fails.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;
use safetensors::{Dtype, serialize_to_file, tensor::TensorView};

use crate::{Error, Result};

/// One numeric array of an export.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit integers.
    I64(Vec<i64>),
}

/// A named array and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    /// Tensor name (`embedding`, `pooled_features`, `labels`, `merge_groups`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Array,
}

/// Everything one export writes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Export {
    /// The numeric arrays, in order.
    pub arrays: Vec<Named>,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
    /// Source of every row (file path, `archive!member`, `file.bin#record`).
    pub item_sources: Vec<String>,
}

/// The safetensors path and the `.npy` prefix of `out`: `feats` and `feats.safetensors` both
/// give (`feats.safetensors`, `feats.`).
pub fn paths(out: &Path) -> (PathBuf, String) {
    let text = out.to_string_lossy();
    let stem = text
        .strip_suffix(".safetensors")
        .unwrap_or(&text)
        .to_string();
    (
        PathBuf::from(format!("{stem}.safetensors")),
        format!("{stem}."),
    )
}

/// The files [`write`] writes for `export` at `out`, the safetensors file first.
pub fn files(out: &Path, export: &Export) -> Vec<PathBuf> {
    let (st_path, prefix) = paths(out);
    let names = export.arrays.iter().map(|a| a.name.as_str());
    let npy = names.chain(["class_names", "item_sources"]);
    std::iter::once(st_path)
        .chain(npy.map(|name| PathBuf::from(format!("{prefix}{name}.npy"))))
        .collect()
}

/// Writes `export` as described in the module docs; returns the files written. Refuses to
/// overwrite: an earlier export at `out` (of this or another split, whose files would otherwise
/// mix with these) stays as it was. When a write fails, the files of this export already written
/// are removed.
///
/// # Errors
/// [`Error::Io`] naming a file that already exists or could not be written.
pub fn write(out: &Path, export: &Export) -> Result<Vec<PathBuf>> {
    let files = files(out, export);
    // Anything at one of the names, a dangling link included: nothing removed below is not ours.
    if let Some(taken) = files.iter().find(|f| f.symlink_metadata().is_ok()) {
        return Err(taken_error(taken));
    }
    if let Some(dir) = files[0].parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut written = Vec::new();
    let result = write_files(&files, export, &mut written);
    if result.is_err() {
        for f in &written {
            // Best effort: the error that stopped the export is the one to report.
            let _ = std::fs::remove_file(f);
        }
    }
    result.map(|()| written)
}

/// Refuses `out` before any work when its safetensors file exists (what [`write`] would refuse
/// after the features were computed), or when it names a folder.
///
/// # Errors
/// [`Error::Io`] naming the file or folder.
pub fn check_free(out: &Path) -> Result<()> {
    let text = out.to_string_lossy();
    if out.is_dir() || text.ends_with(std::path::MAIN_SEPARATOR) || text.ends_with('/') {
        // `DIR/` would give the hidden files `DIR/.safetensors`, `DIR/.embedding.npy`, ….
        return Err(Error::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "is a folder: --out names the files' common prefix, e.g. DIR/features for \
                 DIR/features.safetensors and DIR/features.embedding.npy",
            ),
        ));
    }
    let (st_path, _) = paths(out);
    match st_path.symlink_metadata() {
        Ok(_) => Err(taken_error(&st_path)),
        Err(_) => Ok(()),
    }
}

fn taken_error(path: &Path) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists: an export never overwrites one; choose another --out or delete the \
             earlier export's files",
        ),
    )
}

/// Writes the files of [`files`] in order, recording each in `written` once it exists.
fn write_files(files: &[PathBuf], export: &Export, written: &mut Vec<PathBuf>) -> Result<()> {
    let (st_path, npy) = files
        .split_first()
        .expect("files() lists the safetensors file");
    written.push(st_path.clone());
    write_safetensors(st_path, export)?;
    let (arrays, strings) = npy.split_at(export.arrays.len());
    for (a, path) in export.arrays.iter().zip(arrays) {
        written.push(path.clone());
        match &a.values {
            Array::F32(v) => write_npy(path, &a.shape, v)?,
            Array::I64(v) => write_npy(path, &a.shape, v)?,
        }
    }
    for (values, path) in [&export.class_names, &export.item_sources]
        .into_iter()
        .zip(strings)
    {
        written.push(path.clone());
        write_strings(path, values)?;
    }
    Ok(())
}

/// Little-endian bytes of an array, with its safetensors dtype.
fn bytes(values: &Array) -> (Dtype, Vec<u8>) {
    match values {
        Array::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Array::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    }
}

fn write_safetensors(path: &Path, export: &Export) -> Result<()> {
    let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = export
        .arrays
        .iter()
        .map(|a| {
            let (dtype, data) = bytes(&a.values);
            (a.name.clone(), dtype, a.shape.clone(), data)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| invalid(path, e))
        })
        .collect::<Result<Vec<(String, TensorView<'_>)>>>()?;
    let json = |v: &[String]| serde_json::to_string(v).expect("strings serialise");
    let metadata = HashMap::from([
        ("class_names".to_string(), json(&export.class_names)),
        ("item_sources".to_string(), json(&export.item_sources)),
    ]);
    serialize_to_file(
        views.iter().map(|(n, v)| (n.as_str(), v)),
        Some(metadata),
        path,
    )
    .map_err(|e| invalid(path, e))
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

fn write_npy<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[usize],
    values: &[T],
) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let shape: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(|e| Error::io(path, e))?;
    writer
        .extend(values.iter().copied())
        .map_err(|e| Error::io(path, e))?;
    writer.finish().map_err(|e| Error::io(path, e))
}

/// A 1-d unicode string array (`<U{longest}`), as numpy writes `np.array([...])` of `str`.
fn write_strings(path: &Path, strings: &[String]) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let longest = strings
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .max(1);
    let dtype = npyz::DType::Plain(
        format!("<U{longest}")
            .parse::<npyz::TypeStr>()
            .expect("valid type string"),
    );
    let mut writer = npyz::WriteOptions::<String>::new()
        .dtype(dtype)
        .shape(&[strings.len() as u64])
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(|e| Error::io(path, e))?;
    writer
        .extend(strings.iter().cloned())
        .map_err(|e| Error::io(path, e))?;
    writer.finish().map_err(|e| Error::io(path, e))
}

impl Export {
    /// The array named `name`.
    pub fn array(&self, name: &str) -> Option<&Named> {
        self.arrays.iter().find(|a| a.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--out DIR/` or an existing folder would write hidden files (`DIR/.safetensors`): refused,
    /// naming it; a prefix inside the folder is free.
    #[test]
    fn an_out_that_names_a_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let slash = PathBuf::from(format!("{}/new/", dir.path().display()));
        for out in [dir.path().to_path_buf(), slash] {
            let e = check_free(&out).unwrap_err().to_string();
            assert!(
                e.contains("is a folder") && e.contains("DIR/features"),
                "{e}"
            );
        }
        check_free(&dir.path().join("features")).unwrap();
        assert!(!dir.path().join("new").exists());
    }
}
