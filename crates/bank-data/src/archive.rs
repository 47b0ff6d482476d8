//! Image-folder trees inside `.tar` / `.tar.gz` archives, decoded into memory without
//! unpacking: [`ImageIndex::scan_archive`] then [`ImageIndex::decode`].

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::{DecodeOptions, Error, FolderLayout, ImageDataset, ImageIndex, Result, ScanOptions};

/// Reads the image tree under `prefix` (e.g. `"train"`; `""` for the whole archive) of a `.tar`
/// or `.tar.gz` archive, decoding in parallel chunks.
///
/// The archive `cifar10-jpeg.tar.gz` holds `train/<class>/NNNN.jpg` and `test/<class>/NNNN.jpg`:
/// `read_image_archive(path, "train", FolderLayout::ClassFolders, options)` gives its 50,000
/// training images. Gzip is recognised by its magic bytes, not by the name; links inside the
/// archive resolve to their target member.
///
/// # Errors
/// As [`ImageIndex::scan_archive`] and [`ImageIndex::decode`].
pub fn read_image_archive(
    path: impl AsRef<Path>,
    prefix: &str,
    layout: FolderLayout,
    options: DecodeOptions,
) -> Result<ImageDataset> {
    let scan = ScanOptions::new(layout).with_on_error(options.on_error);
    ImageIndex::scan_archive(path.as_ref(), prefix, &scan)?.decode(options)
}

/// Opens `path` as a byte stream, transparently un-gzipping it.
pub(crate) fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let mut file = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let stream = head.chain(file);
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(GzDecoder::new(stream))
    } else {
        Box::new(stream)
    })
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
