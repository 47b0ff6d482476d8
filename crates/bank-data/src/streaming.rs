//! [`StreamingDataset`]: images decoded when a batch asks for them, from the files or an
//! uncompressed `.tar`, so memory stays bounded whatever the number of images.

use crate::decode::decode_bytes;
use crate::index::Origin;
use crate::{
    Dataset, DecodeOptions, Error, ImageIndex, LoadedImage, OwnedImage, Result, SkippedFile,
};

/// A dataset that decodes each image on request (the loader asks once per sample per batch,
/// from its worker threads). Memory: the index (paths or offsets) plus the images of the
/// batches in flight.
///
/// A file that fails to decode during training is an error naming it, whatever
/// [`DecodeOptions::on_error`] says: substituting another image would silently change the
/// data, and checking every file up front would cost a full decode. (Files that are not images
/// by content were already skipped or refused by the scan.)
#[derive(Debug, Clone)]
pub struct StreamingDataset {
    index: ImageIndex,
    options: DecodeOptions,
}

impl ImageIndex {
    /// The streaming path: decode per batch from the files or the uncompressed `.tar`.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] for a `.tar.gz` (its members cannot be reached without
    /// decompressing everything before them): unpack it, or use an uncompressed `.tar`.
    pub fn streaming(self, options: DecodeOptions) -> Result<StreamingDataset> {
        if let Origin::Archive {
            path,
            compressed: true,
            ..
        } = &self.origin
        {
            return Err(Error::InvalidValue {
                field: "data.path",
                value: path.display().to_string(),
                reason: "streaming needs random access, which a compressed .tar.gz does not \
                         allow: unpack it into a folder, or repack it as an uncompressed .tar",
            });
        }
        Ok(StreamingDataset {
            index: self,
            options,
        })
    }
}

impl StreamingDataset {
    /// The index served.
    pub fn index(&self) -> &ImageIndex {
        &self.index
    }

    /// The decode options given.
    pub fn options(&self) -> DecodeOptions {
        self.options
    }
}

impl Dataset for StreamingDataset {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn image(&self, index: usize) -> Result<LoadedImage<'_>> {
        if index >= self.len() {
            return Err(crate::dataset::out_of_range(index, self.len()));
        }
        let bytes = self.index.read_bytes(index)?;
        let image = decode_bytes(self.index.entries[index].kind, &bytes)
            .map_err(|reason| Error::format(self.index.item_source(index), reason))?;
        Ok(LoadedImage::Owned(OwnedImage {
            index,
            height: image.height,
            width: image.width,
            pixels: image.pixels,
        }))
    }

    fn label(&self, index: usize) -> Option<u32> {
        self.index.labels().and_then(|l| l.get(index).copied())
    }

    fn class_names(&self) -> &[String] {
        self.index.class_names()
    }

    fn item_source(&self, index: usize) -> String {
        if index >= self.len() {
            return format!("{}#{index}", self.index.source().display());
        }
        self.index.item_source(index).to_string_lossy().into_owned()
    }

    fn skipped(&self) -> &[SkippedFile] {
        self.index.skipped()
    }
}
