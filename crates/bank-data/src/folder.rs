//! Image-folder trees on disk: `root/<class>/<file>` or an unlabelled folder of images.

use std::fs;
use std::path::Path;

use crate::decode::{EncodedFile, TreeBuilder};
use crate::{DecodeOptions, Error, FolderLayout, ImageDataset, Result};

/// Reads every JPEG/PNG image under `root`, decoding in parallel.
///
/// With [`FolderLayout::ClassFolders`] the classes are the sorted names of the folders directly
/// under `root`; an empty class folder is an error. Hidden files (`.name`) are ignored.
pub fn read_image_folder(
    root: impl AsRef<Path>,
    layout: FolderLayout,
    options: DecodeOptions,
) -> Result<ImageDataset> {
    let root = root.as_ref();
    if !root.is_dir() {
        return Err(Error::io(
            root,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        ));
    }
    let mut builder = TreeBuilder::new(root, layout, options);
    let mut files = Vec::new();
    walk(root, "", &mut files, &mut builder)?;
    files.sort();
    for relative in files {
        let path = root.join(&relative);
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        builder.file(EncodedFile {
            relative,
            display: path,
            bytes,
        })?;
    }
    builder.finish()
}

/// Lists files under `dir` as `/`-separated paths relative to the root.
fn walk(
    dir: &Path,
    prefix: &str,
    files: &mut Vec<String>,
    builder: &mut TreeBuilder,
) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        if path.is_dir() {
            if prefix.is_empty() {
                builder.class_dir(&name);
            }
            walk(&path, &relative, files, builder)?;
        } else {
            files.push(relative);
        }
    }
    Ok(())
}
