//! Two datasets served as one (STL-10's train + unlabeled split).

use std::sync::Arc;

use bank_data::{Dataset, LoadedImage, SkippedFile};

/// `first` then `second`, indices running on. Labels come from each part; class names from the
/// first (the second must use the same classes, or none).
pub struct Concat {
    first: Arc<dyn Dataset>,
    second: Arc<dyn Dataset>,
    skipped: Vec<SkippedFile>,
}

impl Concat {
    /// Joins two datasets.
    pub fn new(first: Arc<dyn Dataset>, second: Arc<dyn Dataset>) -> Self {
        let skipped = first
            .skipped()
            .iter()
            .chain(second.skipped())
            .cloned()
            .collect();
        Self {
            first,
            second,
            skipped,
        }
    }

    fn locate(&self, index: usize) -> (&dyn Dataset, usize) {
        let n = self.first.len();
        if index < n {
            (&*self.first, index)
        } else {
            (&*self.second, index - n)
        }
    }
}

impl Dataset for Concat {
    fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    fn image(&self, index: usize) -> bank_data::Result<LoadedImage<'_>> {
        let (part, i) = self.locate(index);
        part.image(i)
    }

    fn label(&self, index: usize) -> Option<u32> {
        let (part, i) = self.locate(index);
        part.label(i)
    }

    fn class_names(&self) -> &[String] {
        self.first.class_names()
    }

    fn item_source(&self, index: usize) -> String {
        let (part, i) = self.locate(index);
        part.item_source(i)
    }

    fn skipped(&self) -> &[SkippedFile] {
        &self.skipped
    }
}
