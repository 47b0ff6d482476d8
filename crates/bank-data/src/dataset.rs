//! The dataset interface, decoded images (borrowed or owned), and the in-memory dataset every
//! reader produces.

use std::path::{Path, PathBuf};

use crate::{Error, ImageRef, ImageStore, Result};

/// Reads a class-name file (one name a line, blank lines ignored) that must hold `expected` names.
pub(crate) fn read_class_names(file: &Path, expected: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != expected {
        return Err(Error::format(
            file,
            format!("{} class names, expected {expected}", names.len()),
        ));
    }
    Ok(names)
}

pub(crate) fn out_of_range(index: usize, len: usize) -> Error {
    Error::InvalidValue {
        field: "index",
        value: index.to_string(),
        reason: if len == 0 {
            "the dataset is empty"
        } else {
            "past the end of the dataset"
        },
    }
}

/// A file left out while building a dataset (`OnError::Skip`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    /// The file, or `archive!member`.
    pub path: PathBuf,
    /// Why it was left out.
    pub reason: String,
}

impl SkippedFile {
    /// Records a skipped file and logs it (`tracing::warn`).
    pub fn new(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        let (path, reason) = (path.into(), reason.into());
        tracing::warn!(path = %path.display(), %reason, "skipped a bad image file");
        Self { path, reason }
    }
}

/// A decoded image that owns its pixels (what a streaming dataset hands out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedImage {
    /// Position of the image in its dataset.
    pub index: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height · width · 3` bytes, RGB, HWC.
    pub pixels: Vec<u8>,
}

/// A decoded RGB image (HWC u8): borrowed from an in-memory dataset, or owned when decoded on
/// request.
#[derive(Debug, Clone)]
pub enum LoadedImage<'a> {
    /// A slice of the dataset's buffer.
    Borrowed(ImageRef<'a>),
    /// Freshly decoded.
    Owned(OwnedImage),
}

impl LoadedImage<'_> {
    /// The image as a borrowed view.
    pub fn view(&self) -> ImageRef<'_> {
        match self {
            Self::Borrowed(r) => *r,
            Self::Owned(o) => ImageRef {
                index: o.index,
                height: o.height,
                width: o.width,
                pixels: &o.pixels,
            },
        }
    }
}

/// A finite set of images, each with its index and an optional label.
///
/// The loader needs nothing else, so any source that can hand out decoded RGB images can train.
/// Object safe: hold it as `Arc<dyn Dataset>`.
pub trait Dataset: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;

    /// Whether the dataset is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decoded image of item `index` (`height × width × 3`, RGB, u8): borrowed for
    /// in-memory sets, owned (decoded now) for streaming ones.
    ///
    /// # Errors
    /// An index past the end; for streaming sets, a file that cannot be read or decoded (the
    /// error names it).
    fn image(&self, index: usize) -> Result<LoadedImage<'_>>;

    /// The class of item `index`, when the dataset is labelled (`None` past the end).
    fn label(&self, index: usize) -> Option<u32>;

    /// Class names, indexed by label (empty for unlabelled data).
    fn class_names(&self) -> &[String];

    /// All labels, when the dataset is labelled.
    fn labels(&self) -> Option<Vec<u32>> {
        (0..self.len()).map(|i| self.label(i)).collect()
    }

    /// Human-readable origin of item `index`: a file path, `archive.tar!member`, or
    /// `file.bin#record`.
    fn item_source(&self, index: usize) -> String;

    /// Files left out while building (`OnError::Skip`), with the reason.
    fn skipped(&self) -> &[SkippedFile] {
        &[]
    }
}

/// Where each item of an [`ImageDataset`] came from.
#[derive(Debug, Clone, PartialEq)]
enum ItemSources {
    /// `source#index`.
    Positions,
    /// One name per item.
    Names(Vec<String>),
    /// Binary files of fixed-size records, with their record counts, in order.
    Records(Vec<(PathBuf, usize)>),
}

/// Decoded images with optional labels, held in one [`ImageStore`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    store: ImageStore,
    labels: Option<Vec<u32>>,
    class_names: Vec<String>,
    source: PathBuf,
    items: ItemSources,
    skipped: Vec<SkippedFile>,
}

impl ImageDataset {
    /// Assembles a dataset. `labels`, when given, must have one entry per image, each below
    /// `class_names.len()`. Item sources default to `source#index`.
    ///
    /// # Panics
    /// If the labels do not match the images (a bug in the reader that called this).
    pub fn new(
        store: ImageStore,
        labels: Option<Vec<u32>>,
        class_names: Vec<String>,
        source: impl Into<PathBuf>,
    ) -> Self {
        if let Some(labels) = &labels {
            assert_eq!(labels.len(), store.len(), "one label per image");
            assert!(
                labels.iter().all(|&l| (l as usize) < class_names.len()),
                "labels below the number of classes"
            );
        }
        Self {
            store,
            labels,
            class_names,
            source: source.into(),
            items: ItemSources::Positions,
            skipped: Vec::new(),
        }
    }

    /// Sets the item sources (one name per image, e.g. the file paths).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] when there is not one name per image.
    pub fn with_item_sources(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.len() {
            return Err(Error::InvalidValue {
                field: "item_sources",
                value: format!("{} names for {} images", names.len(), self.len()),
                reason: "need one name per image",
            });
        }
        self.items = ItemSources::Names(names);
        Ok(self)
    }

    /// Item sources `file#record` for record files read in order (`(file, records)`).
    pub(crate) fn with_records(mut self, files: Vec<(PathBuf, usize)>) -> Self {
        debug_assert_eq!(files.iter().map(|f| f.1).sum::<usize>(), self.len());
        self.items = ItemSources::Records(files);
        self
    }

    /// Sets the record of skipped files.
    pub fn with_skipped(mut self, skipped: Vec<SkippedFile>) -> Self {
        self.skipped = skipped;
        self
    }

    /// Where the images came from (a folder, archive or binary file).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The image buffer.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Image `index`, borrowed.
    ///
    /// # Panics
    /// If `index >= len()`.
    pub fn get(&self, index: usize) -> ImageRef<'_> {
        self.store.get(index)
    }

    /// All labels, when known.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// The item sources as names, one per image.
    fn item_names(&self) -> Vec<String> {
        (0..self.len())
            .map(|i| Dataset::item_source(self, i))
            .collect()
    }

    /// The items at `indices`, in that order, as a new dataset (indices are renumbered from 0;
    /// item sources and skipped files are kept).
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn select(&self, indices: &[usize]) -> Self {
        let names = match &self.items {
            ItemSources::Names(n) => {
                ItemSources::Names(indices.iter().map(|&i| n[i].clone()).collect())
            }
            _ => {
                let all = self.item_names();
                ItemSources::Names(indices.iter().map(|&i| all[i].clone()).collect())
            }
        };
        Self {
            store: self.store.select(indices),
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            class_names: self.class_names.clone(),
            source: self.source.clone(),
            items: names,
            skipped: self.skipped.clone(),
        }
    }

    /// The first `per_class` items of every class, in dataset order (all items of a class that has
    /// fewer). Unlabelled data: the first `per_class` items.
    pub fn first_per_class(&self, per_class: usize) -> Self {
        self.select(&first_per_class(
            self.labels.as_deref(),
            self.len(),
            per_class,
        ))
    }

    /// Relabels to `classes` (the training split's names) by name, as
    /// [`crate::ImageIndex::with_classes`].
    ///
    /// # Errors
    /// [`Error::ClassMismatch`] naming a class on either side that the other lacks;
    /// [`Error::InvalidValue`] for an unlabelled dataset.
    pub fn with_classes(mut self, classes: &[String]) -> Result<Self> {
        let Some(labels) = self.labels.as_mut() else {
            return Err(crate::index::unlabelled(&self.source));
        };
        let map = crate::index::class_map(&self.class_names, classes, &self.source)?;
        labels.iter_mut().for_each(|l| *l = map[*l as usize]);
        self.class_names = classes.to_vec();
        Ok(self)
    }

    /// Item sources and skipped files, encoded for the cache (see [`ImageDataset::decode_extras`]).
    pub(crate) fn encode_extras(&self) -> (String, String) {
        let items = match &self.items {
            ItemSources::Positions => String::new(),
            ItemSources::Names(n) => format!("names\n{}", n.join("\n")),
            ItemSources::Records(r) => {
                let lines: Vec<String> = r
                    .iter()
                    .map(|(p, n)| format!("{n}\t{}", p.display()))
                    .collect();
                format!("records\n{}", lines.join("\n"))
            }
        };
        let skipped: Vec<String> = self
            .skipped
            .iter()
            .map(|s| {
                format!(
                    "{}\t{}",
                    s.path.display(),
                    s.reason.replace(['\n', '\t'], " ")
                )
            })
            .collect();
        (items, skipped.join("\n"))
    }

    /// The inverse of [`ImageDataset::encode_extras`]; `None` when malformed.
    pub(crate) fn decode_extras(mut self, items: &str, skipped: &str) -> Option<Self> {
        let mut lines = items.split('\n');
        self.items = match lines.next() {
            None | Some("") => ItemSources::Positions,
            Some("names") => ItemSources::Names(lines.map(String::from).collect()),
            Some("records") => ItemSources::Records(
                lines
                    .map(|l| {
                        let (n, p) = l.split_once('\t')?;
                        Some((PathBuf::from(p), n.parse().ok()?))
                    })
                    .collect::<Option<_>>()?,
            ),
            Some(_) => return None,
        };
        if let ItemSources::Names(n) = &self.items
            && n.len() != self.len()
        {
            return None;
        }
        self.skipped = skipped
            .split('\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (p, r) = l.split_once('\t')?;
                Some(SkippedFile {
                    path: p.into(),
                    reason: r.into(),
                })
            })
            .collect::<Option<_>>()?;
        Some(self)
    }
}

impl Dataset for ImageDataset {
    fn len(&self) -> usize {
        self.store.len()
    }

    fn image(&self, index: usize) -> Result<LoadedImage<'_>> {
        if index >= self.len() {
            return Err(out_of_range(index, self.len()));
        }
        Ok(LoadedImage::Borrowed(self.store.get(index)))
    }

    fn label(&self, index: usize) -> Option<u32> {
        self.labels.as_ref().and_then(|l| l.get(index).copied())
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn labels(&self) -> Option<Vec<u32>> {
        self.labels.clone()
    }

    fn item_source(&self, index: usize) -> String {
        match &self.items {
            ItemSources::Names(n) if index < n.len() => n[index].clone(),
            ItemSources::Records(files) => {
                let mut rest = index;
                for (path, n) in files {
                    if rest < *n {
                        return format!("{}#{rest}", path.display());
                    }
                    rest -= n;
                }
                format!("{}#{index}", self.source.display())
            }
            _ => format!("{}#{index}", self.source.display()),
        }
    }

    fn skipped(&self) -> &[SkippedFile] {
        &self.skipped
    }
}

/// Indices of the first `per_class` items of every class, in order (all items of a class that has
/// fewer); unlabelled data (`labels` is `None`): the first `per_class` of the `len` items. Works
/// on any labelled collection (an [`ImageDataset`], an index), so subsets are chosen one way.
pub fn first_per_class(labels: Option<&[u32]>, len: usize, per_class: usize) -> Vec<usize> {
    match labels {
        None => (0..len.min(per_class)).collect(),
        Some(labels) => {
            let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
            let mut taken = vec![0usize; classes];
            (0..labels.len())
                .filter(|&i| {
                    let t = &mut taken[labels[i] as usize];
                    *t += 1;
                    *t <= per_class
                })
                .collect()
        }
    }
}
