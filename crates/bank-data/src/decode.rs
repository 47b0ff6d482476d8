//! Parallel, chunked decoding of encoded images (JPEG, PNG) into an [`ImageStore`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::{CHANNELS, Error, ImageDataset, ImageStore, Result};

/// Default limit on decoded pixel bytes: 16 GiB (ImageNet at 96×96 needs 35 GB; CIFAR-10 184 MB).
pub const DEFAULT_MEMORY_LIMIT: usize = 16 << 30;

/// Encoded images decoded per parallel chunk: bounds the encoded bytes held at once.
const CHUNK: usize = 2048;

/// What to do with a file that cannot be decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// Stop with an error naming the file (the default).
    #[default]
    Fail,
    /// Leave the file out and count it; the count is logged when the dataset is built.
    Skip,
}

/// Options shared by every reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Most bytes of decoded pixels to hold; past it the reader returns [`Error::MemoryLimit`].
    pub memory_limit: usize,
    /// Undecodable files: error or skip.
    pub on_error: OnError,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            on_error: OnError::Fail,
        }
    }
}

impl DecodeOptions {
    /// Sets [`DecodeOptions::memory_limit`].
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Sets [`DecodeOptions::on_error`].
    pub fn with_on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }
}

/// A decoded RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height · width · 3` bytes, HWC.
    pub pixels: Vec<u8>,
}

/// Whether a file name has an image extension this crate decodes.
pub fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jpg", ".jpeg", ".png"].iter().any(|e| lower.ends_with(e))
}

/// Decodes one JPEG or PNG file held in memory; `name` is used for the format and in errors.
pub fn decode_image(name: &Path, bytes: &[u8]) -> Result<DecodedImage> {
    let format = image::ImageFormat::from_path(name)
        .or_else(|_| image::guess_format(bytes))
        .map_err(|e| Error::format(name, format!("not a JPEG or PNG image: {e}")))?;
    let decoded = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| Error::format(name, format!("cannot decode image (truncated?): {e}")))?
        .into_rgb8();
    let (width, height) = decoded.dimensions();
    if width == 0 || height == 0 {
        return Err(Error::format(name, "image has no pixels"));
    }
    Ok(DecodedImage {
        height: height as usize,
        width: width as usize,
        pixels: decoded.into_raw(),
    })
}

/// How the files of a tree map to labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FolderLayout {
    /// `root/<class>/<file>` (files deeper inside a class folder belong to that class); classes
    /// are the sorted folder names, labels their positions.
    #[default]
    ClassFolders,
    /// Every image under the root, unlabelled, in sorted path order.
    Unlabelled,
}

/// One encoded file of an image tree, found by a folder or archive walker.
pub(crate) struct EncodedFile {
    /// Path relative to the tree's root, `/`-separated.
    pub relative: String,
    /// Path for messages (a real path, or `archive!member`).
    pub display: PathBuf,
    pub bytes: Vec<u8>,
}

/// Collects the files of an image tree, decodes them in parallel chunks and builds the dataset.
pub(crate) struct TreeBuilder {
    source: PathBuf,
    layout: FolderLayout,
    options: DecodeOptions,
    /// Folder names seen directly under the root (so that empty class folders are noticed).
    class_dirs: BTreeSet<String>,
    pending: Vec<EncodedFile>,
    decoded: Vec<(String, Option<String>, DecodedImage)>,
    decoded_bytes: usize,
    skipped: usize,
}

impl TreeBuilder {
    pub fn new(source: &Path, layout: FolderLayout, options: DecodeOptions) -> Self {
        Self {
            source: source.to_path_buf(),
            layout,
            options,
            class_dirs: BTreeSet::new(),
            pending: Vec::new(),
            decoded: Vec::new(),
            decoded_bytes: 0,
            skipped: 0,
        }
    }

    /// Records a folder directly under the root.
    pub fn class_dir(&mut self, name: &str) {
        if !name.starts_with('.') {
            self.class_dirs.insert(name.to_string());
        }
    }

    /// Adds a file; decodes a chunk when enough are pending.
    pub fn file(&mut self, file: EncodedFile) -> Result<()> {
        let name = file.relative.rsplit('/').next().unwrap_or("");
        if name.starts_with('.') {
            return Ok(());
        }
        if self.layout == FolderLayout::ClassFolders {
            match file.relative.split_once('/') {
                Some((class, _)) => self.class_dir(class),
                None => {
                    return self.reject(Error::format(
                        &file.display,
                        "a file directly under the root, where class folders were expected \
                         (use the unlabelled layout for a flat folder)",
                    ));
                }
            }
        }
        if !is_image_name(name) {
            return self.reject(Error::format(
                &file.display,
                "not an image file (expected .jpg, .jpeg or .png)",
            ));
        }
        self.pending.push(file);
        if self.pending.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn reject(&mut self, error: Error) -> Result<()> {
        match self.options.on_error {
            OnError::Fail => Err(error),
            OnError::Skip => {
                tracing::debug!(%error, "skipped");
                self.skipped += 1;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        let files = std::mem::take(&mut self.pending);
        let results: Vec<(String, Result<DecodedImage>)> = files
            .into_par_iter()
            .map(|f| (f.relative, decode_image(&f.display, &f.bytes)))
            .collect();
        for (relative, result) in results {
            match result {
                Ok(image) => {
                    self.decoded_bytes += image.pixels.len();
                    if self.decoded_bytes > self.options.memory_limit {
                        return Err(Error::MemoryLimit {
                            path: self.source.clone(),
                            limit: self.options.memory_limit,
                        });
                    }
                    let class = match self.layout {
                        FolderLayout::ClassFolders => {
                            relative.split_once('/').map(|(c, _)| c.to_string())
                        }
                        FolderLayout::Unlabelled => None,
                    };
                    self.decoded.push((relative, class, image));
                }
                Err(e) => self.reject(e)?,
            }
        }
        Ok(())
    }

    /// Decodes what is left and assembles the dataset in (class, path) order.
    pub fn finish(mut self) -> Result<ImageDataset> {
        self.flush()?;
        if self.skipped > 0 {
            tracing::warn!(
                source = %self.source.display(),
                skipped = self.skipped,
                "skipped files that are not decodable images"
            );
        }
        if self.decoded.is_empty() {
            return Err(Error::empty(&self.source, "no decodable images found"));
        }
        self.decoded.sort_by(|a, b| a.0.cmp(&b.0));
        let (labels, class_names) = match self.layout {
            FolderLayout::Unlabelled => (None, Vec::new()),
            FolderLayout::ClassFolders => {
                let mut counts: BTreeMap<&str, usize> =
                    self.class_dirs.iter().map(|c| (c.as_str(), 0)).collect();
                for (_, class, _) in &self.decoded {
                    *counts.get_mut(class.as_deref().unwrap_or("")).unwrap() += 1;
                }
                if let Some((empty, _)) = counts.iter().find(|(_, n)| **n == 0) {
                    return Err(Error::empty(
                        &self.source,
                        format!("class folder `{empty}` holds no decodable image"),
                    ));
                }
                let names: Vec<String> = counts.keys().map(|c| c.to_string()).collect();
                let labels = self
                    .decoded
                    .iter()
                    .map(|(_, class, _)| {
                        names.binary_search(class.as_ref().unwrap()).unwrap() as u32
                    })
                    .collect();
                (Some(labels), names)
            }
        };
        let mut store = ImageStore::with_capacity(self.decoded.len(), self.decoded_bytes);
        for (_, _, image) in self.decoded.drain(..) {
            store.push(image.height, image.width, &image.pixels);
        }
        debug_assert_eq!(store.bytes() % CHANNELS, 0);
        tracing::info!(
            source = %self.source.display(),
            images = store.len(),
            bytes = store.bytes(),
            "decoded image tree"
        );
        Ok(ImageDataset::new(store, labels, class_names, self.source))
    }
}
