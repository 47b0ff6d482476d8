//! `dataset = "image_folder"` end to end: layouts, grey and mixed-size images, the normalisation
//! written into the run's config, unlabelled data, and class mismatches between splits.

use std::path::Path;

use bank_data::{Dataset, ImageDataset};
use bank_train::config::FolderLayoutKind;
use bank_train::{NoProgress, RunOptions, TrainConfig, data_source, train};

use crate::{FastTrain, cifar_records};

/// Writes image `i` of `set` as a PNG at `path`, grey when `grey`, resized to `size` (w, h).
fn write_png(set: &ImageDataset, i: usize, path: &Path, grey: bool, size: (u32, u32)) {
    let loaded = set.image(i).unwrap();
    let img = loaded.view();
    let rgb = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.pixels.to_vec())
        .unwrap();
    let rgb = image::imageops::resize(&rgb, size.0, size.1, image::imageops::FilterType::Triangle);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if grey {
        image::DynamicImage::ImageRgb8(rgb)
            .to_luma8()
            .save(path)
            .unwrap();
    } else {
        rgb.save(path).unwrap();
    }
}

/// Class folders of grey PNGs in mixed sizes: 20 per class of the 10 CIFAR-10 classes.
fn grey_mixed_folder(root: &Path, per_class: usize) -> Vec<String> {
    let (set, _) = cifar_records(1_000, 0);
    let names = set.class_names().to_vec();
    let mut written = vec![0usize; names.len()];
    let sizes = [(32, 32), (48, 40), (40, 64), (24, 24), (256, 256)];
    for i in 0..set.len() {
        let label = set.label(i).unwrap() as usize;
        if written[label] == per_class {
            continue;
        }
        let size = sizes[(i % 7).min(4) * usize::from(i % 7 < 5)];
        let path = root.join(&names[label]).join(format!("{i:04}.png"));
        write_png(&set, i, &path, true, size);
        written[label] += 1;
    }
    names
}

fn config_with(overrides: &[String]) -> TrainConfig {
    TrainConfig::load(None, overrides).unwrap()
}

#[test]
fn grey_mixed_size_class_folders_train_and_record_their_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    grey_mixed_folder(&images, 20);
    let config = config_with(&[
        "data.dataset=image_folder".into(),
        format!("data.path=\"{}\"", images.display()),
        "data.image_size=32".into(),
        "data.channels=1".into(),
        "data.test_fraction=0.25".into(),
        "data.cache=false".into(),
        "train.epochs=2".into(),
        "train.batch_size=25".into(),
        "eval.k=20".into(),
    ]);
    let data = data_source::open(&config.data, dir.path()).unwrap();
    assert_eq!(data.train.len(), 150, "75% of 20 per class, 10 classes");
    let eval = data.eval.as_ref().unwrap();
    assert_eq!(eval.queries.len(), 50);
    assert_eq!(data.view.channels, 1);

    // The normalisation: mean and std of the luma over the training images (all 150 < sample),
    // computed here independently from the decoded pixels.
    let (mut sum, mut sq, mut count) = (0f64, 0f64, 0f64);
    for i in 0..data.train.len() {
        let loaded = data.train.image(i).unwrap();
        let img = loaded.view();
        for px in img.pixels.chunks_exact(3) {
            let y =
                (0.299 * f64::from(px[0]) + 0.587 * f64::from(px[1]) + 0.114 * f64::from(px[2]))
                    / 255.0;
            sum += y;
            sq += y * y;
            count += 1.0;
        }
    }
    let mean = sum / count;
    let std = (sq / count - mean * mean).sqrt();
    let n = &data.view.normalize;
    assert!(
        (f64::from(n.mean[0]) - mean).abs() < 2e-3,
        "{} vs {mean}",
        n.mean[0]
    );
    assert!(
        (f64::from(n.std[0]) - std).abs() < 2e-3,
        "{} vs {std}",
        n.std[0]
    );

    let run = dir.path().join("run");
    let _turn = crate::backend_turn();
    let summary = train::<FastTrain>(
        &config,
        &data,
        &RunOptions {
            run_dir: run.clone(),
            resume: false,
        },
        &Default::default(),
        &mut NoProgress,
    )
    .unwrap();
    assert!(summary.final_loss.is_finite());
    assert!(summary.knn_bank.is_some() && summary.knn_recomputed.is_some());
    let recorded: TrainConfig =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    assert_eq!(recorded.data.mean, Some(vec![n.mean[0]]));
    assert_eq!(recorded.data.std, Some(vec![n.std[0]]));
}

#[test]
fn an_unlabelled_folder_trains_and_evaluation_needs_eval_path() {
    let dir = tempfile::tempdir().unwrap();
    let labelled = dir.path().join("labelled");
    grey_mixed_folder(&labelled, 6);
    // The same images with no class folders: a flat folder.
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for class in std::fs::read_dir(&labelled).unwrap() {
        let class = class.unwrap().path();
        for file in std::fs::read_dir(&class).unwrap() {
            let file = file.unwrap().path();
            let name = format!(
                "{}-{}",
                class.file_name().unwrap().to_string_lossy(),
                file.file_name().unwrap().to_string_lossy()
            );
            std::fs::copy(&file, flat.join(name)).unwrap();
        }
    }
    let base = vec![
        "data.dataset=image_folder".to_string(),
        format!("data.path=\"{}\"", flat.display()),
        "data.image_size=24".into(),
        "data.cache=false".into(),
    ];
    let data = data_source::open(&config_with(&base).data, dir.path()).unwrap();
    assert_eq!(data.train.len(), 60);
    assert!(data.train.labels().is_none());
    assert!(data.eval.is_none());
    assert!(
        data.notes.iter().any(|n| n.contains("data.eval_path")),
        "{:?}",
        data.notes
    );

    let mut with_eval = base.clone();
    with_eval.push(format!("data.eval_path=\"{}\"", labelled.display()));
    with_eval.push("data.test_fraction=0.5".into());
    let config = config_with(&with_eval);
    assert_eq!(config.data.layout, FolderLayoutKind::Auto);
    let data = data_source::open(&config.data, dir.path()).unwrap();
    let eval = data.eval.as_ref().unwrap();
    assert_eq!((eval.reference.len(), eval.queries.len()), (30, 30));
    assert!(
        eval.bank_rows.is_none(),
        "reference features are recomputed"
    );
}

#[test]
fn a_test_class_missing_from_training_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("set");
    let (set, _) = cifar_records(40, 0);
    for i in 0..12 {
        let class = if i < 6 { "cat" } else { "dog" };
        write_png(
            &set,
            i,
            &root.join("train").join(class).join(format!("{i}.png")),
            false,
            (32, 32),
        );
        write_png(
            &set,
            i,
            &root.join("test").join(class).join(format!("{i}.png")),
            false,
            (32, 32),
        );
    }
    write_png(&set, 20, &root.join("test/zebra/z.png"), false, (32, 32));
    let config = config_with(&[
        "data.dataset=image_folder".into(),
        format!("data.path=\"{}\"", root.display()),
        "data.image_size=32".into(),
        "data.cache=false".into(),
    ]);
    let err = data_source::open(&config.data, dir.path())
        .err()
        .expect("a class only in test is refused")
        .to_string();
    assert!(err.contains("zebra"), "{err}");
}

#[test]
fn data_settings_are_typed_and_checked() {
    let err = |o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(None, &o).unwrap_err().to_string()
    };
    let e = err(&["data.dataset=imagenet"]);
    assert!(e.contains("imagenet") && e.contains("image_folder"), "{e}");
    assert!(err(&["data.dataset=image_folder"]).contains("data.path"));
    assert!(err(&["data.channels=2"]).contains("data.channels"));
    assert!(err(&["data.test_fraction=1.5"]).contains("data.test_fraction"));
    assert!(err(&["data.unlabeled=true"]).contains("data.unlabeled"));
    assert!(err(&["data.mean=[0.5]"]).contains("data.mean"));
    assert!(err(&["data.eval_resize=16"]).contains("data.eval_resize"));
    let no_size = TrainConfig::load(
        None,
        &[
            "data.dataset=image_folder".into(),
            "data.path=\"/x\"".into(),
        ],
    )
    .unwrap();
    let e = no_size.data.image_size().unwrap_err().to_string();
    assert!(e.contains("data.image_size"), "{e}");
    let stl = TrainConfig::load(None, &["data.dataset=stl10".into()]).unwrap();
    assert_eq!(stl.data.image_size().unwrap(), 96);
}

/// Writes an STL-10 binary folder: `n` 96×96 images per split file, column-major planes, labels
/// 1..=10 (the published layout).
fn write_stl10(dir: &Path, train: usize, test: usize, unlabeled: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let images = |n: usize, salt: usize| -> Vec<u8> {
        (0..n * 96 * 96 * 3)
            .map(|i| ((i * 7 + salt) % 251) as u8)
            .collect()
    };
    let labels = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 10) as u8 + 1).collect() };
    std::fs::write(dir.join("train_X.bin"), images(train, 1)).unwrap();
    std::fs::write(dir.join("train_y.bin"), labels(train)).unwrap();
    std::fs::write(dir.join("test_X.bin"), images(test, 2)).unwrap();
    std::fs::write(dir.join("test_y.bin"), labels(test)).unwrap();
    std::fs::write(dir.join("unlabeled_X.bin"), images(unlabeled, 3)).unwrap();
}

#[test]
fn stl10_with_unlabeled_trains_on_both_and_evaluates_on_the_labelled_rows() {
    let dir = tempfile::tempdir().unwrap();
    write_stl10(&dir.path().join("stl10_binary"), 20, 10, 30);
    let base = ["data.dataset=stl10".to_string(), "data.cache=false".into()];
    let labelled_only = data_source::open(&config_with(&base).data, dir.path()).unwrap();
    assert_eq!(labelled_only.train.len(), 20);
    assert_eq!(labelled_only.view.image_size, 96);

    let mut with_unlabeled = base.to_vec();
    with_unlabeled.push("data.unlabeled=true".into());
    let data = data_source::open(&config_with(&with_unlabeled).data, dir.path()).unwrap();
    assert_eq!(data.train.len(), 50, "train + unlabeled");
    assert_eq!(data.train.label(19), Some(9));
    assert_eq!(
        data.train.label(20),
        None,
        "the unlabeled part has no labels"
    );
    // Image 20 of the concatenation is image 0 of unlabeled_X.bin: pixel (0,0) red is byte 0 of
    // its first (column-major) plane, (0·7 + 3) % 251.
    assert_eq!(data.train.image(20).unwrap().view().at(0, 0, 0), 3);
    let eval = data.eval.as_ref().unwrap();
    assert_eq!(eval.reference.len(), 20);
    assert_eq!(
        eval.bank_rows.as_deref(),
        Some(&(0..20).collect::<Vec<_>>()[..])
    );
    assert_eq!(eval.queries.len(), 10);
}

#[test]
fn mode_auto_streams_past_the_memory_budget_and_skipped_files_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    grey_mixed_folder(&images, 4);
    // A truncated PNG among them.
    let good = std::fs::read(
        images
            .join("cat")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    std::fs::write(images.join("cat/cut.png"), &good[..good.len() - 20]).unwrap();
    let base = vec![
        "data.dataset=image_folder".to_string(),
        format!("data.path=\"{}\"", images.display()),
        "data.image_size=32".into(),
        "data.cache=false".into(),
        "data.test_fraction=0.5".into(),
    ];
    let err = data_source::open(&config_with(&base).data, dir.path())
        .err()
        .expect("a truncated file stops the default run")
        .to_string();
    assert!(err.contains("cut.png"), "{err}");

    let mut skip = base.clone();
    skip.push("data.on_bad_image=skip".into());
    skip.push("data.memory_budget_gib=1e-6".into());
    let data = data_source::open(&config_with(&skip).data, dir.path()).unwrap();
    assert_eq!(data.train.skipped().len(), 1);
    assert!(data.train.skipped()[0].path.ends_with("cut.png"));
    // The held-out share comes from the same scan: one file, counted once in summary.json.
    assert_eq!(data.skipped_files(), 1);
    assert!(
        data.notes.iter().any(|n| n.contains("streaming")),
        "{:?}",
        data.notes
    );
    assert_eq!(data.train.len(), 20);
    // The streamed set serves the same pixels as the in-memory one.
    let mut memory = skip.clone();
    memory.push("data.mode=memory".into());
    let in_memory = data_source::open(&config_with(&memory).data, dir.path()).unwrap();
    for i in 0..data.train.len() {
        let (a, b) = (
            data.train.image(i).unwrap(),
            in_memory.train.image(i).unwrap(),
        );
        assert_eq!(a.view().pixels, b.view().pixels, "image {i}");
    }
}

#[test]
fn a_dataset_wrapped_in_one_more_folder_is_refused_with_the_fix() {
    // `tar czf set.tar.gz set` (or copying the folder into another) puts train/ and test/ under
    // one top-level folder: detected as class folders, it would train on a single class.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("outer");
    let (set, _) = cifar_records(20, 0);
    for i in 0..8 {
        let class = if i < 4 { "cat" } else { "dog" };
        for split in ["train", "test"] {
            let path = root
                .join("set")
                .join(split)
                .join(class)
                .join(format!("{i}.png"));
            write_png(&set, i, &path, false, (32, 32));
        }
    }
    let open = |path: &Path| {
        let config = config_with(&[
            "data.dataset=image_folder".into(),
            format!("data.path=\"{}\"", path.display()),
            "data.image_size=32".into(),
            "data.cache=false".into(),
        ]);
        data_source::open(&config.data, dir.path())
    };
    let err = open(&root)
        .err()
        .expect("one top-level folder is refused")
        .to_string();
    assert!(
        err.contains("single class folder `set`") && err.contains("data.path"),
        "{err}"
    );
    // Pointing at the inner folder works: two classes, train/ and test/.
    let data = open(&root.join("set")).unwrap();
    assert_eq!(data.train.class_names(), ["cat", "dog"]);
    assert_eq!(data.eval.as_ref().unwrap().queries.len(), 8);
}

/// A CIFAR-10 `data.path` that does not exist is an error naming it, as a missing `--data` is:
/// it was created and a download started into it.
#[test]
fn a_missing_official_data_path_is_refused_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("mistyped");
    let config = config_with(&[format!("data.path=\"{}\"", missing.display())]);
    let err = data_source::open(&config.data, dir.path())
        .err()
        .expect("a missing data.path is refused")
        .to_string();
    assert!(
        err.contains("data.path") && err.contains("no such file"),
        "{err}"
    );
    assert!(!missing.exists(), "the mistyped folder was created");
    // A relative one is looked for from the working folder, then under the data folder.
    let config = config_with(&["data.path=mistyped".to_string()]);
    let err = data_source::open(&config.data, dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("from the working folder"), "{err}");
}

/// One stray image beside class folders made the detected layout "unlabelled": every label was
/// dropped with a note. It is now class folders, and the stray file is refused by name;
/// `data.layout = "unlabeled"` still takes everything as unlabelled images.
#[test]
fn a_file_beside_class_folders_is_refused_by_name_not_taken_as_unlabelled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("classes");
    let (set, _) = cifar_records(20, 0);
    for i in 0..12 {
        let class = ["cat", "dog", "frog"][i % 3];
        write_png(
            &set,
            i,
            &root.join(class).join(format!("{i}.png")),
            false,
            (32, 32),
        );
    }
    write_png(&set, 12, &root.join("loose.png"), false, (32, 32));
    let open = |extra: &[&str]| {
        let mut overrides = vec![
            "data.dataset=image_folder".to_string(),
            format!("data.path=\"{}\"", root.display()),
            "data.image_size=32".into(),
            "data.cache=false".into(),
            "data.test_fraction=0.25".into(),
        ];
        overrides.extend(extra.iter().map(|s| s.to_string()));
        data_source::open(&config_with(&overrides).data, dir.path())
    };
    let err = open(&[])
        .err()
        .expect("the stray file is refused")
        .to_string();
    assert!(
        err.contains("loose.png") && err.contains("beside the class folders"),
        "{err}"
    );
    let skipped = open(&["data.on_bad_image=skip"]).unwrap();
    assert_eq!(skipped.train.class_names(), ["cat", "dog", "frog"]);
    assert_eq!(skipped.skipped_files(), 1);
    let unlabelled = open(&["data.layout=unlabeled"]).unwrap();
    assert_eq!(unlabelled.train.len(), 13);
    assert!(unlabelled.train.label(0).is_none());
}

/// A `data.test_fraction` too small to hold out one image of any class is refused naming it (it
/// said "no decodable images found" of a folder whose images were fine).
#[test]
fn a_test_fraction_that_holds_out_nothing_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    grey_mixed_folder(&images, 4);
    let open = |fraction: &str| {
        let config = config_with(&[
            "data.dataset=image_folder".into(),
            format!("data.path=\"{}\"", images.display()),
            "data.image_size=32".into(),
            "data.cache=false".into(),
            format!("data.test_fraction={fraction}"),
        ]);
        data_source::open(&config.data, dir.path())
    };
    let err = open("0.1").err().expect("nothing held out").to_string();
    assert!(
        err.contains("data.test_fraction") && err.contains("0.1:"),
        "{err}"
    );
    // A quarter of 4 is one image per class.
    assert_eq!(open("0.25").unwrap().eval.unwrap().queries.len(), 10);
}
