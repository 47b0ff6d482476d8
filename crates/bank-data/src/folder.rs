//! Image-folder trees on disk, decoded into memory: [`ImageIndex::scan_folder`] then
//! [`ImageIndex::decode`].

use std::path::Path;

use crate::{DecodeOptions, FolderLayout, ImageDataset, ImageIndex, Result, ScanOptions};

/// Reads every image under `root` (by content: JPEG or PNG, whatever the name), decoding in
/// parallel.
///
/// With [`FolderLayout::ClassFolders`] the classes are the sorted names of the folders directly
/// under `root`; an empty class folder is an error. Hidden entries (`.name`, at any depth) are
/// ignored; symbolic links are followed (a loop is an error naming it).
///
/// # Errors
/// As [`ImageIndex::scan_folder`] and [`ImageIndex::decode`].
pub fn read_image_folder(
    root: impl AsRef<Path>,
    layout: FolderLayout,
    options: DecodeOptions,
) -> Result<ImageDataset> {
    let scan = ScanOptions::new(layout).with_on_error(options.on_error);
    ImageIndex::scan_folder(root.as_ref(), &scan)?.decode(options)
}
