//! Decoding one encoded image (JPEG, PNG; the format judged from the content), and the options
//! every reader shares.

use std::path::Path;

use crate::sniff::{ImageKind, check_jpeg_complete, check_png_complete, not_an_image};
use crate::{Error, Result};

/// Default limit on decoded pixel bytes: 16 GiB (ImageNet at 96×96 needs 35 GB; CIFAR-10 184 MB).
pub const DEFAULT_MEMORY_LIMIT: usize = 16 << 30;

/// What to do with a file that cannot be decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// Stop with an error naming the file (the default).
    #[default]
    Fail,
    /// Leave the file out, log it (`tracing::warn`) and record it with the reason
    /// ([`crate::Dataset::skipped`]).
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

/// Whether a file name has an image extension this crate decodes (a hint only: readers judge a
/// file by its content).
pub fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jpg", ".jpeg", ".png"].iter().any(|e| lower.ends_with(e))
}

/// Decodes one JPEG or PNG held in memory; the format comes from the bytes, never from `name`,
/// which is only used in errors. Grey images are replicated to RGB, alpha is dropped, 16-bit
/// samples are scaled to 8 bits.
///
/// # Errors
/// [`Error::Format`] naming `name` when the bytes are not a JPEG or PNG, are truncated (a JPEG
/// without its end-of-image marker, a PNG missing data) or corrupt.
pub fn decode_image(name: &Path, bytes: &[u8]) -> Result<DecodedImage> {
    decode_bytes_sniffed(bytes).map_err(|reason| Error::format(name, reason))
}

fn decode_bytes_sniffed(bytes: &[u8]) -> Result<DecodedImage, String> {
    let kind = ImageKind::sniff(bytes).ok_or_else(|| not_an_image(bytes))?;
    decode_bytes(kind, bytes)
}

/// Decodes `bytes`, already recognised as `kind`; the error says why, in words.
pub(crate) fn decode_bytes(kind: ImageKind, bytes: &[u8]) -> Result<DecodedImage, String> {
    if ImageKind::sniff(bytes) != Some(kind) {
        return Err(not_an_image(bytes));
    }
    match kind {
        ImageKind::Jpeg => check_jpeg_complete(bytes)?,
        ImageKind::Png => check_png_complete(bytes)?,
    }
    let decoded = image::load_from_memory_with_format(bytes, kind.format())
        .map_err(|e| match e {
            image::ImageError::Limits(_) => too_large(kind, bytes),
            e => format!("cannot decode the {kind:?} image (truncated or corrupt?): {e}"),
        })?
        .into_rgb8();
    let (width, height) = decoded.dimensions();
    if width == 0 || height == 0 {
        return Err("image has no pixels".into());
    }
    Ok(DecodedImage {
        height: height as usize,
        width: width as usize,
        pixels: decoded.into_raw(),
    })
}

/// Why an image beyond the decoder's memory limit (`image`'s default, 512 MiB) is refused: its
/// size, when its header gives it.
fn too_large(kind: ImageKind, bytes: &[u8]) -> String {
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), kind.format());
    let size = reader
        .into_dimensions()
        .map_or(String::new(), |(w, h)| format!(" ({w}×{h} pixels)"));
    format!(
        "the {kind:?} image{size} is too large to decode: it needs more memory than the \
         decoder's limit of 512 MiB"
    )
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
