//! The evaluation protocols against independent truths: hand-computed Recall@K and NMI, NMI
//! against a direct contingency-table implementation, k-means on separated blobs, the linear
//! probe on separable and on shuffled labels, and the export read back by other readers.

use bank_mining::Neighbours;
use bank_train::protocols::clustering::{kmeans, nmi};
use bank_train::protocols::export::{self, Array, Export, Named};
use bank_train::protocols::features::to_tensor;
use bank_train::protocols::linear_probe::{Labelled, LinearProbeConfig, linear_probe};
use bank_train::protocols::retrieval::{default_ks, recall_at_k, recall_of_features};
use burn::backend::NdArray;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::Train;

#[test]
fn recall_at_k_of_hand_made_neighbour_lists() {
    // labels 0 0 1 1 2; first same-class rank: q0 2nd, q1 1st, q2 none, q3 1st, q4 none.
    let neighbours = Neighbours {
        k: 3,
        indices: vec![2, 1, 3, 0, 2, 3, 4, 0, 1, 2, 0, 1, 0, 1, 2],
        similarities: vec![0.0; 15],
    };
    let r = recall_at_k(&neighbours, &[0, 0, 1, 1, 2], &[1, 2, 3]);
    let got: Vec<f64> = r.iter().map(|x| x.recall).collect();
    assert_eq!(got, [2.0 / 5.0, 3.0 / 5.0, 3.0 / 5.0]);
}

#[test]
fn recall_at_k_of_points_on_a_circle_excludes_the_query() {
    // Unit vectors at 0°, 10°, 55°, 90°, 100° with classes 0 0 1 1 0. Nearest by angle:
    // 0°→10° (hit), 10°→0° (hit), 55°→90° (hit; 35° < 45°), 90°→100° (miss) then 55° (hit at 2),
    // 100°→90° (miss), 55° (miss), 10° (hit at 3). R@1 = 3/5, R@2 = 4/5, R@4 = 5/5.
    let angles = [0f32, 10.0, 55.0, 90.0, 100.0];
    let points: Vec<f32> = angles
        .iter()
        .flat_map(|a| [a.to_radians().cos(), a.to_radians().sin()])
        .collect();
    let features = to_tensor::<NdArray>(&points, 5, 2, &Default::default());
    let r = recall_of_features(features, &[0, 0, 1, 1, 0], &[1, 2, 4]).unwrap();
    let got: Vec<f64> = r.iter().map(|x| x.recall).collect();
    assert_eq!(got, [0.6, 0.8, 1.0]);
    let err = recall_of_features(
        to_tensor::<NdArray>(&points, 5, 2, &Default::default()),
        &[0, 0, 1, 1, 0],
        &[5],
    )
    .unwrap_err();
    assert!(err.to_string().contains("Recall@5"), "{err}");
    assert_eq!(default_ks(50), [1, 2, 4, 8]);
    assert_eq!(default_ks(5_000), [1, 2, 4, 8, 10, 100]);
}

#[test]
fn nmi_of_hand_made_labelings() {
    assert_eq!(
        nmi(&[0, 0, 1, 1], &[5, 5, 7, 7]),
        1.0,
        "same partition, other names"
    );
    assert!(
        nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]).abs() < 1e-12,
        "independent"
    );
    // a = 0 0 0 1, b = 0 0 1 1:
    // I = ½ ln(4/3) + ¼ ln(2/3) + ¼ ln 2 = 0.215762; H(a) = 0.562335; H(b) = ln 2 = 0.693147;
    // NMI = I / ((H(a) + H(b)) / 2) = 0.343712.
    let i = 0.5 * (4f64 / 3.0).ln() + 0.25 * (2f64 / 3.0).ln() + 0.25 * 2f64.ln();
    let ha = -(0.75 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
    let expected = i / ((ha + 2f64.ln()) / 2.0);
    assert!((expected - 0.343712).abs() < 1e-6);
    assert!((nmi(&[0, 0, 0, 1], &[0, 0, 1, 1]) - expected).abs() < 1e-12);
}

/// NMI straight from the contingency table: I = Σ n_ij/n · ln(n·n_ij / (a_i·b_j)), entropies
/// from the margins, arithmetic normalisation.
fn nmi_from_table(a: &[u32], b: &[u32], ka: usize, kb: usize) -> f64 {
    let n = a.len() as f64;
    let mut table = vec![vec![0f64; kb]; ka];
    for (&x, &y) in a.iter().zip(b) {
        table[x as usize][y as usize] += 1.0;
    }
    let rows: Vec<f64> = table.iter().map(|r| r.iter().sum()).collect();
    let cols: Vec<f64> = (0..kb).map(|j| table.iter().map(|r| r[j]).sum()).collect();
    let mut mutual = 0.0;
    for i in 0..ka {
        for j in 0..kb {
            let nij = table[i][j];
            if nij > 0.0 {
                mutual += nij / n * (n * nij / (rows[i] * cols[j])).ln();
            }
        }
    }
    let h = |m: &[f64]| -> f64 {
        m.iter()
            .filter(|&&c| c > 0.0)
            .map(|&c| -(c / n) * (c / n).ln())
            .sum()
    };
    mutual / ((h(&rows) + h(&cols)) / 2.0)
}

#[test]
fn nmi_agrees_with_the_contingency_table() {
    let mut rng = StdRng::seed_from_u64(7);
    for case in 0..50 {
        let n = rng.random_range(20..400);
        let (ka, kb) = (rng.random_range(2..8), rng.random_range(2..12));
        let a: Vec<u32> = (0..n).map(|_| rng.random_range(0..ka) as u32).collect();
        // Correlated with a half of the time, so the NMI spans (0, 1).
        let b: Vec<u32> = a
            .iter()
            .map(|&x| {
                if rng.random_bool(0.5) {
                    x % kb as u32
                } else {
                    rng.random_range(0..kb) as u32
                }
            })
            .collect();
        let (mine, table) = (nmi(&a, &b), nmi_from_table(&a, &b, ka, kb));
        assert!(
            (mine - table).abs() < 1e-9,
            "case {case}: {mine} vs {table}"
        );
    }
}

/// `per` points around each of `centres` (Gaussian, std `noise`), labels the centre's index.
fn blobs(centres: &[Vec<f32>], per: usize, noise: f32, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0f32, noise).unwrap();
    let (mut points, mut labels) = (Vec::new(), Vec::new());
    for i in 0..per * centres.len() {
        let c = i % centres.len();
        points.extend(centres[c].iter().map(|&m| m + rng.sample(normal)));
        labels.push(c as u32);
    }
    (points, labels)
}

#[test]
fn kmeans_recovers_separated_blobs() {
    let centres = vec![
        vec![5.0, 0.0, 0.0],
        vec![0.0, 5.0, 0.0],
        vec![0.0, 0.0, 5.0],
        vec![5.0, 5.0, 5.0],
    ];
    let (points, labels) = blobs(&centres, 60, 0.3, 1);
    let x = to_tensor::<NdArray>(&points, labels.len(), 3, &Default::default());
    let clusters = kmeans(x, 4, 3, 0).unwrap();
    assert_eq!(nmi(&clusters.assignments, &labels), 1.0);
    // The inertia is the within-blob scatter: about N · D · σ² = 240 · 3 · 0.09.
    assert!(
        (clusters.inertia / (240.0 * 3.0 * 0.09) - 1.0).abs() < 0.2,
        "{}",
        clusters.inertia
    );
    let x = to_tensor::<NdArray>(&points, labels.len(), 3, &Default::default());
    assert!(
        kmeans(x, 4, 0, 0)
            .unwrap_err()
            .to_string()
            .contains("eval.kmeans_restarts")
    );
}

fn probe(
    train: (&[f32], &[u32]),
    test: (&[f32], &[u32]),
    dim: usize,
    classes: usize,
) -> bank_train::protocols::ProbeAccuracy {
    let _turn = crate::backend_turn();
    linear_probe::<Train>(
        Labelled {
            features: train.0,
            dim,
            labels: train.1,
        },
        Labelled {
            features: test.0,
            dim,
            labels: test.1,
        },
        classes,
        &LinearProbeConfig::default(),
        &Default::default(),
    )
    .unwrap()
}

#[test]
fn linear_probe_separates_separable_features_and_is_at_chance_on_shuffled_labels() {
    let classes = 10;
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|c| (0..16).map(|j| if j == c { 3.0 } else { 0.0 }).collect())
        .collect();
    let (train_x, train_y) = blobs(&centres, 40, 0.5, 2);
    let (test_x, test_y) = blobs(&centres, 100, 0.5, 3);
    let fit = probe((&train_x, &train_y), (&test_x, &test_y), 16, classes);
    assert!(fit.top1 >= 0.99, "{fit:?}");
    assert_eq!(fit.top5, 1.0);
    let mut shuffled = train_y.clone();
    shuffled.shuffle(&mut StdRng::seed_from_u64(4));
    let chance = probe((&train_x, &shuffled), (&test_x, &test_y), 16, classes);
    // 1,000 test images: chance is 10% ± 1% (one std); top-5 about 50%.
    assert!((0.05..0.16).contains(&chance.top1), "{chance:?}");
    assert!((0.4..0.6).contains(&chance.top5), "{chance:?}");
}

#[test]
fn linear_probe_rejects_out_of_range_labels() {
    let x = [0f32; 4];
    let err = linear_probe::<Train>(
        Labelled {
            features: &x,
            dim: 2,
            labels: &[0, 3],
        },
        Labelled {
            features: &x,
            dim: 2,
            labels: &[0, 1],
        },
        2,
        &LinearProbeConfig::default(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("label 3"), "{err}");
}

/// An export with awkward values: signed zero, subnormals, extremes, and non-ASCII strings.
fn awkward_export() -> Export {
    let embedding: Vec<f32> = vec![
        0.0,
        -0.0,
        1e-40,
        -1e-45,
        f32::MAX,
        f32::MIN_POSITIVE,
        0.1,
        -0.3333333,
        1.0,
        2.5e-8,
        7.0,
        -7.0,
    ];
    let pooled: Vec<f32> = (0..3 * 5).map(|i| (i as f32).sqrt() - 1.7).collect();
    Export {
        arrays: vec![
            Named {
                name: "embedding".into(),
                shape: vec![3, 4],
                values: Array::F32(embedding),
            },
            Named {
                name: "pooled_features".into(),
                shape: vec![3, 5],
                values: Array::F32(pooled),
            },
            Named {
                name: "labels".into(),
                shape: vec![3],
                values: Array::I64(vec![2, -1, 0]),
            },
        ],
        class_names: vec!["cat".into(), "dög".into(), "éléphant de mer".into()],
        item_sources: vec![
            "data/train/cat/1.jpg".into(),
            "archive.tar!x/ü.png".into(),
            "data_batch_1.bin#7".into(),
        ],
    }
}

#[test]
fn export_reads_back_bit_for_bit_with_safetensors_and_npy_readers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("feats");
    let expected = awkward_export();
    let files = export::write(&out, &expected).unwrap();
    assert_eq!(files.len(), 6, "{files:?}");
    // safetensors, read by the safetensors crate: raw little-endian bytes.
    let bytes = std::fs::read(dir.path().join("feats.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for named in &expected.arrays {
        let view = st.tensor(&named.name).unwrap();
        assert_eq!(view.shape(), named.shape.as_slice(), "{}", named.name);
        match &named.values {
            Array::F32(v) => {
                assert_eq!(view.dtype(), safetensors::Dtype::F32);
                let got: Vec<u32> = view
                    .data()
                    .chunks(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                assert_eq!(got, v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            }
            Array::I64(v) => {
                assert_eq!(view.dtype(), safetensors::Dtype::I64);
                let got: Vec<i64> = view
                    .data()
                    .chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                assert_eq!(&got, v);
            }
        }
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let names: Vec<String> = serde_json::from_str(&meta["class_names"]).unwrap();
    assert_eq!(names, expected.class_names);
    // npy, read by npyz.
    let npy = |name: &str| {
        npyz::NpyFile::new(
            std::fs::File::open(dir.path().join(format!("feats.{name}.npy"))).unwrap(),
        )
        .unwrap()
    };
    let emb = npy("embedding");
    assert_eq!(emb.shape(), [3, 4]);
    let got: Vec<u32> = emb
        .into_vec::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    let Array::F32(want) = &expected.arrays[0].values else {
        unreachable!()
    };
    assert_eq!(got, want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    assert_eq!(npy("labels").into_vec::<i64>().unwrap(), [2, -1, 0]);
    assert_eq!(
        npy("class_names").into_vec::<String>().unwrap(),
        expected.class_names
    );
    assert_eq!(
        npy("item_sources").into_vec::<String>().unwrap(),
        expected.item_sources
    );
}

/// An export never overwrites: a second one at the same `--out` (here with other values, as a
/// bank export over a test export would be) is refused naming the file, and the first stays
/// byte for byte. An export that fails half-way (one of its `.npy` names too long for the file
/// system) leaves none of its files behind.
#[test]
fn an_export_never_overwrites_and_a_failed_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("feats");
    let first = export::write(&out, &awkward_export()).unwrap();
    let bytes = |files: &[std::path::PathBuf]| -> Vec<Vec<u8>> {
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    };
    let before = bytes(&first);
    let mut other = awkward_export();
    other.arrays.truncate(1);
    let e = export::write(&out, &other).unwrap_err().to_string();
    assert!(
        e.contains("feats.safetensors") && e.contains("never overwrites"),
        "{e}"
    );
    assert_eq!(bytes(&first), before, "the first export changed");

    // A dangling link at one of the names counts as taken (it is not the export's to remove).
    let out = dir.path().join("linked");
    let link = export::files(&out, &other).pop().unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
    let e = export::write(&out, &other).unwrap_err().to_string();
    assert!(e.contains("never overwrites"), "{e}");
    assert!(link.symlink_metadata().is_ok(), "the link was removed");

    let out = dir.path().join("half");
    let mut long = awkward_export();
    // 300 bytes: over the 255 a file name may have.
    long.arrays.last_mut().unwrap().name = "x".repeat(300);
    let e = export::write(&out, &long).unwrap_err().to_string();
    assert!(e.contains(&"x".repeat(300)), "{e}");
    let files = export::files(&out, &long);
    assert!(files.len() >= 3);
    let left: Vec<_> = files
        .iter()
        .filter(|f| f.symlink_metadata().is_ok())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The safetensors file (written first, before the failure) existed: the cleanup removed it.
    assert!(!out.with_extension("safetensors").exists());
}

/// The Python interpreter with numpy and safetensors, when this machine has one.
fn python() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME")?;
    let py = std::path::Path::new(&home).join(".cache/membank/pyenv/bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import numpy, safetensors.numpy"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

#[test]
fn export_is_read_by_numpy_and_safetensors_numpy_when_python_is_here() {
    let Some(py) = python() else {
        eprintln!("skipped: no Python with numpy and safetensors");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("feats.safetensors");
    export::write(&out, &awkward_export()).unwrap();
    let script = r#"
import sys, json, numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open
p = sys.argv[1]
t = load_file(p + ".safetensors")
e = np.load(p + ".embedding.npy")
assert e.dtype == np.float32 and e.shape == (3, 4)
assert (e.view(np.uint32) == t["embedding"].view(np.uint32)).all()
assert np.signbit(e[0, 1]) and e[1, 0] == np.float32(np.finfo(np.float32).max)
assert t["pooled_features"].shape == (3, 5)
assert np.load(p + ".labels.npy").tolist() == [2, -1, 0] == t["labels"].tolist()
assert np.load(p + ".class_names.npy").tolist() == ["cat", "dög", "éléphant de mer"]
assert np.load(p + ".item_sources.npy")[1] == "archive.tar!x/ü.png"
with safe_open(p + ".safetensors", "np") as f:
    assert json.loads(f.metadata()["item_sources"])[2] == "data_batch_1.bin#7"
print("ok")
"#;
    let run = std::process::Command::new(py)
        .args(["-c", script, dir.path().join("feats").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

mod in_a_run {
    //! The protocols inside a short run on real CIFAR-10 records: unseen classes, every
    //! protocol at the end, merges.png, and the export of the bank and of the test split.

    use std::sync::Arc;

    use bank_train::data_source::classes;
    use bank_train::protocols::commands::{Split, export_run, load_run};
    use bank_train::{NoProgress, RunOptions, TrainConfig, TrainData, data_source, train};

    use crate::{FastTrain, shared_data};

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn class_selection_through_open_splits_seen_and_unseen_classes() {
        let config = TrainConfig::load(
            None,
            &strings(&[
                "data.train_per_class=20",
                "data.test_limit=400",
                r#"data.train_classes=["0..5"]"#,
                r#"data.test_classes=["dog", "frog", "7", "8..10"]"#,
            ]),
        )
        .unwrap();
        let data = data_source::open(&config.data, &shared_data()).unwrap();
        assert_eq!(data.train.len(), 100);
        assert_eq!(
            data.train.class_names(),
            ["airplane", "automobile", "bird", "cat", "deer"]
        );
        let eval = data.eval.unwrap();
        assert_eq!(
            eval.reference.class_names(),
            ["dog", "frog", "horse", "ship", "truck"]
        );
        assert!(
            eval.bank_rows.is_none(),
            "unseen reference images are not bank rows"
        );
        assert_eq!(eval.reference.len(), 100);
        assert_eq!(eval.queries.class_names(), eval.reference.class_names());
        // 400 test images spread over a class-mixed test set: about half are of these classes.
        let q = eval.queries.labels().unwrap();
        assert!((150..250).contains(&q.len()), "{}", q.len());
        assert!(q.iter().all(|&l| l < 5) && (0..5).all(|c| q.contains(&c)));
        assert!(
            !data.notes.iter().any(|n| n.contains("not unseen")),
            "{:?}",
            data.notes
        );
        // Overlapping lists (an easy slip of a range) are said, naming the shared classes.
        let overlapping = TrainConfig::load(
            None,
            &strings(&[
                "data.train_per_class=20",
                "data.test_limit=400",
                r#"data.train_classes=["0..5"]"#,
                r#"data.test_classes=["3..8"]"#,
            ]),
        )
        .unwrap();
        let data = data_source::open(&overlapping.data, &shared_data()).unwrap();
        assert!(
            data.notes
                .iter()
                .any(|n| n.contains("2 of the 5 test classes") && n.contains("cat, deer")),
            "{:?}",
            data.notes
        );
        let bad = TrainConfig::load(None, &strings(&[r#"data.test_classes=["zebra"]"#])).unwrap();
        let err = data_source::open(&bad.data, &shared_data()).err().unwrap();
        assert!(
            err.to_string().contains("data.test_classes") && err.to_string().contains("zebra"),
            "{err}"
        );
    }

    #[test]
    fn every_protocol_runs_at_the_end_of_a_run_and_the_export_matches_the_checkpoint() {
        let config = TrainConfig::load(
            None,
            &strings(&[
                "train.epochs=2",
                "train.batch_size=25",
                "train.views=2",
                "method.consistency=0.5",
                "merge.enabled=true",
                "merge.schedule.start_epoch=0",
                "merge.schedule.min_similarity=0.0",
                "merge.schedule.fraction_start=0.5",
                "eval.k=20",
                "eval.linear.epochs=5",
                r#"eval.protocols=["all"]"#,
            ]),
        )
        .unwrap();
        let (train_set, test_set) = crate::cifar_records(400, 300);
        let data = TrainData::from_sets(&config, Arc::new(train_set), Arc::new(test_set)).unwrap();
        let mut notes = Vec::new();
        let five = |r: &str| Some(strings(&[r]));
        let (train_part, eval) = classes::select(
            data.train.clone(),
            data.eval.clone(),
            five("0..5").as_deref(),
            five("5..10").as_deref(),
            &mut notes,
        )
        .unwrap();
        let data = TrainData {
            train: train_part,
            eval,
            ..data
        };
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("protocols");
        let options = RunOptions {
            run_dir: dir.clone(),
            resume: false,
        };
        {
            let _turn = crate::backend_turn();
            train::<FastTrain>(
                &config,
                &data,
                &options,
                &Default::default(),
                &mut NoProgress,
            )
            .unwrap();
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("protocols.json")).unwrap())
                .unwrap();
        eprintln!("{report:#}");
        // kNN is in protocols.json too, as the loop measured it (summary.json's numbers).
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        // The reference images (unseen classes) are not bank rows: no kNN against the bank is
        // reported (it was: against recomputed features, under the bank's name); the monitor
        // measures against recomputed features, at the last epoch the end-of-run figure.
        assert!(report["knn_bank"].is_null() && summary["knn_bank"].is_null());
        assert!(report["knn_recomputed"]["top1"].is_number(), "{report}");
        assert_eq!(report["knn_recomputed"], summary["knn_recomputed"]);
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
        assert!(last["knn_bank"].is_null(), "{last}");
        assert_eq!(last["knn_recomputed"], summary["knn_recomputed"]);
        let retrieval = &report["retrieval"];
        assert_eq!(retrieval["classes"], 5);
        let recalls: Vec<f64> = retrieval["recall"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["recall"].as_f64().unwrap())
            .collect();
        assert_eq!(recalls.len(), 4);
        assert!(
            recalls.windows(2).all(|w| w[0] <= w[1]),
            "Recall@K grows with K"
        );
        let nmi = retrieval["nmi"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&nmi));
        for key in ["linear_embedding", "linear_pooled"] {
            let top1 = report[key]["top1"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&top1), "{key}");
        }
        for picture in ["retrieval.png", "merges.png"] {
            let img = image::open(dir.join(picture)).unwrap();
            assert!(img.width() > 64 && img.height() > 64, "{picture}");
        }

        // Export: the bank rows bit for bit, and the test split with pooled features.
        let device = Default::default();
        // Loading builds a model (initial weights drawn, then overwritten).
        let run = {
            let _turn = crate::backend_turn();
            load_run::<FastTrain>(&dir, None, &[], &device).unwrap()
        };
        export_run(&run, &data, Split::Bank, &root.path().join("bank"), &device).unwrap();
        let bytes = std::fs::read(root.path().join("bank.safetensors")).unwrap();
        // The test split over it: refused before its features are computed, the bank's kept.
        let e = export_run(&run, &data, Split::Test, &root.path().join("bank"), &device);
        assert!(e.unwrap_err().to_string().contains("never overwrites"));
        assert_eq!(
            std::fs::read(root.path().join("bank.safetensors")).unwrap(),
            bytes
        );
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        // The checkpoint's bank file read on the device, not the host copy the export wrote from.
        let bank_file = run.checkpoint.join("bank.safetensors");
        let rows: Vec<f32> = bank_core::MemoryBank::<FastTrain>::load(&bank_file, &device)
            .unwrap()
            .rows()
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap();
        let exported: Vec<f32> = st
            .tensor("embedding")
            .unwrap()
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            exported.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            rows.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            st.tensor("merge_groups").unwrap().shape(),
            [data.train.len()]
        );
        export_run(&run, &data, Split::Test, &root.path().join("test"), &device).unwrap();
        let labels =
            npyz::NpyFile::new(std::fs::File::open(root.path().join("test.labels.npy")).unwrap())
                .unwrap()
                .into_vec::<i64>()
                .unwrap();
        let queries = &data.eval.as_ref().unwrap().queries;
        let truth: Vec<i64> = queries
            .labels()
            .unwrap()
            .iter()
            .map(|&l| i64::from(l))
            .collect();
        assert_eq!(labels, truth);
        let pooled = npyz::NpyFile::new(
            std::fs::File::open(root.path().join("test.pooled_features.npy")).unwrap(),
        )
        .unwrap();
        assert_eq!(pooled.shape(), [queries.len() as u64, 128]);
    }
}
