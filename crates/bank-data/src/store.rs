//! One compact buffer of decoded RGB images.

use std::path::Path;

use crate::{Error, Result};

/// Channels of every stored image: images are kept as RGB (grey images are expanded on decode).
pub const CHANNELS: usize = 3;

/// A borrowed decoded image: `height × width × 3` bytes, row-major, RGB interleaved (HWC).
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a> {
    /// Position of the image in its dataset.
    pub index: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height · width · 3` bytes.
    pub pixels: &'a [u8],
}

impl ImageRef<'_> {
    /// The byte of channel `c` at row `y`, column `x`.
    pub fn at(&self, y: usize, x: usize, c: usize) -> u8 {
        self.pixels[(y * self.width + x) * CHANNELS + c]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    offset: usize,
    height: u32,
    width: u32,
}

/// Decoded images of possibly different sizes, back to back in one `Vec<u8>`.
///
/// Decoding happens once; afterwards an image is a slice of this buffer, so augmentation never
/// touches the file system or a decoder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageStore {
    data: Vec<u8>,
    entries: Vec<Entry>,
}

impl ImageStore {
    /// An empty store with room for `bytes` of pixels.
    pub fn with_capacity(images: usize, bytes: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(images),
        }
    }

    /// Appends one image of `height × width × 3` bytes.
    ///
    /// # Panics
    /// If `pixels` does not hold exactly `height · width · 3` bytes (a bug in the caller).
    pub fn push(&mut self, height: usize, width: usize, pixels: &[u8]) {
        assert_eq!(pixels.len(), height * width * CHANNELS, "image buffer size");
        self.entries.push(Entry {
            offset: self.data.len(),
            height: height as u32,
            width: width as u32,
        });
        self.data.extend_from_slice(pixels);
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no image.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of pixels held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Image `index`.
    ///
    /// # Panics
    /// If `index >= len()`.
    pub fn get(&self, index: usize) -> ImageRef<'_> {
        let e = self.entries[index];
        let len = e.height as usize * e.width as usize * CHANNELS;
        ImageRef {
            index,
            height: e.height as usize,
            width: e.width as usize,
            pixels: &self.data[e.offset..e.offset + len],
        }
    }

    /// The images at `indices`, in that order, as a new store.
    pub fn select(&self, indices: &[usize]) -> Self {
        let bytes = indices.iter().map(|&i| self.get(i).pixels.len()).sum();
        let mut out = Self::with_capacity(indices.len(), bytes);
        for &i in indices {
            let img = self.get(i);
            out.push(img.height, img.width, img.pixels);
        }
        out
    }

    /// The raw parts, for the on-disk cache: pixels, then `(offset, height, width)` per image.
    pub(crate) fn raw_parts(&self) -> (&[u8], Vec<(u64, u32, u32)>) {
        let entries = self
            .entries
            .iter()
            .map(|e| (e.offset as u64, e.height, e.width))
            .collect();
        (&self.data, entries)
    }

    /// Rebuilds a store from [`ImageStore::raw_parts`], checking that every entry lies inside the
    /// buffer and that the entries tile it in order.
    pub(crate) fn from_raw_parts(
        source: &Path,
        data: Vec<u8>,
        entries: &[(u64, u32, u32)],
    ) -> Result<Self> {
        let mut expected = 0usize;
        let mut out = Vec::with_capacity(entries.len());
        for (i, &(offset, height, width)) in entries.iter().enumerate() {
            let len = height as usize * width as usize * CHANNELS;
            if offset as usize != expected || expected + len > data.len() || len == 0 {
                return Err(Error::format(
                    source,
                    format!("image entry {i} does not fit the pixel buffer"),
                ));
            }
            expected += len;
            out.push(Entry {
                offset: offset as usize,
                height,
                width,
            });
        }
        if expected != data.len() {
            return Err(Error::format(
                source,
                "pixel buffer is longer than its entries",
            ));
        }
        Ok(Self { data, entries: out })
    }
}
