//! Class selection for the unseen-categories protocol (Ye et al. 2019): `data.train_classes`
//! picks the classes the network trains on, `data.test_classes` those it is evaluated on.
//!
//! A selection is a list of class names and index ranges (`"0..5"`, end excluded, or a single
//! index `"7"`), resolved against the training set's class names. It works for every dataset
//! kind: [`ClassSubset`] wraps any `Arc<dyn Dataset>` and renumbers the kept classes from 0 in
//! their original order.

use std::sync::Arc;

use bank_data::{Dataset, LoadedImage};

use super::EvalData;
use crate::{Error, Result};

/// Resolves `entries` (names or ranges) against `names`: the selected class indices, ascending
/// and without repeats.
///
/// # Errors
/// [`Error::Config`] naming `field` for an unknown name, a range outside the classes, an empty
/// range or an empty selection.
pub fn resolve(entries: &[String], names: &[String], field: &str) -> Result<Vec<u32>> {
    let bad = |value: &str, reason: String| Error::Config {
        field: field.into(),
        reason: format!("`{value}`: {reason}"),
    };
    if names.is_empty() {
        return Err(Error::Config {
            field: field.into(),
            reason: "the images have no classes (an unlabelled layout): nothing to select".into(),
        });
    }
    let mut keep = vec![false; names.len()];
    for entry in entries {
        let entry = entry.trim();
        if let Some(i) = names.iter().position(|n| n == entry) {
            keep[i] = true;
            continue;
        }
        let range = parse_range(entry).ok_or_else(|| {
            bad(
                entry,
                format!(
                    "neither a class name nor an index range like \"0..5\" (classes: {})",
                    names.join(", ")
                ),
            )
        })?;
        if range.is_empty() || range.end > names.len() {
            return Err(bad(
                entry,
                format!("must be a non-empty range within 0..{}", names.len()),
            ));
        }
        keep[range].iter_mut().for_each(|k| *k = true);
    }
    let selected: Vec<u32> = (0..names.len() as u32)
        .filter(|&i| keep[i as usize])
        .collect();
    if selected.is_empty() {
        return Err(bad(&entries.join(","), "selects no class".into()));
    }
    Ok(selected)
}

/// `"a..b"` or a single index `"a"`.
fn parse_range(text: &str) -> Option<std::ops::Range<usize>> {
    match text.split_once("..") {
        Some((a, b)) => Some(a.trim().parse().ok()?..b.trim().parse().ok()?),
        None => {
            let i: usize = text.parse().ok()?;
            Some(i..i + 1)
        }
    }
}

/// The items of `inner` whose class is selected, classes renumbered `0..m` in their original
/// order (class names likewise).
pub struct ClassSubset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
    labels: Vec<u32>,
    class_names: Vec<String>,
}

impl ClassSubset {
    /// The items of `inner` of classes `selected` (indices into `inner.class_names()`).
    ///
    /// # Errors
    /// [`Error::Config`] naming `field` when `inner` is unlabelled.
    pub fn new(inner: Arc<dyn Dataset>, selected: &[u32], field: &str) -> Result<Self> {
        let all = inner.labels().ok_or_else(|| Error::Config {
            field: field.into(),
            reason: "selecting classes needs labelled images".into(),
        })?;
        let mut new_label = vec![None; inner.class_names().len()];
        for (new, &old) in selected.iter().enumerate() {
            if let Some(slot) = new_label.get_mut(old as usize) {
                *slot = Some(new as u32);
            }
        }
        let (mut indices, mut labels) = (Vec::new(), Vec::new());
        for (i, &l) in all.iter().enumerate() {
            if let Some(new) = new_label.get(l as usize).copied().flatten() {
                indices.push(i);
                labels.push(new);
            }
        }
        let class_names = selected
            .iter()
            .map(|&c| {
                inner
                    .class_names()
                    .get(c as usize)
                    .cloned()
                    .unwrap_or_else(|| c.to_string())
            })
            .collect();
        Ok(Self {
            inner,
            indices,
            labels,
            class_names,
        })
    }

    /// Index in the wrapped dataset of each item, in order.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Dataset for ClassSubset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn image(&self, index: usize) -> bank_data::Result<LoadedImage<'_>> {
        self.inner.image(self.indices[index])
    }

    fn label(&self, index: usize) -> Option<u32> {
        self.labels.get(index).copied()
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn item_source(&self, index: usize) -> String {
        self.inner.item_source(self.indices[index])
    }
}

/// Applies `data.train_classes` and `data.test_classes` to the opened sets. With only
/// `train_classes`, evaluation uses the same classes; with only `test_classes`, training uses
/// every class. The evaluation reference keeps its bank rows when all its images are still
/// training images, else its features are recomputed.
///
/// # Errors
/// Unknown classes or ranges, or class selection on unlabelled images.
pub fn select(
    train: Arc<dyn Dataset>,
    eval: Option<EvalData>,
    train_classes: Option<&[String]>,
    test_classes: Option<&[String]>,
    notes: &mut Vec<String>,
) -> Result<(Arc<dyn Dataset>, Option<EvalData>)> {
    if train_classes.is_none() && test_classes.is_none() {
        return Ok((train, eval));
    }
    let names = match &eval {
        Some(e) => e.reference.class_names().to_vec(),
        None => train.class_names().to_vec(),
    };
    let train_sel = train_classes
        .map(|c| resolve(c, train.class_names(), "data.train_classes"))
        .transpose()?;
    let test_sel = match test_classes {
        Some(c) => Some(resolve(c, &names, "data.test_classes")?),
        None => train_sel.clone(),
    };
    // Classes on both sides are not unseen categories (Ye et al.'s protocol): said, since an
    // overlapping range is an easy slip (`0..5` and `3..8`).
    if let (Some(tr), Some(te), Some(_)) = (&train_sel, &test_sel, test_classes) {
        let trained: Vec<&str> = tr
            .iter()
            .map(|&c| train.class_names()[c as usize].as_str())
            .collect();
        let both: Vec<&str> = te
            .iter()
            .map(|&c| names[c as usize].as_str())
            .filter(|n| trained.contains(n))
            .collect();
        if !both.is_empty() {
            notes.push(format!(
                "note: {} of the {} test classes are training classes too ({}): they are not \
                 unseen categories",
                both.len(),
                te.len(),
                both.join(", ")
            ));
        }
    }
    // Old training index → new training row.
    let (new_train, row_of): (Arc<dyn Dataset>, Vec<Option<usize>>) = match &train_sel {
        Some(sel) => {
            let subset = ClassSubset::new(Arc::clone(&train), sel, "data.train_classes")?;
            let mut row_of = vec![None; train.len()];
            for (new, &old) in subset.indices().iter().enumerate() {
                row_of[old] = Some(new);
            }
            notes.push(format!(
                "training on {} of {} classes ({}): {} images",
                sel.len(),
                train.class_names().len(),
                subset.class_names().join(", "),
                subset.len()
            ));
            (Arc::new(subset), row_of)
        }
        None => (Arc::clone(&train), (0..train.len()).map(Some).collect()),
    };
    let eval = match (eval, test_sel) {
        (Some(e), Some(sel)) => Some(select_eval(e, &sel, &row_of, notes)?),
        (e, _) => e,
    };
    Ok((new_train, eval))
}

/// The evaluation sets restricted to classes `sel`; bank rows renumbered through `row_of`.
fn select_eval(
    eval: EvalData,
    sel: &[u32],
    row_of: &[Option<usize>],
    notes: &mut Vec<String>,
) -> Result<EvalData> {
    let reference = ClassSubset::new(eval.reference, sel, "data.test_classes")?;
    let queries = ClassSubset::new(eval.queries, sel, "data.test_classes")?;
    let bank_rows = eval.bank_rows.and_then(|rows| {
        reference
            .indices()
            .iter()
            .map(|&i| row_of.get(rows[i]).copied().flatten())
            .collect::<Option<Vec<usize>>>()
    });
    notes.push(format!(
        "evaluating on {} classes ({}): {} reference and {} query images{}",
        sel.len(),
        reference.class_names().join(", "),
        reference.len(),
        queries.len(),
        if bank_rows.is_none() {
            " (reference features recomputed: not all are training images)"
        } else {
            ""
        }
    ));
    Ok(EvalData {
        reference: Arc::new(reference),
        bank_rows,
        queries: Arc::new(queries),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["airplane", "automobile", "bird", "cat", "deer", "dog"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn names_and_ranges_resolve() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(resolve(&s(&["0..3"]), &names(), "f").unwrap(), [0, 1, 2]);
        assert_eq!(
            resolve(&s(&["dog", "1", "cat"]), &names(), "f").unwrap(),
            [1, 3, 5]
        );
        let err = resolve(&s(&["zebra"]), &names(), "data.test_classes").unwrap_err();
        assert!(err.to_string().contains("data.test_classes") && err.to_string().contains("zebra"));
        assert!(resolve(&s(&["4..9"]), &names(), "f").is_err());
        assert!(resolve(&s(&["3..3"]), &names(), "f").is_err());
    }
}
