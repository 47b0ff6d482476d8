//! An on-disk cache of decoded datasets, so a second start skips decoding.
//!
//! The cache file is a safetensors file (pixels, image entries, labels; class names, item
//! sources, skipped files and a CRC-32 in its metadata) named after a hash of a key that covers
//! every source file (path, size, modification time: [`files_fingerprint`],
//! [`crate::ImageIndex::fingerprint`]) and the decode settings, so a changed source is never
//! served stale. It is written atomically; a damaged cache file is
//! rebuilt, not trusted.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};

use crate::{Dataset, Error, ImageDataset, ImageStore, Result};

const CACHE_FORMAT: &str = "membank-dataset-cache";
const CACHE_VERSION: &str = "2";

/// A folder of decoded-dataset cache files.
#[derive(Debug, Clone)]
pub struct DatasetCache {
    dir: PathBuf,
}

impl DatasetCache {
    /// A cache kept in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache file for `name` under `key`: `<name>-<first 16 hex digits of SHA-256(key)>`.
    pub fn path_for(&self, name: &str, key: &str) -> PathBuf {
        let mut hash = Sha256::new();
        hash.update(CACHE_VERSION.as_bytes());
        hash.update([0]);
        hash.update(key.as_bytes());
        let digest = hash.finalize();
        let hex = crate::index::hex(&digest[..8]);
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}-{hex}.safetensors"))
    }

    /// Loads the cached dataset `name` under `key`, or builds it with `build` and caches it.
    ///
    /// `key` must cover every source file and the decode settings, e.g.
    /// `format!("{} {settings}", index.fingerprint())`, or for binary files
    /// [`files_fingerprint`] over all the files read, plus the settings. A cache file that cannot
    /// be read back is logged and rebuilt; failing to write the cache is logged and the freshly
    /// built dataset returned.
    ///
    /// # Errors
    /// Only those of `build`.
    pub fn load_or_build(
        &self,
        name: &str,
        key: &str,
        build: impl FnOnce() -> Result<ImageDataset>,
    ) -> Result<ImageDataset> {
        let path = self.path_for(name, key);
        if path.is_file() {
            match load(&path) {
                Ok(dataset) => {
                    tracing::info!(path = %path.display(), images = dataset.len(), "loaded dataset cache");
                    return Ok(dataset);
                }
                Err(error) => tracing::warn!(%error, "ignoring damaged dataset cache; rebuilding"),
            }
        }
        let dataset = build()?;
        if let Err(error) = fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))
            .and_then(|()| save(&dataset, &path))
        {
            tracing::warn!(%error, "could not write the dataset cache");
        }
        Ok(dataset)
    }
}

/// A stable key over `files`: each one's absolute path, size and modification time (ns), in the
/// order given. 64 hex digits. Use it as (part of) a [`DatasetCache`] key for every file a
/// dataset is read from.
///
/// # Errors
/// [`Error::Io`] naming a file that cannot be inspected.
pub fn files_fingerprint(files: &[&Path]) -> Result<String> {
    let mut hash = Sha256::new();
    hash.update(b"membank-files-1");
    for file in files {
        let meta = fs::metadata(file).map_err(|e| Error::io(file, e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let absolute = fs::canonicalize(file).map_err(|e| Error::io(file, e))?;
        hash.update([0]);
        hash.update(absolute.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(meta.len().to_le_bytes());
        hash.update(modified.to_le_bytes());
    }
    Ok(crate::index::hex(&hash.finalize()))
}

/// Writes `dataset` to `path` in the cache format (atomically).
///
/// # Errors
/// [`Error::Format`] when it cannot be encoded, [`Error::Core`] when it cannot be written.
pub fn save(dataset: &ImageDataset, path: &Path) -> Result<()> {
    let (pixels, entries) = dataset.store().raw_parts();
    let offsets: Vec<u8> = entries.iter().flat_map(|e| e.0.to_le_bytes()).collect();
    let sizes: Vec<u8> = entries
        .iter()
        .flat_map(|e| [e.1.to_le_bytes(), e.2.to_le_bytes()].concat())
        .collect();
    let labels: Option<Vec<u8>> = dataset
        .labels()
        .map(|l| l.iter().flat_map(|v| v.to_le_bytes()).collect());
    let n = entries.len();
    let encode =
        |e: safetensors::SafeTensorError| Error::format(path, format!("cannot encode cache: {e}"));
    let mut views = vec![
        (
            "pixels".to_string(),
            TensorView::new(Dtype::U8, vec![pixels.len()], pixels).map_err(encode)?,
        ),
        (
            "offsets".to_string(),
            TensorView::new(Dtype::U64, vec![n], &offsets).map_err(encode)?,
        ),
        (
            "sizes".to_string(),
            TensorView::new(Dtype::U32, vec![n, 2], &sizes).map_err(encode)?,
        ),
    ];
    if let Some(labels) = &labels {
        views.push((
            "labels".to_string(),
            TensorView::new(Dtype::U32, vec![n], labels).map_err(encode)?,
        ));
    }
    let (items, skipped) = dataset.encode_extras();
    let metadata = HashMap::from([
        ("items".to_string(), items),
        ("skipped".to_string(), skipped),
        ("format".to_string(), CACHE_FORMAT.to_string()),
        ("version".to_string(), CACHE_VERSION.to_string()),
        ("classes".to_string(), dataset.class_names().join("\n")),
        (
            "source".to_string(),
            dataset.source().to_string_lossy().into_owned(),
        ),
        (
            "checksum".to_string(),
            format!("{:08x}", crc32fast::hash(pixels)),
        ),
    ]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(encode)?;
    bank_core::write_atomic(path, &bytes)?;
    Ok(())
}

/// Reads a cache file written by [`save`], checking format, version, shapes and checksum.
///
/// # Errors
/// [`Error::Io`], or [`Error::Format`] naming the file and the problem.
pub fn load(path: &Path) -> Result<ImageDataset> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |reason: String| Error::format(path, reason);
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a dataset cache (truncated?): {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |key: &str| {
        meta.get(key)
            .cloned()
            .ok_or_else(|| bad(format!("metadata `{key}` missing")))
    };
    if get("format")? != CACHE_FORMAT || get("version")? != CACHE_VERSION {
        return Err(bad("not a dataset cache of this version".into()));
    }
    let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("unreadable: {e}")))?;
    let tensor = |name: &str| {
        file.tensor(name)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))
    };
    let pixels = tensor("pixels")?.data().to_vec();
    if format!("{:08x}", crc32fast::hash(&pixels)) != get("checksum")? {
        return Err(bad("pixel checksum mismatch".into()));
    }
    let offsets = tensor("offsets")?;
    let sizes = tensor("sizes")?;
    let n = offsets.shape()[0];
    if sizes.shape() != [n, 2] || offsets.dtype() != Dtype::U64 || sizes.dtype() != Dtype::U32 {
        return Err(bad("entry tensors have the wrong shape or type".into()));
    }
    let u32s = |data: &[u8]| -> Vec<u32> {
        data.chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let sizes = u32s(sizes.data());
    let entries: Vec<(u64, u32, u32)> = offsets
        .data()
        .chunks_exact(8)
        .zip(sizes.chunks_exact(2))
        .map(|(o, s)| (u64::from_le_bytes(o.try_into().unwrap()), s[0], s[1]))
        .collect();
    let store = ImageStore::from_raw_parts(path, pixels, &entries)?;
    let classes: Vec<String> = get("classes")?
        .split('\n')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let labels = match file.tensor("labels") {
        Ok(t) if t.shape() == [n] && t.dtype() == Dtype::U32 => {
            let labels = u32s(t.data());
            if labels.iter().any(|&l| l as usize >= classes.len()) {
                return Err(bad("a label is out of range".into()));
            }
            Some(labels)
        }
        Ok(_) => return Err(bad("labels have the wrong shape or type".into())),
        Err(_) => None,
    };
    ImageDataset::new(store, labels, classes, get("source")?)
        .decode_extras(&get("items")?, &get("skipped")?)
        .ok_or_else(|| bad("malformed item sources or skipped files".into()))
}
