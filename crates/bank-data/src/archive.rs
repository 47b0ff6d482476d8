//! Image-folder trees inside `.tar` / `.tar.gz` archives, read without unpacking.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::decode::{EncodedFile, TreeBuilder};
use crate::{DecodeOptions, Error, FolderLayout, ImageDataset, Result};

/// Reads the image tree under `prefix` (e.g. `"train"`; `""` for the whole archive) of a `.tar`
/// or `.tar.gz` archive, streaming it once and decoding in parallel chunks.
///
/// The archive `cifar10-jpeg.tar.gz` holds `train/<class>/NNNN.jpg` and `test/<class>/NNNN.jpg`:
/// `read_image_archive(path, "train", FolderLayout::ClassFolders, options)` gives its 50,000
/// training images. Gzip is recognised by its magic bytes, not by the name.
pub fn read_image_archive(
    path: impl AsRef<Path>,
    prefix: &str,
    layout: FolderLayout,
    options: DecodeOptions,
) -> Result<ImageDataset> {
    let path = path.as_ref();
    let prefix = prefix.trim_matches('/');
    let source = if prefix.is_empty() {
        path.to_path_buf()
    } else {
        PathBuf::from(format!("{}!{prefix}", path.display()))
    };
    let mut builder = TreeBuilder::new(&source, layout, options);
    let mut archive = tar::Archive::new(open_maybe_gz(path)?);
    let corrupt =
        |e: std::io::Error| Error::format(path, format!("corrupted or truncated archive: {e}"));
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let member = entry
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .into_owned();
        let member = member.trim_start_matches("./").trim_end_matches('/');
        let relative = if prefix.is_empty() {
            member
        } else {
            match member
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('/'))
            {
                Some(r) => r,
                None => continue,
            }
        }
        .to_string();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            if !relative.is_empty() && !relative.contains('/') {
                builder.class_dir(&relative);
            }
        } else if kind.is_file() {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(corrupt)?;
            let display = PathBuf::from(format!("{}!{member}", path.display()));
            builder.file(EncodedFile {
                relative,
                display,
                bytes,
            })?;
        }
    }
    builder.finish()
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
