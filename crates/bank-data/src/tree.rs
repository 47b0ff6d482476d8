//! What folder and archive scans share: hidden names, and turning found files into an
//! [`ImageIndex`] under a [`FolderLayout`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::index::{IndexEntry, Origin};
use crate::{Error, FolderLayout, ImageIndex, Result, ScanOptions, SkippedFile};

/// Whether a `/`-separated path has a hidden component (a name starting with `.`).
pub(crate) fn is_hidden(relative: &str) -> bool {
    relative
        .split('/')
        .any(|c| c.starts_with('.') && c != "." && c != "..")
}

/// A found image file: its index entry and its path for messages.
pub(crate) struct TreeFile {
    pub display: PathBuf,
    pub entry: IndexEntry,
}

/// What a scan left out of the index: bad files recorded under `OnError::Skip`, and files that
/// are not meant as images.
#[derive(Default)]
pub(crate) struct LeftOut {
    pub skipped: Vec<SkippedFile>,
    pub not_images: Vec<PathBuf>,
}

/// Sorts the files by name and labels them by `options.layout`.
///
/// With class folders the classes are the sorted names of the folders directly under the root
/// (`class_dirs`, plus those the files name); a file directly under the root is a bad file; a
/// class folder without an image is [`Error::Empty`].
pub(crate) fn assemble(
    origin: Origin,
    mut files: Vec<TreeFile>,
    class_dirs: BTreeSet<String>,
    options: &ScanOptions,
    left_out: LeftOut,
) -> Result<ImageIndex> {
    let LeftOut {
        mut skipped,
        not_images,
    } = left_out;
    files.sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
    let mut index = ImageIndex {
        origin,
        entries: Vec::with_capacity(files.len()),
        labels: None,
        class_names: Vec::new(),
        skipped: Vec::new(),
        not_images,
    };
    let source = index.source();
    match options.layout {
        FolderLayout::Unlabelled => index.entries = files.into_iter().map(|f| f.entry).collect(),
        FolderLayout::ClassFolders => {
            let mut counts: BTreeMap<String, usize> =
                class_dirs.into_iter().map(|c| (c, 0)).collect();
            let mut classes = Vec::with_capacity(files.len());
            for file in files {
                match file.entry.name.split_once('/') {
                    Some((class, _)) => {
                        *counts.entry(class.to_string()).or_default() += 1;
                        classes.push(class.to_string());
                        index.entries.push(file.entry);
                    }
                    None => options.reject(
                        &file.display,
                        "a file directly under the root, beside the class folders: move it \
                         into its class folder or out of the data (or use the unlabelled layout \
                         for images without classes)"
                            .into(),
                        &mut skipped,
                    )?,
                }
            }
            if let Some((empty, _)) = counts.iter().find(|(_, n)| **n == 0) {
                return Err(Error::empty(
                    &source,
                    format!("class folder `{empty}` holds no image"),
                ));
            }
            let names: Vec<String> = counts.into_keys().collect();
            let labels = classes
                .iter()
                .map(|c| names.binary_search(c).unwrap() as u32)
                .collect();
            index.labels = Some(labels);
            index.class_names = names;
        }
    }
    index.skipped = skipped;
    if index.entries.is_empty() {
        return Err(Error::empty(&source, "no images found"));
    }
    tracing::info!(
        source = %source.display(),
        images = index.len(),
        classes = index.class_names.len(),
        skipped = index.skipped.len(),
        not_images = index.not_images.len(),
        "indexed image tree"
    );
    if let Some(first) = index.not_images.first() {
        tracing::info!(
            source = %source.display(),
            files = index.not_images.len(),
            first = %first.display(),
            "left out files that are not images (by name and content)"
        );
    }
    Ok(index)
}
