//! The ablation runner: statistics against hand-computed values, and runs that are skipped when
//! finished, resumed when interrupted, and refused when the recipe changed.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bank_train::ablation::{AblationPlan, AblationReport, Measure, Outcome, Spread, Variant};
use bank_train::metrics::{EpochMetrics, KnnAccuracyRecord, MergeRecord, Summary};
use bank_train::protocols::{ProbeAccuracy, ProtocolReport};
use bank_train::{NoProgress, TrainData};

use crate::{Train, cifar_records, halved};

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn knn(top1: f64) -> Option<KnnAccuracyRecord> {
    Some(KnnAccuracyRecord { top1, top5: 0.9 })
}

/// Writes a finished run folder with the given kNN per epoch (fractions) and recomputed kNN.
fn fake_run(dir: &Path, knn_per_epoch: &[f64], recomputed: f64, purity: Option<f64>) {
    fs::create_dir_all(dir).unwrap();
    let mut lines = String::new();
    for (i, &k) in knn_per_epoch.iter().enumerate() {
        let m = EpochMetrics {
            epoch: i + 1,
            step: 10 * (i + 1),
            loss: 5.0,
            lr: 0.03,
            views_per_s: 100.0,
            images_per_s: 100.0,
            train_seconds: 30.0,
            knn_bank: knn(k),
            knn_recomputed: None,
            merge: purity
                .filter(|_| i + 1 == knn_per_epoch.len())
                .map(|p| MergeRecord {
                    round: 0,
                    candidates: 40,
                    pairs_merged: 4,
                    groups: 96,
                    largest_group: 2,
                    purity: Some(p),
                }),
        };
        lines.push_str(&serde_json::to_string(&m).unwrap());
        lines.push('\n');
    }
    fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    let summary = Summary {
        name: "x".into(),
        backend: "test".into(),
        epochs: knn_per_epoch.len(),
        train_images: 100,
        test_images: 100,
        final_loss: 5.0,
        knn_bank: knn(*knn_per_epoch.last().unwrap()),
        knn_recomputed: knn(recomputed),
        views_per_s: 100.0,
        images_per_s: 100.0,
        skipped_images: 0,
    };
    fs::write(
        dir.join("summary.json"),
        serde_json::to_string(&summary).unwrap(),
    )
    .unwrap();
}

/// Vanilla and the full method, two seeds each, on the defaults, under `root/toy-ablation/`.
fn toy_plan(root: &Path) -> AblationPlan {
    let name = strings(&["name=\"toy\""]);
    AblationPlan::new(None, &name, vec![Variant::Vanilla, Variant::Full], 2, root).unwrap()
}

/// Two variants × two seeds written by hand: means, sample standard deviations, the gain, its
/// standard error and the separation are the values computed by hand.
#[test]
fn report_statistics_match_hand_computed_values() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = toy_plan(tmp.path());
    let runs = plan.runs().unwrap();
    assert_eq!(runs.len(), 4);
    assert_eq!(runs[0].dir, tmp.path().join("toy-ablation/vanilla-seed0"));
    assert_eq!(runs[3].dir, tmp.path().join("toy-ablation/full-seed1"));
    // vanilla: finals 0.30, 0.34; full: 0.36, 0.40. Six epochs so that "last 5" drops one.
    fake_run(
        &runs[0].dir,
        &[0.0, 0.28, 0.29, 0.30, 0.31, 0.30],
        0.50,
        None,
    );
    fake_run(
        &runs[1].dir,
        &[0.0, 0.30, 0.31, 0.32, 0.33, 0.34],
        0.52,
        None,
    );
    fake_run(
        &runs[2].dir,
        &[0.0, 0.30, 0.32, 0.34, 0.35, 0.36],
        0.55,
        Some(0.5),
    );
    fake_run(
        &runs[3].dir,
        &[0.0, 0.33, 0.35, 0.37, 0.39, 0.40],
        0.57,
        Some(0.7),
    );

    let report = AblationReport::collect("toy", &runs).unwrap();
    assert!(report.missing.is_empty());
    let vanilla = report.get(Variant::Vanilla).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let s = vanilla.knn_bank.unwrap();
    // mean 32, sample sd sqrt(((30-32)^2 + (34-32)^2) / 1) = sqrt(8).
    assert!(close(s.mean, 32.0) && close(s.sd, 8f64.sqrt()), "{s:?}");
    assert!(close(s.min, 30.0) && close(s.max, 34.0));
    // Last five epochs: seed 0 mean(28..30 series) = 29.6, seed 1 = 32.0.
    let l5 = vanilla.knn_bank_last5.unwrap();
    assert!(close(l5.mean, (29.6 + 32.0) / 2.0), "{l5:?}");
    let r = vanilla.knn_recomputed.unwrap();
    assert!(close(r.mean, 51.0));
    // 6 epochs × 30 s = 3 minutes per run.
    assert!(close(vanilla.train_minutes.unwrap().mean, 3.0));

    let gain = report.gain(Variant::Vanilla, Variant::Full).unwrap();
    assert!(close(gain.points, 6.0), "{gain:?}");
    // sd of both is sqrt(8): se = sqrt(8/2 + 8/2) = sqrt(8).
    assert!(close(gain.standard_error.unwrap(), 8f64.sqrt()));
    assert_eq!(gain.separated, Some(true), "36 > 34");
    assert!(report.gain(Variant::Vanilla, Variant::Views).is_none());

    let curve = vanilla.curve();
    assert_eq!(curve.len(), 6);
    assert!(close(curve[3].1.mean, 31.0) && curve[3].0 == 4);

    let md = report.markdown();
    assert!(
        md.contains("| vanilla | 1 | 2 | 32.00 ± 2.83 [30.00–34.00]"),
        "{md}"
    );
    // K is each variant's own: the one-view defaults give the full method DEFAULT_VIEWS (2).
    assert!(
        md.contains("| full | 2 | 2 | 38.00 ± 2.83 [36.00–40.00]"),
        "{md}"
    );
    assert!(
        md.contains("| full method | full − vanilla | +6.00 | 2.83 | yes |"),
        "{md}"
    );
    // The merge round at epoch 6: purity 50 and 70 → 60 ± 14.14.
    assert!(
        md.contains("| 6 | 4.0 ± 0.0 | 96.0 ± 0.0 | 2.0 ± 0.0 | 60.00 ± 14.14"),
        "{md}"
    );

    // One seed of each: no spread, so neither a standard error nor a separation (it read
    // 0.00 and "yes").
    let one = AblationReport::collect("toy", &[runs[0].clone(), runs[2].clone()]).unwrap();
    let gain = one.gain(Variant::Vanilla, Variant::Full).unwrap();
    assert!(close(gain.points, 6.0), "{gain:?}");
    assert_eq!((gain.standard_error, gain.separated), (None, None));
    let md_one = one.markdown();
    assert!(
        md_one.contains("| full method | full − vanilla | +6.00 | – (one seed) | – |"),
        "{md_one}"
    );

    let written = bank_train::ablation::write(&report, plan.root()).unwrap();
    assert_eq!(fs::read_to_string(&written[0]).unwrap(), md);
    let png = image::open(&written[1]).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (900, 520));
    // The full method's red line is drawn.
    assert!(png.pixels().any(|p| p.0 == [214, 39, 40]));
}

/// Writes a protocol report with a linear probe (fractions) at `file`.
fn probe_report(file: &Path, embedding: f64, pooled: Option<f64>) {
    let acc = |top1| ProbeAccuracy { top1, top5: 0.9 };
    let report = ProtocolReport {
        linear_embedding: Some(acc(embedding)),
        linear_pooled: pooled.map(acc),
        ..Default::default()
    };
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(file, serde_json::to_string(&report).unwrap()).unwrap();
}

/// The linear-probe columns and share read each run's final network: `protocols.json` (the
/// training's own probe) first, else the final checkpoint's `eval.json` with the run's own
/// settings; a probe of an earlier checkpoint or with other settings is not the run's. Means,
/// deviations, the gain and its standard error against hand-computed values.
#[test]
fn linear_probe_columns_read_the_final_networks_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = toy_plan(tmp.path());
    let runs = plan.runs().unwrap();
    let epochs = runs[0].config.train.epochs;
    let eval_json =
        |i: usize, checkpoint: &str| runs[i].dir.join("eval").join(checkpoint).join("eval.json");
    let last = format!("epoch-{epochs:04}");
    let earlier = format!("epoch-{:04}", epochs - 1);
    for (i, run) in runs.iter().enumerate() {
        fake_run(&run.dir, &[0.3, 0.3 + 0.01 * i as f64], 0.5, None);
    }
    // vanilla 0: the training's probe (40 / 45) wins over a later eval of its checkpoint.
    probe_report(&runs[0].dir.join("protocols.json"), 0.40, Some(0.45));
    probe_report(&eval_json(0, &last), 0.99, Some(0.99));
    // vanilla 1: its final checkpoint's probe (42 / 47); an earlier checkpoint's is ignored.
    probe_report(&eval_json(1, &last), 0.42, Some(0.47));
    probe_report(&eval_json(1, &earlier), 0.99, Some(0.99));
    // full 0: a protocols.json without a probe (retrieval only) falls through to eval.json.
    fs::write(runs[2].dir.join("protocols.json"), "{}").unwrap();
    probe_report(&eval_json(2, &last), 0.46, None);
    // full 1: 50 / 52; the same checkpoint evaluated with other settings is not the run's.
    probe_report(&eval_json(3, &last), 0.50, Some(0.52));
    probe_report(
        &runs[3]
            .dir
            .join("eval")
            .join(&last)
            .join("eval.k=20/eval.json"),
        0.0,
        None,
    );

    let report = AblationReport::collect("toy", &runs).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let vanilla = report.get(Variant::Vanilla).unwrap();
    let (l, p) = (vanilla.linear.unwrap(), vanilla.linear_pooled.unwrap());
    assert!(close(l.mean, 41.0) && close(l.sd, 2f64.sqrt()), "{l:?}");
    assert!(close(p.mean, 46.0) && close(p.sd, 2f64.sqrt()), "{p:?}");
    let full = report.get(Variant::Full).unwrap();
    let (l, p) = (full.linear.unwrap(), full.linear_pooled.unwrap());
    assert!(close(l.mean, 48.0) && close(l.sd, 8f64.sqrt()), "{l:?}");
    assert_eq!(p.n, 1, "one full run measured the pooled probe");
    assert!(close(p.mean, 52.0));

    let gain = report
        .gain_in(Measure::LinearEmbedding, Variant::Vanilla, Variant::Full)
        .unwrap();
    // se = sqrt(2/2 + 8/2) = sqrt(5); 46 > 42.
    assert!(close(gain.points, 7.0), "{gain:?}");
    assert!(close(gain.standard_error.unwrap(), 5f64.sqrt()));
    assert_eq!(gain.separated, Some(true));
    let md = report.markdown();
    assert!(
        md.contains("| 41.00 ± 1.41 [40.00–42.00] | 46.00 ± 1.41 [45.00–47.00] |"),
        "{md}"
    );
    assert!(
        md.contains("| 48.00 ± 2.83 [46.00–50.00] | 52.00 |"),
        "{md}"
    );
    let linear = md.split("## Each improvement's share (linear probe").nth(1);
    assert!(
        linear.is_some_and(|t| t.contains("| full method | full − vanilla | +7.00 | 2.24 | yes |")),
        "{md}"
    );
}

#[test]
fn spread_of_one_value_has_no_deviation() {
    let s = Spread::of(&[7.0]).unwrap();
    assert_eq!((s.n, s.mean, s.sd, s.min, s.max), (1, 7.0, 0.0, 7.0, 7.0));
    assert!(Spread::of(&[]).is_none());
}

fn tiny_plan(root: &Path, extra: &[&str]) -> AblationPlan {
    let mut o = strings(&[
        "name=\"tiny\"",
        "train.epochs=2",
        "train.batch_size=16",
        "train.threads=1",
        "merge.schedule.start_epoch=0",
        "merge.schedule.min_similarity=0.0",
        "data.image_size=16",
        "eval.k=10",
        "eval.recompute_at_end=false",
    ]);
    o.extend(strings(extra));
    AblationPlan::new(None, &o, vec![Variant::Vanilla, Variant::Full], 1, root).unwrap()
}

/// Real (tiny) runs: trained once, skipped when run again, resumed after an interruption with
/// the same metrics, and refused once the recipe changed.
#[test]
fn runs_are_skipped_resumed_and_checked() {
    let _turn = crate::backend_turn();
    let tmp = tempfile::tempdir().unwrap();
    let plan = tiny_plan(tmp.path(), &[]);
    let (train_set, test_set) = cifar_records(48, 32);
    let (train_set, test_set) = (halved(&train_set), halved(&test_set));
    let data =
        TrainData::from_sets(plan.recipe(), Arc::new(train_set), Arc::new(test_set)).unwrap();
    let device = Default::default();
    let runs = plan.runs().unwrap();
    let execute = |i: usize| {
        runs[i]
            .execute::<Train>(&data, &device, &mut NoProgress)
            .unwrap()
    };
    assert_eq!(execute(0), Outcome::Trained);
    assert_eq!(execute(1), Outcome::Trained);
    let full = &runs[1];
    assert_eq!(full.config.train.views, 2);
    assert!(full.config.merge.enabled);
    let before = crate::metrics(&full.dir);
    let stamp = fs::metadata(full.dir.join("summary.json"))
        .unwrap()
        .modified()
        .unwrap();

    assert_eq!(execute(1), Outcome::Skipped);
    let after = fs::metadata(full.dir.join("summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(stamp, after, "a finished run is not trained again");

    // Interrupted after its last checkpoint, before the summary: resumed, same metrics.
    fs::remove_file(full.dir.join("summary.json")).unwrap();
    assert_eq!(execute(1), Outcome::Resumed);
    assert_eq!(crate::metrics(&full.dir), before);

    let report = AblationReport::collect("tiny", &runs).unwrap();
    assert_eq!(report.variants.len(), 2);
    assert!(report.markdown().contains("## Merge rounds (full)"));

    // The recipe changed: the finished runs are not mixed into the new ablation.
    let changed = tiny_plan(tmp.path(), &["optim.lr=0.1"]);
    let e = changed.runs().unwrap()[0].finished(&data).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("vanilla-seed0") && text.contains("another configuration"),
        "{text}"
    );
    // It names what changed, with both values.
    assert!(text.contains("`optim.lr` was 0.03, now 0.1"), "{text}");
}
