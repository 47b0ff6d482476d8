//! Scanning a `.tar` / `.tar.gz` archive of an image tree into an [`ImageIndex`]: member
//! offsets recorded, links resolved to their target member, hidden entries skipped.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use flate2::read::GzDecoder;

use crate::index::{IndexEntry, Location, Origin};
use crate::sniff::{ImageKind, SNIFF_BYTES, is_not_an_image_file, not_an_image};
use crate::tar_links::{Namespace, Node, normalise};
use crate::tree::{LeftOut, TreeFile, assemble};
use crate::{Error, ImageIndex, Result, ScanOptions};

impl ImageIndex {
    /// Indexes the image tree under `prefix` (e.g. `"train"`; `""` for the whole archive) of a
    /// `.tar` or `.tar.gz` archive (gzip recognised by its magic bytes), reading it once.
    ///
    /// Hard links and symbolic links inside the archive (to files or folders, also outside
    /// `prefix`) resolve to the member that holds the data; a dangling link, a link leaving the
    /// archive, or a loop is [`Error::Link`] naming it. Hidden entries are skipped and formats
    /// recognised by content, as in [`ImageIndex::scan_folder`].
    ///
    /// # Errors
    /// [`Error::Io`] when the archive cannot be opened, [`Error::Format`] for a corrupted or
    /// truncated archive or (with `OnError::Fail`) a member that is not an image,
    /// [`Error::Link`], [`Error::Empty`].
    pub fn scan_archive(archive: &Path, prefix: &str, options: &ScanOptions) -> Result<Self> {
        let prefix = normalise(prefix);
        let compressed = is_gzip(archive)?;
        if !compressed && !is_tar(archive)? {
            return Err(Error::format(
                archive,
                "a file, but neither a .tar nor a .tar.gz archive (no gzip or tar header): name \
                 a folder of class folders, or an archive of one",
            ));
        }
        let namespace = read_namespace(archive, compressed)?;
        let visible = namespace.visible_files(archive, &prefix)?;
        let mut class_dirs = std::collections::BTreeSet::new();
        if !prefix.is_empty() && !matches!(namespace.nodes.get(&prefix), Some(Node::Dir)) {
            return Err(Error::empty(
                archive,
                format!("no folder `{prefix}` in the archive"),
            ));
        }
        for (name, node) in namespace.nodes.iter() {
            let rel = if prefix.is_empty() {
                Some(name.as_str())
            } else {
                name.strip_prefix(&format!("{prefix}/"))
            };
            if let (Some(rel), Node::Dir) = (rel, node)
                && !rel.contains('/')
                && !rel.starts_with('.')
            {
                class_dirs.insert(rel.to_string());
            }
        }
        let display = |name: &str| {
            let full = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            PathBuf::from(format!("{}!{full}", archive.display()))
        };
        let mut files = Vec::with_capacity(visible.len());
        let mut left_out = LeftOut::default();
        for v in visible {
            let Some(Node::File { offset, size, head }) = namespace.nodes.get(&v.member) else {
                return Err(Error::format(
                    display(&v.name),
                    "a link to something that is not a file",
                ));
            };
            match ImageKind::sniff(head) {
                Some(kind) => files.push(TreeFile {
                    display: display(&v.name),
                    entry: IndexEntry {
                        name: v.name,
                        location: Location::Member {
                            member: v.member,
                            offset: *offset,
                            size: *size,
                        },
                        kind,
                    },
                }),
                None if is_not_an_image_file(&v.name, head) => {
                    left_out.not_images.push(display(&v.name));
                }
                None => {
                    options.reject(&display(&v.name), not_an_image(head), &mut left_out.skipped)?
                }
            }
        }
        let origin = Origin::Archive {
            path: archive.to_path_buf(),
            prefix,
            compressed,
            stamp: stamp(archive)?,
        };
        assemble(origin, files, class_dirs, options, left_out)
    }
}

/// Whether the file starts with the gzip magic bytes.
pub(crate) fn is_gzip(path: &Path) -> Result<bool> {
    let mut magic = Vec::with_capacity(2);
    File::open(path)
        .and_then(|f| f.take(2).read_to_end(&mut magic))
        .map_err(|e| Error::io(path, e))?;
    Ok(magic == [0x1f, 0x8b])
}

/// Whether the file has a POSIX or GNU tar header (`ustar` at byte 257 of its first block).
pub(crate) fn is_tar(path: &Path) -> Result<bool> {
    let mut block = Vec::with_capacity(262);
    File::open(path)
        .and_then(|f| f.take(262).read_to_end(&mut block))
        .map_err(|e| Error::io(path, e))?;
    Ok(block.get(257..262) == Some(b"ustar".as_slice()))
}

/// Opens the archive's tar stream (un-gzipped when `compressed`).
pub(crate) fn open_tar(path: &Path, compressed: bool) -> Result<tar::Archive<Box<dyn Read>>> {
    let file = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
    let stream: Box<dyn Read> = if compressed {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(tar::Archive::new(stream))
}

pub(crate) fn corrupt(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::format(path, format!("corrupted or truncated archive: {e}"))
}

/// Every member of the archive, with its data offset and first bytes.
fn read_namespace(archive: &Path, compressed: bool) -> Result<Namespace> {
    let mut tar = open_tar(archive, compressed)?;
    let corrupt = corrupt(archive);
    let mut namespace = Namespace::default();
    for entry in tar.entries().map_err(&corrupt)? {
        let mut entry = entry.map_err(&corrupt)?;
        let name = normalise(&entry.path().map_err(&corrupt)?.to_string_lossy());
        if name.is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        let link = || -> Result<String> {
            let target = entry
                .link_name()
                .map_err(&corrupt)?
                .ok_or_else(|| Error::format(archive, format!("link `{name}` without a target")))?;
            Ok(target.to_string_lossy().into_owned())
        };
        let node = if kind.is_dir() {
            Node::Dir
        } else if kind.is_hard_link() {
            Node::HardLink(normalise(&link()?))
        } else if kind.is_symlink() {
            Node::Symlink(link()?)
        } else if kind.is_file() {
            let (offset, size) = (entry.raw_file_position(), entry.size());
            let mut head = Vec::with_capacity(SNIFF_BYTES);
            (&mut entry)
                .take(SNIFF_BYTES as u64)
                .read_to_end(&mut head)
                .map_err(&corrupt)?;
            Node::File { offset, size, head }
        } else {
            continue; // PAX global headers, devices, FIFOs: not part of an image tree.
        };
        namespace.insert(name, node);
    }
    Ok(namespace)
}

/// A file's `(size, modified ns)`.
pub(crate) fn stamp(path: &Path) -> Result<(u64, u128)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((meta.len(), modified))
}
