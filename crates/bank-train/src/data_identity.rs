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
//! The identity is the number of images, the class names, and per row a 32-bit hash of the
//! image's name and label (8 hex digits a row: 0.4 MB for CIFAR-10, 10 MB for ImageNet), so a
//! difference is named down to the image. Names are taken relative to the folder all images
//! share (the longest common folder of their [`item_source`](bank_data::Dataset::item_source)s),
//! so a data folder that was moved or renamed is still the same data. Pixels are not read: an
//! image rewritten in place under the same name is not noticed.

use std::fs;
use std::path::Path;

use bank_data::Dataset;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The file in a run folder that records the run's training images.
pub const DATA_IDENTITY_FILE: &str = "data.json";

/// The identity of a training set: enough to tell whether another set pairs the same images
/// with the same bank rows, and to name the first image that differs. Equal when the recorded
/// fields are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataIdentity {
    /// Number of training images (bank rows).
    pub images: usize,
    /// Whether the images carry labels.
    pub labelled: bool,
    /// Class names, indexed by label (empty when unlabelled).
    pub classes: Vec<String>,
    /// Per row, in order, 8 hex digits: the first 4 bytes of SHA-256 over the image's relative
    /// name and its label.
    pub rows: String,
    /// The relative names of the images in hand (not recorded), for messages.
    #[serde(skip)]
    names: Vec<String>,
}

impl PartialEq for DataIdentity {
    fn eq(&self, other: &Self) -> bool {
        (self.images, self.labelled, &self.classes, &self.rows)
            == (other.images, other.labelled, &other.classes, &other.rows)
    }
}

impl Eq for DataIdentity {}

/// Hex digits per row of [`DataIdentity::rows`].
const ROW_DIGITS: usize = 8;

impl DataIdentity {
    /// The identity of `train`.
    pub fn of(train: &dyn Dataset) -> Self {
        let sources: Vec<String> = (0..train.len()).map(|i| train.item_source(i)).collect();
        let cut = common_folder(&sources);
        let names: Vec<String> = sources.iter().map(|s| s[cut..].to_string()).collect();
        let mut rows = String::with_capacity(names.len() * ROW_DIGITS);
        for (i, name) in names.iter().enumerate() {
            let label = train.label(i).map_or(-1, i64::from);
            let hash = Sha256::digest(format!("{name}\0{label}").as_bytes());
            for b in &hash[..ROW_DIGITS / 2] {
                rows.push_str(&format!("{b:02x}"));
            }
        }
        Self {
            images: names.len(),
            labelled: train.label(0).is_some(),
            classes: train.class_names().to_vec(),
            rows,
            names,
        }
    }

    /// One string for the whole identity (count, labelled, classes and every row), to hash.
    pub fn digest(&self) -> String {
        format!(
            "{}\0{}\0{}\0{}",
            self.images,
            self.labelled,
            self.classes.join("\u{1f}"),
            self.rows
        )
    }

    /// Row `i`'s hash.
    fn row(&self, i: usize) -> Option<&str> {
        self.rows.get(i * ROW_DIGITS..(i + 1) * ROW_DIGITS)
    }

    /// How `now` (the identity of the data in hand) differs from this (the run's) identity, in
    /// words; `None` when it is the same data.
    pub fn difference(&self, now: &Self) -> Option<String> {
        let shared = self.images.min(now.images);
        let first = (0..shared).find(|&i| self.row(i) != now.row(i));
        let image = |i: usize| {
            let name = now.names.get(i).map_or("?", String::as_str);
            format!("image {} (now {name})", i + 1)
        };
        if self.images != now.images {
            let (a, b) = (self.images, now.images);
            let where_ = match first {
                Some(i) => format!("the first that differs is {}", image(i)),
                None if b > a => format!("the first {a} are the same, {} more follow", b - a),
                None => format!("the first {b} are the same, the last {} gone", a - b),
            };
            return Some(format!(
                "the run trained on {a} images, the data now has {b} ({}): {where_}",
                self.changes(now)
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
        let i = first?;
        let differ = (i..shared).filter(|&j| self.row(j) != now.row(j)).count();
        Some(format!(
            "{differ} of the {} images are not the ones the run trained on at their rows ({}); \
             the first is {}",
            self.images,
            self.changes(now),
            image(i)
        ))
    }

    /// What changed regardless of position: images now that the run did not have (new,
    /// renamed or relabelled), images of the run that are gone, and whether the rest moved.
    fn changes(&self, now: &Self) -> String {
        use std::collections::HashSet;
        let rows = |id: &Self| -> HashSet<String> {
            (0..id.images)
                .filter_map(|i| id.row(i))
                .map(str::to_string)
                .collect()
        };
        let (was, is) = (rows(self), rows(now));
        let new = (0..now.images)
            .filter(|&i| now.row(i).is_some_and(|r| !was.contains(r)))
            .count();
        let gone = (0..self.images)
            .filter(|&i| self.row(i).is_some_and(|r| !is.contains(r)))
            .count();
        let mut parts = vec![
            format!("{new} new, renamed or relabelled"),
            format!("{gone} gone"),
        ];
        if new == 0 && gone == 0 {
            parts.push("the same images in another order".into());
        }
        parts.join(", ")
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
        assert_eq!(DataIdentity::of(&run).names[0], "cat/0.png");
        assert_eq!(DataIdentity::of(&run).rows.len(), 10 * ROW_DIGITS);
    }

    #[test]
    fn other_images_order_labels_classes_or_counts_are_named() {
        let run = Names::new("/d", 10);
        let said = differs(&run, &Names::new("/d", 9)).unwrap();
        assert!(
            said.contains(
                "10 images, the data now has 9 (0 new, renamed or relabelled, 1 gone): the first \
                 9 are the same, the last 1 gone"
            ),
            "{said}"
        );
        let said = differs(&run, &Names::new("/d", 12)).unwrap();
        assert!(
            said.contains("the first 10 are the same, 2 more follow"),
            "{said}"
        );
        let mut removed = Names::new("/d", 10);
        removed.names.remove(4);
        removed.labels.remove(4);
        let said = differs(&run, &removed).unwrap();
        assert!(
            said.contains("the first that differs is image 5 (now ship/5.png)"),
            "{said}"
        );
        assert!(
            said.contains("(0 new, renamed or relabelled, 1 gone)"),
            "{said}"
        );

        let mut swapped = Names::new("/d", 10);
        swapped.names.swap(3, 4);
        swapped.labels.swap(3, 4);
        let said = differs(&run, &swapped).unwrap();
        assert!(
            said.contains("2 of the 10 images") && said.contains("image 4 (now dog/4.png)"),
            "{said}"
        );
        let reordered = "(0 new, renamed or relabelled, 0 gone, the same images in another order)";
        assert!(said.contains(reordered), "{said}");

        let mut relabelled = Names::new("/d", 10);
        relabelled.labels[7] = 0;
        let said = differs(&run, &relabelled).unwrap();
        assert!(
            said.contains("1 of the 10 images") && said.contains("image 8 (now dog/7.png)"),
            "{said}"
        );
        assert!(
            said.contains("(1 new, renamed or relabelled, 1 gone)"),
            "{said}"
        );

        let mut renamed = Names::new("/d", 10);
        renamed.names[9] = "/d/cat/9.jpg".into();
        let said = differs(&run, &renamed).unwrap();
        assert!(said.contains("image 10 (now cat/9.jpg)"), "{said}");

        let mut classes = Names::new("/d", 10);
        classes.classes[2] = "truck".into();
        let said = differs(&run, &classes).unwrap();
        assert!(
            said.contains("[cat, dog, ship], now [cat, dog, truck]"),
            "{said}"
        );
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
