//! [`ImageIndex`]: the images of a folder tree or archive, found once (paths or member offsets,
//! labels, class names) and shared by the in-memory and the streaming paths.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};

use crate::augment::splitmix64;
use crate::sniff::ImageKind;
use crate::{Error, FolderLayout, OnError, Result, SkippedFile};

/// How a folder tree or archive is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// How files map to labels.
    pub layout: FolderLayout,
    /// Files that are not images (by content) or cannot be read: error, or skip and record.
    pub on_error: OnError,
    /// Follow symbolic links (with loop detection; a loop is an error). When off, a symbolic
    /// link is an error naming it (never silently dropped). Default: on.
    pub follow_links: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            layout: FolderLayout::ClassFolders,
            on_error: OnError::Fail,
            follow_links: true,
        }
    }
}

impl ScanOptions {
    /// The default options with `layout`.
    pub fn new(layout: FolderLayout) -> Self {
        Self {
            layout,
            ..Self::default()
        }
    }

    /// Sets [`ScanOptions::on_error`].
    pub fn with_on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// Sets [`ScanOptions::follow_links`].
    pub fn with_follow_links(mut self, follow: bool) -> Self {
        self.follow_links = follow;
        self
    }

    /// Records a bad file (per `on_error`): an error to return, or a skip logged and kept.
    pub(crate) fn reject(
        &self,
        path: &Path,
        reason: String,
        skipped: &mut Vec<SkippedFile>,
    ) -> Result<()> {
        match self.on_error {
            OnError::Fail => Err(Error::format(path, reason)),
            OnError::Skip => {
                skipped.push(SkippedFile::new(path, reason));
                Ok(())
            }
        }
    }
}

/// Where an indexed image's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A file (symbolic links already resolved by the file system), with its size and
    /// modification time in nanoseconds since the epoch (for the cache key).
    File {
        path: PathBuf,
        size: u64,
        modified: u128,
    },
    /// A member of the archive: the data member's name (a link's target) and where its data lie
    /// in the (uncompressed) tar stream.
    Member {
        member: String,
        offset: u64,
        size: u64,
    },
}

/// One indexed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Path below the root, `/`-separated (a link's own name, not its target's).
    pub name: String,
    /// Where the bytes are.
    pub location: Location,
    /// The format, from the file's first bytes.
    pub kind: ImageKind,
}

/// What the index was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A folder.
    Folder(PathBuf),
    /// A `.tar` or `.tar.gz` archive, the tree under `prefix`; `stamp` is the archive's
    /// `(size, modified)` when scanned.
    Archive {
        path: PathBuf,
        prefix: String,
        compressed: bool,
        stamp: (u64, u128),
    },
}

/// The images of a folder tree or archive: where each one is, its label, the class names.
///
/// Built once by [`ImageIndex::scan_folder`] or [`ImageIndex::scan_archive`]; decoded into
/// memory by [`ImageIndex::decode`] or served batch by batch by [`ImageIndex::streaming`].
/// Entries are in sorted path order; labels are positions in [`ImageIndex::class_names`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    pub(crate) origin: Origin,
    pub(crate) entries: Vec<IndexEntry>,
    pub(crate) labels: Option<Vec<u32>>,
    pub(crate) class_names: Vec<String>,
    pub(crate) skipped: Vec<SkippedFile>,
    pub(crate) not_images: Vec<PathBuf>,
}

impl ImageIndex {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index holds no image.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Labels, one per image (`None` for the unlabelled layout).
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// Class names, indexed by label (empty when unlabelled).
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Files left out while scanning (`OnError::Skip`), with the reason.
    pub fn skipped(&self) -> &[SkippedFile] {
        &self.skipped
    }

    /// Files the scan left out as not meant to be images, in the order found: bytes of no image
    /// format, and a name with an extension that is not an image format's
    /// ([`crate::IMAGE_EXTENSIONS`]: `notes.txt`, `labels.csv`, `Thumbs.db`) or, without an
    /// extension, text (`LICENSE`).
    pub fn not_images(&self) -> &[PathBuf] {
        &self.not_images
    }

    /// The folder or archive scanned (for an archive subtree: `archive!prefix`).
    pub fn source(&self) -> PathBuf {
        match &self.origin {
            Origin::Folder(root) => root.clone(),
            Origin::Archive { path, prefix, .. } if prefix.is_empty() => path.clone(),
            Origin::Archive { path, prefix, .. } => {
                PathBuf::from(format!("{}!{prefix}", path.display()))
            }
        }
    }

    /// Image `index`'s origin for messages: a file path, or `archive.tar!member` (a link's own
    /// name).
    ///
    /// # Panics
    /// If `index >= len()`.
    pub fn item_source(&self, index: usize) -> PathBuf {
        let name = &self.entries[index].name;
        match &self.origin {
            Origin::Folder(root) => root.join(name),
            Origin::Archive { path, prefix, .. } if prefix.is_empty() => {
                PathBuf::from(format!("{}!{name}", path.display()))
            }
            Origin::Archive { path, prefix, .. } => {
                PathBuf::from(format!("{}!{prefix}/{name}", path.display()))
            }
        }
    }

    /// The images at `indices`, in that order (class names kept; skipped files and files that
    /// are not images kept).
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn select(&self, indices: &[usize]) -> Self {
        Self {
            origin: self.origin.clone(),
            entries: indices.iter().map(|&i| self.entries[i].clone()).collect(),
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            class_names: self.class_names.clone(),
            skipped: self.skipped.clone(),
            not_images: self.not_images.clone(),
        }
    }

    /// A stratified, seeded hold-out: of every class with `n` images, `round(fraction · n)`
    /// (at most `n − 1`, so each class keeps a training image) go to the second index, chosen
    /// by a shuffle seeded by `(seed, class)`. Unlabelled data is one stratum. Both parts keep
    /// dataset order. Returns `(train, held_out)`.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming `test_fraction` when `fraction` is not in (0, 1).
    pub fn split_stratified(&self, fraction: f64, seed: u64) -> Result<(Self, Self)> {
        let held = split_mask(self.labels.as_deref(), self.len(), fraction, seed)?;
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (i, h) in held.into_iter().enumerate() {
            if h { &mut test } else { &mut train }.push(i);
        }
        Ok((self.select(&train), self.select(&test)))
    }

    /// Relabels to `classes` (the training split's class names) by name.
    ///
    /// # Errors
    /// [`Error::ClassMismatch`] naming a class of this index missing from `classes`, or a class
    /// of `classes` this index lacks; [`Error::InvalidValue`] for an unlabelled index.
    pub fn with_classes(mut self, classes: &[String]) -> Result<Self> {
        let source = self.source();
        let Some(labels) = self.labels.as_mut() else {
            return Err(unlabelled(&source));
        };
        let map = class_map(&self.class_names, classes, &source)?;
        labels.iter_mut().for_each(|l| *l = map[*l as usize]);
        self.class_names = classes.to_vec();
        Ok(self)
    }

    /// A stable key over every source file (path, size, modification time; for an archive, the
    /// archive's and each member's name, offset and size), the labels and the class names. Any
    /// change to a source file changes it (unless size and time both stay). 64 hex digits.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"membank-image-index-1\0");
        match &self.origin {
            Origin::Folder(root) => hash.update(absolute(root).to_string_lossy().as_bytes()),
            Origin::Archive {
                path,
                prefix,
                compressed,
                stamp,
            } => {
                hash.update(absolute(path).to_string_lossy().as_bytes());
                hash.update(format!(
                    "\0{prefix}\0{compressed}\0{}\0{}",
                    stamp.0, stamp.1
                ));
            }
        }
        for e in &self.entries {
            hash.update(format!("\0{}\0{:?}", e.name, e.location));
        }
        hash.update(format!("\0{:?}\0{:?}", self.labels, self.class_names));
        hex(&hash.finalize())
    }
}

/// `true` for the items held out: per stratum, `round(fraction · n)` clamped to `n − 1`.
fn split_mask(labels: Option<&[u32]>, n: usize, fraction: f64, seed: u64) -> Result<Vec<bool>> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::InvalidValue {
            field: "test_fraction",
            value: fraction.to_string(),
            reason: "must be in (0, 1)",
        });
    }
    let strata = labels.map_or(1, |l| l.iter().max().map_or(0, |m| *m as usize + 1));
    let mut members = vec![Vec::new(); strata.max(1)];
    for i in 0..n {
        members[labels.map_or(0, |l| l[i] as usize)].push(i);
    }
    let mut held = vec![false; n];
    for (class, mut items) in members.into_iter().enumerate() {
        let take =
            ((fraction * items.len() as f64).round() as usize).min(items.len().saturating_sub(1));
        let mut rng = StdRng::seed_from_u64(splitmix64(seed ^ splitmix64(class as u64)));
        items.shuffle(&mut rng);
        items[..take].iter().for_each(|&i| held[i] = true);
    }
    Ok(held)
}

/// For every class of `own`, its position in `target`; a class on either side that the other
/// lacks is an error naming it.
pub(crate) fn class_map(own: &[String], target: &[String], source: &Path) -> Result<Vec<u32>> {
    if let Some(extra) = own.iter().find(|c| !target.contains(c)) {
        return Err(Error::ClassMismatch {
            class: extra.clone(),
            source_path: source.to_path_buf(),
            reason: "is not among the training classes",
        });
    }
    if let Some(missing) = target.iter().find(|c| !own.contains(c)) {
        return Err(Error::ClassMismatch {
            class: missing.clone(),
            source_path: source.to_path_buf(),
            reason: "is a training class with no images here",
        });
    }
    Ok(own
        .iter()
        .map(|c| target.iter().position(|t| t == c).unwrap() as u32)
        .collect())
}

pub(crate) fn unlabelled(source: &Path) -> Error {
    Error::InvalidValue {
        field: "classes",
        value: source.display().to_string(),
        reason: "an unlabelled dataset has no classes to map",
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
