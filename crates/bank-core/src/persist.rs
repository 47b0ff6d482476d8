//! Saving and loading a bank: a safetensors file with a format version and a CRC-32 checksum,
//! written atomically (temp file + rename).
//!
//! Layout: tensor `bank` (`[N, D]`, f32 or f16, little-endian) plus optional u32 attachments
//! (e.g. merge groups from `bank-mining`); metadata `format`, `format_version`, `num_rows`, `dim`,
//! `momentum`, `precision` and `checksum` (CRC-32 of every tensor's bytes, in name order).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::{Error, HostBank, MemoryBank, Precision, Result};

/// Version of the bank file format this build writes and reads.
pub const BANK_FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "membank-bank";
const BANK_TENSOR: &str = "bank";

/// A named array of `u32` saved in the same file as the bank (e.g. a group id per row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Tensor name in the file; must not be `bank`.
    pub name: String,
    /// The values.
    pub values: Vec<u32>,
}

impl<B: Backend> MemoryBank<B> {
    /// Saves the bank to `path` atomically: a crash leaves either the old file or the new one.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with(path, &[])
    }

    /// Saves the bank and `attachments` to `path` atomically.
    ///
    /// # Errors
    /// An attachment named `bank` or twice, or an IO error naming the file.
    pub fn save_with(&self, path: impl AsRef<Path>, attachments: &[Attachment]) -> Result<()> {
        self.to_host().save_with(path, attachments)
    }

    /// Loads a bank saved by [`MemoryBank::save`] onto `device`.
    ///
    /// # Errors
    /// As [`MemoryBank::load_with`].
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        Ok(Self::load_with(path, device)?.0)
    }

    /// Loads a bank and its attachments.
    ///
    /// A truncated or corrupted file, another format version, metadata that disagrees with the
    /// stored tensor, or a checksum mismatch returns an error naming the file; never a panic.
    ///
    /// # Errors
    /// As above, and [`Error::UnsupportedPrecision`] for f16 rows on a backend without f16.
    pub fn load_with(
        path: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<(Self, Vec<Attachment>)> {
        let path = path.as_ref();
        let (host, attachments) = HostBank::load_with(path)?;
        let bank = host.to_device(device).map_err(|e| match e {
            Error::InvalidValue {
                field,
                value,
                reason,
            } => Error::corrupt(path, format!("invalid `{field}` {value}: {reason}")),
            other => other,
        })?;
        Ok((bank, attachments))
    }

    /// Loads a bank and checks that it has `num_rows` rows of dimension `dim`.
    ///
    /// # Errors
    /// As [`MemoryBank::load_with`], and a bank of another shape (naming the file).
    pub fn load_expecting(
        path: impl AsRef<Path>,
        device: &B::Device,
        num_rows: usize,
        dim: usize,
    ) -> Result<(Self, Vec<Attachment>)> {
        let path = path.as_ref();
        let (bank, attachments) = Self::load_with(path, device)?;
        if (bank.num_rows(), bank.dim()) != (num_rows, dim) {
            return Err(Error::corrupt(
                path,
                format!(
                    "holds a {}×{} bank, expected {num_rows}×{dim}",
                    bank.num_rows(),
                    bank.dim()
                ),
            ));
        }
        Ok((bank, attachments))
    }
}

impl HostBank {
    /// Saves the bank and `attachments` to `path` atomically.
    ///
    /// # Errors
    /// An attachment named `bank` or twice, or an IO error naming the file.
    pub fn save_with(&self, path: impl AsRef<Path>, attachments: &[Attachment]) -> Result<()> {
        let path = path.as_ref();
        let rows_bytes = self.rows.as_bytes();
        let (n, d) = (self.num_rows(), self.dim());
        let dtype = match self.precision {
            Precision::F32 => Dtype::F32,
            Precision::F16 => Dtype::F16,
        };
        let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, &[u8])> = BTreeMap::new();
        tensors.insert(BANK_TENSOR.into(), (dtype, vec![n, d], rows_bytes));
        let attachment_bytes: Vec<(String, Vec<u8>)> = attachments
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    a.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        for ((name, bytes), a) in attachment_bytes.iter().zip(attachments) {
            if tensors.contains_key(name) {
                return Err(Error::InvalidValue {
                    field: "attachment name",
                    value: name.clone(),
                    reason: "names must be unique and not `bank`",
                });
            }
            tensors.insert(name.clone(), (Dtype::U32, vec![a.values.len()], bytes));
        }

        let mut hasher = crc32fast::Hasher::new();
        for (_, _, bytes) in tensors.values() {
            hasher.update(bytes);
        }
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT_NAME.to_string()),
            (
                "format_version".to_string(),
                BANK_FORMAT_VERSION.to_string(),
            ),
            ("num_rows".to_string(), n.to_string()),
            ("dim".to_string(), d.to_string()),
            ("momentum".to_string(), format!("{:?}", self.momentum)),
            ("precision".to_string(), self.precision.name().to_string()),
            ("checksum".to_string(), format!("{:08x}", hasher.finalize())),
        ]);
        let mut views = Vec::with_capacity(tensors.len());
        for (name, (dtype, shape, bytes)) in &tensors {
            let view = TensorView::new(*dtype, shape.clone(), bytes)
                .map_err(|e| Error::corrupt(path, format!("cannot encode `{name}`: {e}")))?;
            views.push((name.clone(), view));
        }
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::corrupt(path, format!("cannot encode bank: {e}")))?;
        write_atomic(path, &bytes)?;
        tracing::debug!(path = %path.display(), rows = n, dim = d, "saved memory bank");
        Ok(())
    }

    /// Loads a bank and its attachments.
    ///
    /// A truncated or corrupted file, another format version, metadata that disagrees with the
    /// stored tensor, or a checksum mismatch returns an error naming the file; never a panic.
    ///
    /// # Errors
    /// As above, naming the file.
    pub fn load_with(path: impl AsRef<Path>) -> Result<(Self, Vec<Attachment>)> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let not_bank = |e: safetensors::SafeTensorError| {
            Error::corrupt(
                path,
                format!("not a readable membank bank file (truncated or corrupted?): {e}"),
            )
        };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(not_bank)?;
        let file = SafeTensors::deserialize(&bytes).map_err(not_bank)?;
        let meta = Meta {
            path,
            map: header.metadata().clone().unwrap_or_default(),
        };

        if meta.get("format")? != FORMAT_NAME {
            return Err(Error::corrupt(
                path,
                format!(
                    "format is `{}`, expected `{FORMAT_NAME}`",
                    meta.get("format")?
                ),
            ));
        }
        let version: u32 = meta.parse("format_version")?;
        if version != BANK_FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: BANK_FORMAT_VERSION,
            });
        }
        let n: usize = meta.parse("num_rows")?;
        let d: usize = meta.parse("dim")?;
        let momentum: f64 = meta.parse("momentum")?;
        let precision: Precision = meta.get("precision")?.parse().map_err(|_| {
            Error::corrupt(
                path,
                format!(
                    "unknown precision `{}`",
                    meta.get("precision").unwrap_or_default()
                ),
            )
        })?;

        let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut hasher = crc32fast::Hasher::new();
        for name in &names {
            let view = file.tensor(name).map_err(not_bank)?;
            hasher.update(view.data());
        }
        let computed = format!("{:08x}", hasher.finalize());
        let stored = meta.get("checksum")?;
        if stored != computed {
            return Err(Error::corrupt(
                path,
                format!(
                    "checksum mismatch (stored {stored}, computed {computed}): the file is corrupted"
                ),
            ));
        }

        let bank = file
            .tensor(BANK_TENSOR)
            .map_err(|_| Error::corrupt(path, "no `bank` tensor"))?;
        let want_dtype = match precision {
            Precision::F32 => Dtype::F32,
            Precision::F16 => Dtype::F16,
        };
        if bank.dtype() != want_dtype || bank.shape() != [n, d] {
            return Err(Error::corrupt(
                path,
                format!(
                    "`bank` is {:?} {:?}, but the metadata says {precision} [{n}, {d}]",
                    bank.dtype(),
                    bank.shape()
                ),
            ));
        }
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::corrupt(
                path,
                format!("invalid `momentum` {momentum}: must lie in [0, 1)"),
            ));
        }
        let bank_out = HostBank {
            rows: TensorData::from_bytes_vec(bank.data().to_vec(), [n, d], precision.dtype()),
            momentum,
            precision,
        };

        let mut attachments = Vec::new();
        for name in names.iter().filter(|n| *n != BANK_TENSOR) {
            let view = file.tensor(name).map_err(not_bank)?;
            if view.dtype() != Dtype::U32 || view.shape().len() != 1 {
                return Err(Error::corrupt(
                    path,
                    format!("attachment `{name}` is not a u32 vector"),
                ));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            attachments.push(Attachment {
                name: name.clone(),
                values,
            });
        }
        tracing::debug!(path = %path.display(), rows = n, dim = d, "loaded memory bank");
        Ok((bank_out, attachments))
    }
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same directory, flushed to
/// disk, then renamed over `path`. Readers see the old file or the new one, never a partial one.
///
/// The temporary file (`.NAME.PID.tmp`) is locked while it is written. A process killed
/// mid-write leaves it behind, unlocked: the next write of the same `path` removes such
/// leftovers unmodified for a minute (a decoded dataset cache is hundreds of megabytes), and
/// leaves those another process is still writing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::corrupt(path, "not a file path"))?
        .to_string_lossy();
    remove_abandoned(&dir, &file_name);
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        // Released when `file` closes, or when this process dies however it dies.
        let _ = file.try_lock();
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Persist the rename itself; not every platform can open a directory, so this is best-effort.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// How long a temporary file of [`write_atomic`] must have gone unmodified before an unlocked
/// one counts as abandoned.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the temporary files of [`write_atomic`] for `file_name` in `dir` that no process
/// writes any more (their lock can be taken). Best effort: what cannot be read or removed stays.
fn remove_abandoned(dir: &Path, file_name: &str) {
    let prefix = format!(".{file_name}.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.strip_suffix(".tmp"))
        else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Old enough that its writer is past taking the lock (taken right after creating it).
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ABANDONED_AFTER));
        let abandoned = old
            && File::options()
                .write(true)
                .open(entry.path())
                .is_ok_and(|f| f.try_lock().is_ok());
        if abandoned {
            tracing::info!(file = %entry.path().display(), "removed a partial file an interrupted write left");
            let _ = fs::remove_file(entry.path());
        }
    }
}

struct Meta<'a> {
    path: &'a Path,
    map: HashMap<String, String>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<String> {
        self.map
            .get(key)
            .cloned()
            .ok_or_else(|| Error::corrupt(self.path, format!("missing metadata field `{key}`")))
    }

    fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let raw = self.get(key)?;
        raw.parse().map_err(|_| {
            Error::corrupt(
                self.path,
                format!("metadata field `{key}` has invalid value `{raw}`"),
            )
        })
    }
}
