//! Configuration files and overrides.

use bank_train::TrainConfig;
use bank_train::config::LrSchedule;

fn configs() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn shipped_configs_load_and_overrides_apply() {
    let small = TrainConfig::load(Some(&configs().join("cifar10_small_cpu.toml")), &[]).unwrap();
    assert_eq!(small.train.epochs, 8);
    assert_eq!(small.data.train_per_class, 500);
    let big = TrainConfig::load(Some(&configs().join("cifar10_resnet18.toml")), &[]).unwrap();
    assert_eq!(big.train.epochs, 200);
    assert_eq!(big.optim.milestones, [120, 160]);
    assert_eq!(big.optim.schedule, LrSchedule::Step);
    let long =
        TrainConfig::load(Some(&configs().join("cifar10_small_cpu_long.toml")), &[]).unwrap();
    assert_eq!((long.train.epochs, long.train.views), (30, 3));
    assert!(
        long.merge.enabled && long.merge.schedule.is_round(14) && !long.merge.schedule.is_round(13)
    );
    long.validate().unwrap();

    let o = TrainConfig::load(
        Some(&configs().join("cifar10_small_cpu.toml")),
        &[
            "optim.lr=0.1".into(),
            "optim.schedule=step".into(),
            "train.views=2".into(),
            "method.consistency=0.5".into(),
        ],
    )
    .unwrap();
    assert_eq!(o.optim.lr, 0.1);
    assert_eq!(o.optim.schedule, LrSchedule::Step);
    assert_eq!(o.train.views, 2);
    // The resolved config round-trips through TOML.
    let text = o.to_toml();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), text).unwrap();
    assert_eq!(
        TrainConfig::load(Some(&dir.path().join("c.toml")), &[]).unwrap(),
        o
    );
}

#[test]
fn invalid_values_and_unknown_fields_are_named() {
    let err = |overrides: &[&str]| {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(None, &o).unwrap_err().to_string()
    };
    assert!(err(&["optim.lr=-1"]).contains("optim.lr"));
    assert!(err(&["method.temperature=0"]).contains("method.temperature"));
    assert!(err(&["train.batch_size=0"]).contains("train.batch_size"));
    // Named as itself, not as the warm-up it would be compared with.
    let e = err(&["train.epochs=0"]);
    assert!(e.contains("train.epochs") && !e.contains("warmup"), "{e}");
    // An empty path is no folder (it read the data folder itself, or named a folder `/`).
    for field in ["data.path", "data.eval_path"] {
        let e = err(&[&format!("{field}=")]);
        assert!(e.contains(field) && e.contains("empty"), "{e}");
    }
    assert!(err(&["method.consistency=0.5"]).contains("train.views >= 2"));
    let e = err(&["method.loss=\"nce\"", "method.bank_block_rows=4096"]);
    assert!(
        e.contains("method.bank_block_rows") && e.contains("4096"),
        "{e}"
    );
    let e = err(&["method.bank_block_rows=-1"]);
    assert!(e.contains("bank_block_rows"), "{e}");
    let e = err(&["optim.learning_rate=0.1"]);
    assert!(e.contains("learning_rate"), "{e}");
    let e = err(&["model.arch=resnet99"]);
    assert!(e.contains("resnet99"), "{e}");
    assert!(err(&["nonsense"]).contains("section.field=value"));
    // Views the small CNN's pooling would empty (a panic in burn's mean before), and a thread
    // count that overflowed a stack.
    let e = err(&["data.image_size=3"]);
    assert!(e.contains("data.image_size") && e.contains("4×4"), "{e}");
    assert!(TrainConfig::load(None, &["data.image_size=4".into()]).is_ok());
    let resnet = ["data.image_size=3".into(), "model.arch=resnet18".into()];
    assert!(TrainConfig::load(None, &resnet).is_ok());
    let e = err(&["train.threads=100000"]);
    assert!(e.contains("train.threads") && e.contains("1024"), "{e}");
    // A setting of the schedule not chosen would be ignored without a word; a warm-up as long as
    // the run would be all of it.
    let e = err(&["optim.schedule=step", "optim.warmup_epochs=2"]);
    assert!(
        e.contains("optim.warmup_epochs") && e.contains("cosine"),
        "{e}"
    );
    let e = err(&["optim.schedule=cosine", "optim.milestones=[5, 2]"]);
    assert!(
        e.contains("optim.milestones") && e.contains("[5, 2]"),
        "{e}"
    );
    let e = err(&["train.epochs=5", "optim.warmup_epochs=5"]);
    assert!(
        e.contains("optim.warmup_epochs") && e.contains("(5)"),
        "{e}"
    );
    let fine = ["train.epochs=5".into(), "optim.warmup_epochs=4".into()];
    assert!(TrainConfig::load(None, &fine).is_ok());
    let step = ["optim.schedule=step".into(), "optim.milestones=[2]".into()];
    assert!(TrainConfig::load(None, &step).is_ok());
    // The merge schedule is checked with merging off too (a case `cargo xtask fuzz` found: NaN
    // was accepted, and only a later resume with merging on would have refused it).
    for bad in ["nan", "-0.5", "inf"] {
        let e = err(&[
            "merge.enabled=false",
            &format!("merge.schedule.fraction_start={bad}"),
        ]);
        assert!(
            e.contains("merge.schedule") && e.contains("fraction_start"),
            "{e}"
        );
    }
}

/// An unknown field or a value of the wrong type is blamed on where it came from: the file when
/// it is in the file, else the first override that brought it in; in one line, without Rust's type names.
#[test]
fn a_wrong_field_names_the_file_or_the_override_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let (good, typo) = (dir.path().join("good.toml"), dir.path().join("typo.toml"));
    std::fs::write(&good, "[train]\nepochs = 3\n").unwrap();
    std::fs::write(&typo, "[train]\nepochs = 3\n[eval]\nevery = 2\n").unwrap();
    let err = |file: &std::path::Path, overrides: &[&str]| {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(Some(file), &o).unwrap_err().to_string()
    };
    let ok = ["train.batch_size=64"];
    let e = err(&good, &[ok[0], "eval.every=100", "eval.k=5"]);
    assert!(
        e.contains("`override eval.every=100`") && e.contains("every") && !e.contains("good.toml"),
        "{e}"
    );
    let e = err(&good, &[ok[0], "train.epochs=\"ten\""]);
    assert!(e.contains("override train.epochs=\"ten\""), "{e}");
    let e = err(&typo, &ok);
    assert!(e.contains("typo.toml") && e.contains("every"), "{e}");
    assert!(!e.contains("override"), "{e}");
    let e = TrainConfig::load(None, &["eval.every=1".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("override eval.every=1"), "{e}");
    let e = TrainConfig::load(None, &["train.epochs=-1".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expected a whole number >= 0") && e.contains("in `train.epochs`"),
        "{e}"
    );
    assert!(!e.contains("usize") && e.lines().count() == 1, "{e:?}");
}

/// One field set to two values by different options is refused, naming both; within one option
/// the later value wins, and the same value twice (`0` and `0.0` too) is no conflict.
#[test]
fn a_field_set_two_ways_by_different_options_is_refused() {
    use bank_train::config::check_override_conflicts as check;
    let e = check(&[
        ("--set", "train.views=4"),
        ("--set", "eval.k=5"),
        ("--devices", "train.views=1"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("train.views")
            && e.contains("`train.views=4` (--set)")
            && e.contains("`train.views=1` (--devices)"),
        "{e}"
    );
    let e = check(&[("--set", "name=\"a\""), ("--name", "name=\"b\"")]).unwrap_err();
    assert!(e.to_string().contains("--name"), "{e}");
    // The later `--set` wins over the earlier one, and agrees with the other option.
    check(&[
        ("--set", "train.views=4"),
        ("--set", "train.views=1"),
        ("--name", "train.views=1"),
    ])
    .unwrap();
    check(&[
        ("--set", "method.consistency=0"),
        ("--name", "method.consistency=0.0"),
        ("--set", "train.devices=[\"cpu\", \"cpu\"]"),
        ("--devices", "train.devices=[\"cpu\",\"cpu\"]"),
    ])
    .unwrap();
    assert!(check(&[("--set", "no equals sign")]).is_err());
}

/// An override meant as a number, an array or a quoted string that is not valid TOML says why
/// (a number beyond 64 bits was taken as a string and reported as a wrong type); bare words,
/// paths and names that start with a digit stay strings.
#[test]
fn an_invalid_override_value_says_why() {
    let load = |o: &str| TrainConfig::load(None, &[o.to_string()]);
    let e = load("train.epochs=99999999999999999999")
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range for an integer"), "{e}");
    let e = load("optim.milestones=[1,2").unwrap_err().to_string();
    assert!(
        e.contains("override optim.milestones=[1,2") && e.contains("array"),
        "{e}"
    );
    let e = load("optim.lr=1e400").unwrap_err().to_string();
    assert!(e.contains("1e400") && e.contains("overflow"), "{e}");
    assert_eq!(load("name=2024run").unwrap().name, "2024run");
    assert_eq!(
        load("optim.schedule=step").unwrap().optim.schedule,
        LrSchedule::Step
    );
    let c = load("data.path=/tmp/x-1").unwrap();
    assert_eq!(c.data.path.unwrap(), std::path::PathBuf::from("/tmp/x-1"));
}

/// `docs/config.md` against the code: every field of the configuration has a row, every row is
/// a field, every default is the code's, and every example of a field unset by default loads.
#[test]
fn the_configuration_reference_lists_every_field_with_its_default() {
    let fields = bank_train::resume::fields;
    let parse = |text: &str| -> toml::Value {
        let table: toml::Table = format!("v = {text}").parse().unwrap();
        table["v"].clone()
    };
    let same = |a: &toml::Value, b: &toml::Value| match (a, b) {
        // f32 fields come back widened: 0.9 as 0.8999999761581421.
        (toml::Value::Float(x), toml::Value::Float(y)) => (x - y).abs() <= 1e-6 * x.abs().max(1.0),
        _ => a == b,
    };
    let page = std::fs::read_to_string(configs().join("../docs/config.md")).unwrap();
    let row = reference_rows(&page);
    let defaults = fields(&TrainConfig::default());
    let mut examples = Vec::new();
    for (field, default) in &row {
        if let Some(example) = default.strip_prefix("unset, e.g. ") {
            assert!(!defaults.contains_key(field), "{field} is set by default");
            examples.push(format!("{field}={}", example.trim_matches('`')));
        } else {
            let want = defaults
                .get(field)
                .unwrap_or_else(|| panic!("{field}: no such field with a default"));
            let documented = parse(default.trim_matches('`'));
            assert!(
                same(want, &documented),
                "{field}: code {want}, page {default}"
            );
        }
    }
    // Every field, once: a missing row, a row for no field and a repeated row all differ.
    let all = TrainConfig::load(None, &examples).unwrap();
    let mut documented: Vec<String> = row.iter().map(|(f, _)| f.clone()).collect();
    documented.sort();
    let real: Vec<String> = fields(&all).into_keys().collect();
    let missing: Vec<&String> = real.iter().filter(|f| !documented.contains(f)).collect();
    let extra: Vec<&String> = documented.iter().filter(|f| !real.contains(f)).collect();
    assert_eq!(documented, real, "no row: {missing:?}; no field: {extra:?}");
}

/// The `| \`field\` | default | meaning |` rows of the page, in order.
fn reference_rows(page: &str) -> Vec<(String, String)> {
    page.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let field = cells.first()?.strip_prefix("| `")?.strip_suffix('`')?;
            Some((field.to_string(), cells.get(1)?.to_string()))
        })
        .collect()
}
