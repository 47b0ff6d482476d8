//! Scanning a folder tree into an [`ImageIndex`] with `walkdir`: symbolic links followed with
//! loop detection, hidden entries skipped, formats recognised by content.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rayon::prelude::*;
use walkdir::WalkDir;

use crate::index::{IndexEntry, Location, Origin};
use crate::sniff::{ImageKind, SNIFF_BYTES, is_not_an_image_file, not_an_image};
use crate::tree::{LeftOut, TreeFile, assemble, is_hidden};
use crate::{Error, ImageIndex, Result, ScanOptions};

impl ImageIndex {
    /// Indexes every image under `root` (a folder): `root/<class>/…` or, unlabelled, every
    /// image at any depth.
    ///
    /// Symbolic links (to files or folders) are followed; a loop is [`Error::Link`] naming the
    /// link, and so is a dangling link or, with `follow_links` off, any link. Hidden entries (a
    /// name starting with `.`, at any depth) are skipped. A file's format is recognised from its
    /// first bytes, whatever its name. A file that is not meant as an image (bytes of no image
    /// format, and a name with another extension than an image format's, `notes.txt`,
    /// `Thumbs.db`, or text without an extension, `LICENSE`) is left out and listed
    /// ([`ImageIndex::not_images`]); any other file that is not a JPEG or PNG is a bad file
    /// (error or recorded skip per `options.on_error`), as is, with class folders, an image
    /// directly under `root`.
    ///
    /// # Errors
    /// [`Error::Io`] for a missing root or unreadable folder, [`Error::Link`], [`Error::Format`]
    /// for a bad file (with `OnError::Fail`), [`Error::Empty`] when no image or an empty class
    /// folder is found.
    pub fn scan_folder(root: &Path, options: &ScanOptions) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::io(
                root,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            ));
        }
        let (files, class_dirs) = walk(root, options)?;
        let mut left_out = LeftOut::default();
        let sniffed: Vec<(PathBuf, Result<Option<IndexEntry>, String>)> = files
            .into_par_iter()
            .map(|(name, path)| {
                let entry = sniff_file(&path).map(|found| {
                    found.map(|(kind, size, modified)| IndexEntry {
                        name,
                        location: Location::File {
                            path: path.clone(),
                            size,
                            modified,
                        },
                        kind,
                    })
                });
                (path, entry)
            })
            .collect();
        let mut entries = Vec::with_capacity(sniffed.len());
        for (path, entry) in sniffed {
            match entry {
                Ok(Some(e)) => entries.push(TreeFile {
                    display: path,
                    entry: e,
                }),
                Ok(None) => left_out.not_images.push(path),
                Err(reason) => options.reject(&path, reason, &mut left_out.skipped)?,
            }
        }
        assemble(
            Origin::Folder(root.to_path_buf()),
            entries,
            class_dirs,
            options,
            left_out,
        )
    }
}

/// Lists the non-hidden files under `root` (`/`-separated names below it, real paths) and the
/// folders directly under it.
/// Files found: `/`-separated name below the root, real path.
type Found = Vec<(String, PathBuf)>;

fn walk(root: &Path, options: &ScanOptions) -> Result<(Found, BTreeSet<String>)> {
    let mut files = Vec::new();
    let mut dirs = BTreeSet::new();
    let walker = WalkDir::new(root)
        .follow_links(options.follow_links)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = entry.map_err(link_or_io_error)?;
        if entry.depth() == 0 {
            continue;
        }
        let name = relative_name(root, entry.path());
        debug_assert!(!is_hidden(&name));
        let kind = entry.file_type();
        if kind.is_symlink() {
            return Err(Error::Link {
                path: entry.path().to_path_buf(),
                reason: "a symbolic link, and following links is off".into(),
            });
        }
        if kind.is_dir() {
            if entry.depth() == 1 {
                dirs.insert(name);
            }
        } else if kind.is_file() {
            files.push((name, entry.path().to_path_buf()));
        } else {
            // Reading a named pipe blocks until something writes to it; a device never ends.
            return Err(Error::Format {
                path: entry.path().to_path_buf(),
                reason: "not a regular file (a named pipe, socket or device): an image folder \
                         holds files and folders only"
                    .into(),
            });
        }
    }
    Ok((files, dirs))
}

fn relative_name(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// A walk error: a link loop or a dangling link as [`Error::Link`], the rest as [`Error::Io`].
fn link_or_io_error(e: walkdir::Error) -> Error {
    let path = e.path().map(Path::to_path_buf).unwrap_or_default();
    if let Some(ancestor) = e.loop_ancestor() {
        return Error::Link {
            reason: format!(
                "a symbolic link loop (it leads back to {})",
                ancestor.display()
            ),
            path,
        };
    }
    let io = e
        .into_io_error()
        .unwrap_or_else(|| std::io::Error::other("walk failed"));
    if io.kind() == std::io::ErrorKind::NotFound && path.is_symlink() {
        return Error::Link {
            path,
            reason: "a dangling symbolic link (its target does not exist)".into(),
        };
    }
    Error::io(path, io)
}

/// Bytes read from the end of a file for the cheap completeness check.
const TAIL_BYTES: u64 = 64;

/// Whether a file is complete, judged at scan time so that `OnError::Skip` also leaves out
/// truncated files of a streamed dataset: the last bytes must hold a JPEG's end-of-image marker
/// or a PNG's `IEND` chunk; when they do not (a JPEG with a long trailer, or a cut file), the whole
/// file is checked as the decoder checks it.
fn check_complete(file: &mut File, len: u64, kind: ImageKind) -> Result<(), String> {
    let read_err = |e: std::io::Error| format!("cannot read: {e}");
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .map_err(read_err)?;
    let mut tail = Vec::with_capacity(TAIL_BYTES as usize);
    file.read_to_end(&mut tail).map_err(read_err)?;
    if crate::sniff::tail_is_complete(kind, &tail) {
        return Ok(());
    }
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes).map_err(read_err)?;
    match kind {
        ImageKind::Jpeg => crate::sniff::check_jpeg_complete(&bytes),
        ImageKind::Png => crate::sniff::check_png_complete(&bytes),
    }
}

/// The format, size and modification time (ns) of a file; `None` for a file that is not meant
/// as an image ([`is_not_an_image_file`]); or why it is a bad image.
fn sniff_file(path: &Path) -> Result<Option<(ImageKind, u64, u128)>, String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    (&mut file)
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read: {e}"))?;
    let Some(kind) = ImageKind::sniff(&head) else {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if is_not_an_image_file(&name, &head) {
            return Ok(None);
        }
        return Err(not_an_image(&head));
    };
    check_complete(&mut file, meta.len(), kind)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(Some((kind, meta.len(), modified)))
}
