//! Reading and decoding the images of an [`ImageIndex`]: all into memory (parallel chunks within
//! a memory limit), one at a time for streaming, and header-only size estimates.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use rayon::prelude::*;

use crate::decode::{DecodedImage, decode_bytes};
use crate::index::{Location, Origin};
use crate::scan_archive::{corrupt, open_tar};
use crate::tar_links::normalise;
use crate::{
    CHANNELS, DecodeOptions, Error, ImageDataset, ImageIndex, ImageStore, OnError, Result,
    SkippedFile,
};

/// Encoded images decoded per parallel chunk: bounds the encoded bytes held at once.
const CHUNK: usize = 2048;

/// Decode results by entry: the image, or why it failed.
type Slots = Vec<Option<Result<DecodedImage, String>>>;

impl ImageIndex {
    /// Decodes every image into one in-memory [`ImageDataset`], in parallel chunks.
    ///
    /// A file that fails to decode (truncated, corrupt) is an error naming it, or with
    /// `OnError::Skip` is left out and recorded in [`crate::Dataset::skipped`] (logged with
    /// `tracing::warn`). Item sources are the files (or `archive!member`).
    ///
    /// # Errors
    /// [`Error::Format`] naming the first file that fails (with `OnError::Fail`),
    /// [`Error::MemoryLimit`] past `options.memory_limit` bytes of pixels, [`Error::Empty`] when
    /// skipping leaves a class (or the dataset) without images, [`Error::Io`].
    pub fn decode(&self, options: DecodeOptions) -> Result<ImageDataset> {
        let mut slots: Slots = (0..self.len()).map(|_| None).collect();
        let mut budget = Budget {
            used: 0,
            limit: options.memory_limit,
            source: self.source(),
        };
        match &self.origin {
            Origin::Archive {
                path,
                compressed: true,
                ..
            } => self.decode_stream(path, &mut slots, &mut budget, options)?,
            _ => {
                for start in (0..self.len()).step_by(CHUNK) {
                    let end = (start + CHUNK).min(self.len());
                    let decoded: Vec<_> = (start..end)
                        .into_par_iter()
                        .map(|i| {
                            self.read_bytes(i)
                                .map(|b| decode_bytes(self.entries[i].kind, &b))
                        })
                        .collect::<Result<_>>()?;
                    for (i, d) in (start..end).zip(decoded) {
                        budget.add(&d)?;
                        slots[i] = Some(d);
                    }
                    self.fail_fast(&slots[start..end], start, options)?;
                }
            }
        }
        self.assemble_dataset(slots, options)
    }

    /// The encoded bytes of image `index`, from its file or (seeking) its archive member.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file or `archive!member`.
    ///
    /// # Panics
    /// If `index >= len()`.
    pub fn read_bytes(&self, index: usize) -> Result<Vec<u8>> {
        match (&self.entries[index].location, &self.origin) {
            (Location::File { path, .. }, _) => std::fs::read(path).map_err(|e| Error::io(path, e)),
            (Location::Member { offset, size, .. }, Origin::Archive { path, .. }) => {
                let read = || -> std::io::Result<Vec<u8>> {
                    let mut file = File::open(path)?;
                    file.seek(SeekFrom::Start(*offset))?;
                    let mut bytes = vec![0u8; *size as usize];
                    file.read_exact(&mut bytes)?;
                    Ok(bytes)
                };
                read().map_err(|e| Error::io(self.item_source(index), e))
            }
            (Location::Member { .. }, Origin::Folder(root)) => {
                Err(Error::format(root, "an archive member in a folder index"))
            }
        }
    }

    /// Decoded bytes of all images (`height · width · 3` each), from the image headers only
    /// (`image::ImageReader::into_dimensions`), for choosing between the in-memory and the
    /// streaming path.
    ///
    /// # Errors
    /// [`Error::Format`] naming a file whose header cannot be read; [`Error::Io`]. A `.tar.gz`
    /// is read through once.
    pub fn estimated_bytes(&self) -> Result<u64> {
        let dims = |i: usize, bytes: &[u8]| -> Result<u64> {
            let reader = image::ImageReader::with_format(
                std::io::Cursor::new(bytes),
                self.entries[i].kind.format(),
            );
            let (w, h) = reader.into_dimensions().map_err(|e| {
                Error::format(
                    self.item_source(i),
                    format!("cannot read the image header: {e}"),
                )
            })?;
            Ok(u64::from(w) * u64::from(h) * CHANNELS as u64)
        };
        if let Origin::Archive {
            path,
            compressed: true,
            ..
        } = &self.origin
        {
            let mut total = 0;
            self.for_each_member(path, |indices, bytes| {
                total += dims(indices[0], &bytes)? * indices.len() as u64;
                Ok(())
            })?;
            return Ok(total);
        }
        (0..self.len())
            .into_par_iter()
            .map(|i| {
                let head = self.read_head(i)?;
                dims(i, &head)
            })
            .sum()
    }

    /// The first bytes of image `index` (enough for its header), or all of an archive member.
    fn read_head(&self, index: usize) -> Result<Vec<u8>> {
        match &self.entries[index].location {
            Location::File { path, .. } => {
                let mut head = Vec::new();
                File::open(path)
                    .and_then(|f| f.take(1 << 16).read_to_end(&mut head))
                    .map_err(|e| Error::io(path, e))?;
                Ok(head)
            }
            Location::Member { .. } => self.read_bytes(index),
        }
    }

    /// Streams a `.tar.gz` once, calling `f` with the entries that use each member's data.
    fn for_each_member(
        &self,
        archive: &Path,
        mut f: impl FnMut(&[usize], Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let mut wanted: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let Location::Member { member, .. } = &e.location {
                wanted.entry(member.as_str()).or_default().push(i);
            }
        }
        let corrupt = corrupt(archive);
        let mut tar = open_tar(archive, true)?;
        for entry in tar.entries().map_err(&corrupt)? {
            let mut entry = entry.map_err(&corrupt)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = normalise(&entry.path().map_err(&corrupt)?.to_string_lossy());
            if let Some(indices) = wanted.get(name.as_str()) {
                let mut bytes = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut bytes).map_err(&corrupt)?;
                f(indices, bytes)?;
            }
        }
        Ok(())
    }

    fn decode_stream(
        &self,
        archive: &Path,
        slots: &mut Slots,
        budget: &mut Budget,
        options: DecodeOptions,
    ) -> Result<()> {
        let mut pending: Vec<(Vec<usize>, Vec<u8>)> = Vec::new();
        let mut flush = |pending: &mut Vec<(Vec<usize>, Vec<u8>)>, slots: &mut Slots| {
            let batch = std::mem::take(pending);
            let decoded: Vec<_> = batch
                .into_par_iter()
                .map(|(indices, bytes)| {
                    let d = decode_bytes(self.entries[indices[0]].kind, &bytes);
                    (indices, d)
                })
                .collect();
            for (indices, d) in decoded {
                for &i in &indices {
                    budget.add(&d)?;
                    slots[i] = Some(d.clone());
                    self.fail_fast(&slots[i..=i], i, options)?;
                }
            }
            Ok::<(), Error>(())
        };
        self.for_each_member(archive, |indices, bytes| {
            pending.push((indices.to_vec(), bytes));
            if pending.len() >= CHUNK {
                flush(&mut pending, slots)?;
            }
            Ok(())
        })?;
        flush(&mut pending, slots)
    }

    /// With `OnError::Fail`, the first failure among `slots` (entries from `start`) as an error.
    fn fail_fast(
        &self,
        slots: &[Option<Result<DecodedImage, String>>],
        start: usize,
        options: DecodeOptions,
    ) -> Result<()> {
        if options.on_error == OnError::Skip {
            return Ok(());
        }
        for (k, slot) in slots.iter().enumerate() {
            if let Some(Err(reason)) = slot {
                return Err(Error::format(self.item_source(start + k), reason.clone()));
            }
        }
        Ok(())
    }

    /// Builds the dataset from the decoded slots, leaving out (and recording) failures.
    fn assemble_dataset(&self, slots: Slots, options: DecodeOptions) -> Result<ImageDataset> {
        let mut skipped = self.skipped.clone();
        let mut kept = Vec::with_capacity(slots.len());
        let mut images = Vec::with_capacity(slots.len());
        for (i, slot) in slots.into_iter().enumerate() {
            match slot {
                Some(Ok(image)) => {
                    kept.push(i);
                    images.push(image);
                }
                Some(Err(reason)) if options.on_error == OnError::Skip => {
                    skipped.push(SkippedFile::new(self.item_source(i), reason));
                }
                Some(Err(reason)) => return Err(Error::format(self.item_source(i), reason)),
                None => {
                    return Err(Error::format(
                        self.item_source(i),
                        "the member was not found when reading the archive again (did it change?)",
                    ));
                }
            }
        }
        let index = self.select(&kept);
        if let (Some(before), Some(after)) = (self.labels(), index.labels()) {
            let counts = |labels: &[u32]| {
                let mut n = vec![0usize; self.class_names.len()];
                labels.iter().for_each(|&l| n[l as usize] += 1);
                n
            };
            let (before, after) = (counts(before), counts(after));
            if let Some(c) = (0..before.len()).find(|&c| before[c] > 0 && after[c] == 0) {
                return Err(Error::empty(
                    self.source(),
                    format!(
                        "class `{}` has no decodable image left",
                        index.class_names[c]
                    ),
                ));
            }
        }
        if images.is_empty() {
            return Err(Error::empty(self.source(), "no decodable images found"));
        }
        let bytes = images.iter().map(|m| m.pixels.len()).sum();
        let mut store = ImageStore::with_capacity(images.len(), bytes);
        for image in images {
            store.push(image.height, image.width, &image.pixels);
        }
        let names = (0..index.len())
            .map(|i| index.item_source(i).to_string_lossy().into_owned())
            .collect();
        tracing::info!(
            source = %self.source().display(),
            images = store.len(),
            bytes = store.bytes(),
            skipped = skipped.len(),
            "decoded image tree"
        );
        Ok(
            ImageDataset::new(store, index.labels, index.class_names, self.source())
                .with_item_sources(names)?
                .with_skipped(skipped),
        )
    }
}

/// Decoded bytes so far against the memory limit.
struct Budget {
    used: usize,
    limit: usize,
    source: std::path::PathBuf,
}

impl Budget {
    fn add(&mut self, decoded: &Result<DecodedImage, String>) -> Result<()> {
        if let Ok(image) = decoded {
            self.used += image.pixels.len();
            if self.used > self.limit {
                return Err(Error::MemoryLimit {
                    path: self.source.clone(),
                    limit: self.limit,
                });
            }
        }
        Ok(())
    }
}
