//! Which images a run trained on, recorded in its folder (`data.json`) so that a resume, `eval`
//! or `export` with other data is refused instead of silently pairing bank rows with the wrong
//! images.
//!
//! Row `i` of the bank stands for training image `i`. A run resumed, evaluated or exported
//! against a data set with the same number of images but other images, another order or other
//! labels (another subset, a folder with files added and removed, a relabelled class) would give
//! no error and wrong results: a bank whose rows answer for images they never saw, kNN votes
//! from the wrong classes, exported rows named after the wrong files.
//!
//! The identity is the number of images, the class names, and per block of
//! [`BLOCK_ROWS`] rows a hash of each image's name and label, in order. Names are taken relative
//! to the folder all images share (the longest common folder of their
//! [`item_source`](bank_data::Dataset::item_source)s), so a data folder that was moved or
//! renamed is still the same data. Pixels are not read: an image rewritten in place under the
//! same name is not noticed.

use std::fs;
use std::path::Path;

use bank_data::Dataset;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The file in a run folder that records the run's training images.
pub const DATA_IDENTITY_FILE: &str = "data.json";

/// Rows per hashed block: a changed image is located to within this many rows.
pub const BLOCK_ROWS: usize = 4096;

/// The identity of a training set: enough to tell whether another set pairs the same images
/// with the same bank rows, small enough for any run folder (a name and a hash per
/// [`BLOCK_ROWS`] rows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIdentity {
    /// Number of training images (bank rows).
    pub images: usize,
    /// Whether the images carry labels.
    pub labelled: bool,
    /// Class names, indexed by label (empty when unlabelled).
    pub classes: Vec<String>,
    /// Rows per block of [`blocks`](Self::blocks).
    pub block_rows: usize,
    /// Rows `i · block_rows ..` in blocks, in order.
    pub blocks: Vec<Block>,
}

/// One block of [`DataIdentity::block_rows`] rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The relative name of the block's first image, for messages.
    pub first: String,
    /// The first 16 hex digits of SHA-256 over each row's relative name and label.
    pub hash: String,
}

impl DataIdentity {
    /// The identity of `train`.
    pub fn of(train: &dyn Dataset) -> Self {
        let sources: Vec<String> = (0..train.len()).map(|i| train.item_source(i)).collect();
        let cut = common_folder(&sources);
        let name = |i: usize| &sources[i][cut..];
        let blocks = (0..sources.len())
            .step_by(BLOCK_ROWS)
            .map(|start| {
                let mut hash = Sha256::new();
                for i in start..(start + BLOCK_ROWS).min(sources.len()) {
                    let label = train.label(i).map_or(-1, i64::from);
                    hash.update(format!("{}\0{label}\n", name(i)).as_bytes());
                }
                Block {
                    first: name(start).to_string(),
                    hash: hash.finalize()[..8]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                }
            })
            .collect();
        Self {
            images: sources.len(),
            labelled: train.label(0).is_some(),
            classes: train.class_names().to_vec(),
            block_rows: BLOCK_ROWS,
            blocks,
        }
    }

    /// How `now` differs from this (the run's) identity, in words; `None` when it is the same
    /// data.
    pub fn difference(&self, now: &Self) -> Option<String> {
        if self.images != now.images {
            return Some(format!(
                "the run trained on {} images, the data now has {}",
                self.images, now.images
            ));
        }
        if self.labelled != now.labelled {
            let was = |l: bool| if l { "labelled" } else { "unlabelled" };
            return Some(format!(
                "the run's images were {}, the data's now are {}",
                was(self.labelled),
                was(now.labelled)
            ));
        }
        if self.classes != now.classes {
            return Some(format!(
                "the run's classes were {}, now {}",
                list(&self.classes),
                list(&now.classes)
            ));
        }
        if self.block_rows != now.block_rows {
            return Some(format!(
                "{DATA_IDENTITY_FILE} hashes blocks of {} rows, this version {}: cannot compare",
                self.block_rows, now.block_rows
            ));
        }
        let (block, (was, is)) = self
            .blocks
            .iter()
            .zip(&now.blocks)
            .enumerate()
            .find(|(_, (a, b))| a != b)?;
        let start = block * self.block_rows;
        let end = (start + self.block_rows).min(self.images);
        let first = if was.first == is.first {
            format!("image {} is {} in both", start + 1, was.first)
        } else {
            format!("image {} was {}, now {}", start + 1, was.first, is.first)
        };
        Some(format!(
            "images {}–{} (counting from 1) are not the ones the run trained on: other files, \
             another order or other labels ({first})",
            start + 1,
            end,
        ))
    }

    /// Writes the identity to `run_dir`'s [`DATA_IDENTITY_FILE`], atomically.
    ///
    /// # Errors
    /// IO errors naming the file.
    pub fn record(&self, run_dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serialisable");
        bank_core::write_atomic(&run_dir.join(DATA_IDENTITY_FILE), text.as_bytes())?;
        Ok(())
    }

    /// The identity `run_dir` recorded; `None` when it recorded none (a run from before stop 40).
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file when it cannot be read or parsed.
    pub fn recorded(run_dir: &Path) -> Result<Option<Self>> {
        let file = run_dir.join(DATA_IDENTITY_FILE);
        let text = match fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&file, e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            Error::checkpoint(&file, format!("damaged ({e}); delete it to skip the check"))
        })
    }
}

/// Checks that `train` is the data the run in `run_dir` trained on, when the run recorded it.
///
/// # Errors
/// [`Error::DataChanged`] saying what differs; the errors of [`DataIdentity::recorded`].
pub fn check(run_dir: &Path, train: &dyn Dataset) -> Result<()> {
    let Some(recorded) = DataIdentity::recorded(run_dir)? else {
        return Ok(());
    };
    match recorded.difference(&DataIdentity::of(train)) {
        None => Ok(()),
        Some(reason) => Err(Error::DataChanged {
            run: run_dir.to_path_buf(),
            reason,
        }),
    }
}

/// Refuses a changed `data.path` (`from` → `to`) for a run that recorded no identity (trained
/// before membank recorded one): nothing could tell whether the folder now named holds the
/// same images.
///
/// # Errors
/// [`Error::DataChanged`] when the path changed and `run_dir` has no [`DATA_IDENTITY_FILE`];
/// the errors of [`DataIdentity::recorded`].
pub fn check_moved(run_dir: &Path, from: Option<&Path>, to: Option<&Path>) -> Result<()> {
    if from == to || DataIdentity::recorded(run_dir)?.is_some() {
        return Ok(());
    }
    Err(Error::DataChanged {
        run: run_dir.to_path_buf(),
        reason: format!(
            "`data.path` was {}, now {}, and the run recorded no {DATA_IDENTITY_FILE} (it was \
             trained before membank recorded its images) to check the images against",
            from.map_or("unset".into(), |p| p.display().to_string()),
            to.map_or("unset".into(), |p| p.display().to_string()),
        ),
    })
}

/// Byte length of the longest common folder prefix of `sources` (up to and including its last
/// `/` or `\`, or `!` of an archive); 0 when they share none.
fn common_folder(sources: &[String]) -> usize {
    let Some(first) = sources.first() else {
        return 0;
    };
    let mut len = first.len();
    for s in &sources[1..] {
        len = first
            .bytes()
            .zip(s.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    first[..len].rfind(['/', '\\', '!']).map_or(0, |i| i + 1)
}

/// At most six names, then how many more.
fn list(names: &[String]) -> String {
    let shown = names.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
    match names.len() {
        0 => "none".into(),
        n if n > 6 => format!("[{shown}, … {} more]", n - 6),
        _ => format!("[{shown}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bank_data::LoadedImage;

    /// Names and labels only: the identity reads nothing else.
    struct Names {
        names: Vec<String>,
        labels: Vec<u32>,
        classes: Vec<String>,
    }

    impl Names {
        /// `n` images `<root>/<class>/<i>.png`, class `i % 3`.
        fn new(root: &str, n: usize) -> Self {
            let classes: Vec<String> = ["cat", "dog", "ship"].map(String::from).to_vec();
            let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
            let names = (0..n)
                .map(|i| format!("{root}/{}/{i}.png", classes[labels[i] as usize]))
                .collect();
            Self {
                names,
                labels,
                classes,
            }
        }
    }

    impl Dataset for Names {
        fn len(&self) -> usize {
            self.names.len()
        }
        fn image(&self, index: usize) -> bank_data::Result<LoadedImage<'_>> {
            Err(bank_data::Error::InvalidValue {
                field: "index",
                value: index.to_string(),
                reason: "no pixels here",
            })
        }
        fn label(&self, index: usize) -> Option<u32> {
            self.labels.get(index).copied()
        }
        fn class_names(&self) -> &[String] {
            &self.classes
        }
        fn item_source(&self, index: usize) -> String {
            self.names[index].clone()
        }
    }

    fn differs(a: &Names, b: &Names) -> Option<String> {
        DataIdentity::of(a).difference(&DataIdentity::of(b))
    }

    #[test]
    fn the_same_images_elsewhere_are_the_same_data() {
        let run = Names::new("/data/birds", 10);
        assert_eq!(differs(&run, &Names::new("/data/birds", 10)), None);
        assert_eq!(differs(&run, &Names::new("/mnt/moved/b2", 10)), None);
        assert_eq!(DataIdentity::of(&run).blocks[0].first, "cat/0.png");
    }

    #[test]
    fn other_images_order_labels_classes_or_counts_are_named() {
        let run = Names::new("/d", 10);
        let said = differs(&run, &Names::new("/d", 9)).unwrap();
        assert!(said.contains("10 images, the data now has 9"), "{said}");

        let mut swapped = Names::new("/d", 10);
        swapped.names.swap(3, 4);
        let said = differs(&run, &swapped).unwrap();
        assert!(said.contains("images 1–10"), "{said}");
        swapped.names.swap(0, 1);
        let said = differs(&run, &swapped).unwrap();
        assert!(
            said.contains("image 1 was cat/0.png, now dog/1.png"),
            "{said}"
        );

        let mut relabelled = Names::new("/d", 10);
        relabelled.labels[7] = 0;
        assert!(differs(&run, &relabelled).is_some());

        let mut renamed = Names::new("/d", 10);
        renamed.names[9] = "/d/ship/9.jpg".into();
        assert!(differs(&run, &renamed).is_some());

        let mut classes = Names::new("/d", 10);
        classes.classes[2] = "truck".into();
        let said = differs(&run, &classes).unwrap();
        assert!(
            said.contains("[cat, dog, ship], now [cat, dog, truck]"),
            "{said}"
        );
    }

    #[test]
    fn a_change_is_located_to_its_block_of_rows() {
        let run = Names::new("/d", 2 * BLOCK_ROWS + 5);
        let mut changed = Names::new("/d", 2 * BLOCK_ROWS + 5);
        changed.names[BLOCK_ROWS + 17] = "/d/cat/other.png".into();
        let said = differs(&run, &changed).unwrap();
        let want = format!("images {}–{}", BLOCK_ROWS + 1, 2 * BLOCK_ROWS);
        assert!(said.contains(&want), "{said}");
        let first = &run.names[BLOCK_ROWS][3..];
        assert!(
            said.contains(&format!("image {} is {first} in both", BLOCK_ROWS + 1)),
            "{said}"
        );
        changed.names[BLOCK_ROWS + 17] = run.names[BLOCK_ROWS + 17].clone();
        changed.labels[2 * BLOCK_ROWS + 4] = 1;
        let said = differs(&run, &changed).unwrap();
        let want = format!("images {}–{}", 2 * BLOCK_ROWS + 1, 2 * BLOCK_ROWS + 5);
        assert!(said.contains(&want), "{said}");
    }

    #[test]
    fn recorded_identities_read_back_and_damaged_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DataIdentity::recorded(dir.path()).unwrap(), None);
        let run = Names::new("/d", 10);
        check(dir.path(), &run).unwrap();
        DataIdentity::of(&run).record(dir.path()).unwrap();
        assert_eq!(
            DataIdentity::recorded(dir.path()).unwrap(),
            Some(DataIdentity::of(&run))
        );
        check(dir.path(), &Names::new("/elsewhere", 10)).unwrap();
        let err = check(dir.path(), &Names::new("/d", 11)).unwrap_err();
        assert!(matches!(err, Error::DataChanged { .. }), "{err}");
        check_moved(dir.path(), Some(Path::new("/d")), Some(Path::new("/e"))).unwrap();

        let file = dir.path().join(DATA_IDENTITY_FILE);
        fs::write(&file, "{\"images\": 10").unwrap();
        let err = check(dir.path(), &run).unwrap_err().to_string();
        assert!(
            err.contains(&file.display().to_string()) && err.contains("damaged"),
            "{err}"
        );
        fs::remove_file(&file).unwrap();
        let err = check_moved(dir.path(), Some(Path::new("/d")), Some(Path::new("/e")));
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("recorded no data.json")
        );
        check_moved(dir.path(), Some(Path::new("/d")), Some(Path::new("/d"))).unwrap();
    }

    #[test]
    fn common_folder_stops_at_a_separator() {
        let s = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        let a = s(&["/d/data_batch_1.bin#0", "/d/data_batch_2.bin#7"]);
        assert_eq!(&a[0][common_folder(&a)..], "data_batch_1.bin#0");
        let b = s(&["/x/i.tar!train/cat/1.png", "/x/i.tar!train/dog/1.png"]);
        assert_eq!(&b[1][common_folder(&b)..], "dog/1.png");
        let one = s(&["/r/cat/1.png"]);
        assert_eq!(&one[0][common_folder(&one)..], "1.png");
        assert_eq!(common_folder(&s(&["a.png", "b.png"])), 0);
        assert_eq!(common_folder(&[]), 0);
    }
}
