//! The dataset interface and the in-memory dataset every reader produces.

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

/// A finite set of images, each with its index and an optional label.
///
/// The loader needs nothing else, so any source that can hand out decoded RGB images can train.
pub trait Dataset: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;

    /// Whether the dataset is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decoded image of item `index` (`height × width × 3`, RGB, u8).
    fn image(&self, index: usize) -> ImageRef<'_>;

    /// The class of item `index`, when the dataset is labelled.
    fn label(&self, index: usize) -> Option<u32>;

    /// Class names, indexed by label (empty for unlabelled data).
    fn class_names(&self) -> &[String];
}

/// Decoded images with optional labels, held in one [`ImageStore`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    store: ImageStore,
    labels: Option<Vec<u32>>,
    class_names: Vec<String>,
    source: PathBuf,
}

impl ImageDataset {
    /// Assembles a dataset. `labels`, when given, must have one entry per image, each below
    /// `class_names.len()`.
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
        }
    }

    /// Where the images came from (a folder, archive or binary file).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The image buffer.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// All labels, when known.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// The items at `indices`, in that order, as a new dataset (indices are renumbered from 0).
    pub fn select(&self, indices: &[usize]) -> Self {
        Self {
            store: self.store.select(indices),
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            class_names: self.class_names.clone(),
            source: self.source.clone(),
        }
    }

    /// The first `per_class` items of every class, in dataset order (all items of a class that has
    /// fewer). Unlabelled data: the first `per_class` items.
    pub fn first_per_class(&self, per_class: usize) -> Self {
        let indices: Vec<usize> = match &self.labels {
            None => (0..self.len().min(per_class)).collect(),
            Some(labels) => {
                let mut taken = vec![0usize; self.class_names.len()];
                (0..labels.len())
                    .filter(|&i| {
                        let t = &mut taken[labels[i] as usize];
                        *t += 1;
                        *t <= per_class
                    })
                    .collect()
            }
        };
        self.select(&indices)
    }
}

impl Dataset for ImageDataset {
    fn len(&self) -> usize {
        self.store.len()
    }

    fn image(&self, index: usize) -> ImageRef<'_> {
        self.store.get(index)
    }

    fn label(&self, index: usize) -> Option<u32> {
        self.labels.as_ref().map(|l| l[index])
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }
}
