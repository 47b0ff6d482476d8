//! The checksums of a checkpoint's files (`checksums.txt`), written last into the checkpoint
//! folder and verified before any file of it is decoded.
//!
//! Format (text, one entry a line):
//!
//! ```text
//! membank-checkpoint 1
//! model.bin 123456 1a2b3c4d
//! ...
//! end 9f8e7d6c
//! ```
//!
//! Each entry is a file name, its length in bytes and the CRC-32 of its bytes (hex); the `end`
//! line holds the CRC-32 of every line before it, so damage to the list itself is found too.

use std::fs;
use std::path::Path;

use crate::{Error, Result};

/// The file name of the checksum list inside a checkpoint folder.
pub const MANIFEST_FILE: &str = "checksums.txt";
const HEADER: &str = "membank-checkpoint 1";

/// One file of a checkpoint: name, length and CRC-32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name inside the checkpoint folder.
    pub name: String,
    /// Length in bytes.
    pub bytes: u64,
    /// CRC-32 of the contents.
    pub crc32: u32,
}

impl Entry {
    /// The entry of file `name` holding `bytes`.
    pub fn of(name: &str, bytes: &[u8]) -> Self {
        Self {
            name: name.to_string(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        }
    }
}

/// The checksum list of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// The files, in the order written.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// The list as written to `checksums.txt`.
    pub fn to_text(&self) -> String {
        let mut text = format!("{HEADER}\n");
        for e in &self.entries {
            text.push_str(&format!("{} {} {:08x}\n", e.name, e.bytes, e.crc32));
        }
        let end = crc32fast::hash(text.as_bytes());
        text.push_str(&format!("end {end:08x}\n"));
        text
    }

    /// Parses the contents of `checksums.txt`; `path` only names it in errors.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming `path` for anything but a complete, undamaged list.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::checkpoint(path, reason);
        let text = std::str::from_utf8(bytes)
            .map_err(|_| bad("not a checksum list (not UTF-8): damaged".into()))?;
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or_else(|| bad("truncated checksum list (no `end` line)".into()))?;
        let (body, last) = text.split_at(body_end);
        let stored = last
            .trim_end_matches('\n')
            .strip_prefix("end ")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(
                || bad("truncated or damaged checksum list (no valid `end` line)".into()),
            )?;
        let computed = crc32fast::hash(body.as_bytes());
        if stored != computed {
            return Err(bad(format!(
                "the checksum list is damaged (its own CRC-32 is {computed:08x}, stored {stored:08x})"
            )));
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err(bad(format!(
                "not a checksum list: the first line is not `{HEADER}`"
            )));
        }
        let entries = lines
            .map(|line| parse_entry(line).ok_or_else(|| bad(format!("damaged entry `{line}`"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { entries })
    }

    /// Reads `checksums.txt` of the checkpoint folder `dir`.
    ///
    /// # Errors
    /// A missing, unreadable or damaged list, naming it.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if !dir.is_dir() => {
                Error::checkpoint(dir, "no such checkpoint folder")
            }
            std::io::ErrorKind::NotFound => Error::checkpoint(
                &path,
                "missing: the checkpoint has no checksum list (incomplete, or written by an \
                 older version); delete the folder to resume from the previous checkpoint",
            ),
            _ => Error::io(&path, e),
        })?;
        Self::parse(&path, &bytes)
    }

    /// Checks `bytes`, the contents of file `name` of checkpoint `dir`, against the list.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file: not listed, truncated (or grown), or damaged.
    pub fn verify(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
        let path = dir.join(name);
        let entry = self
            .entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::checkpoint(&path, "not in the checkpoint's checksum list"))?;
        if entry.bytes != bytes.len() as u64 {
            return Err(Error::checkpoint(
                &path,
                format!(
                    "truncated or damaged: {} bytes, the checksum list says {}",
                    bytes.len(),
                    entry.bytes
                ),
            ));
        }
        let crc = crc32fast::hash(bytes);
        if crc != entry.crc32 {
            return Err(Error::checkpoint(
                &path,
                format!(
                    "damaged: CRC-32 {crc:08x}, the checksum list says {:08x}",
                    entry.crc32
                ),
            ));
        }
        Ok(())
    }

    /// Reads file `name` of checkpoint `dir` and verifies it.
    ///
    /// # Errors
    /// As [`Manifest::verify`], or the file cannot be read.
    pub fn read_verified(&self, dir: &Path, name: &str) -> Result<Vec<u8>> {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        self.verify(dir, name, &bytes)?;
        Ok(bytes)
    }
}

/// `name bytes crc` → an entry.
fn parse_entry(line: &str) -> Option<Entry> {
    let mut parts = line.split(' ');
    let (name, bytes, crc) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || name.is_empty() || name.contains(['/', '\\']) {
        return None;
    }
    Some(Entry {
        name: name.to_string(),
        bytes: bytes.parse().ok()?,
        crc32: u32::from_str_radix(crc, 16).ok()?,
    })
}
