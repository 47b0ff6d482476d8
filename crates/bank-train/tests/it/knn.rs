//! Weighted kNN voting against a hand-computed example.

use bank_mining::Neighbours;
use bank_train::knn::weighted_vote;

#[test]
fn weighted_votes_follow_exp_s_over_sigma() {
    // Query 0: neighbours of classes 1 (s=0.9), 0 (0.8), 0 (0.75). σ = 0.1:
    // class 1: e^9 = 8103; class 0: e^8 + e^7.5 = 2981 + 1808 = 4789 → predicts 1.
    // Query 1: the same neighbours, σ = 1: class 1: e^0.9 = 2.46; class 0: e^0.8 + e^0.75 = 4.34
    // → predicts 0. Truths: 1 and 0.
    let neighbours = Neighbours {
        k: 3,
        indices: vec![0, 1, 2, 0, 1, 2],
        similarities: vec![0.9, 0.8, 0.75, 0.9, 0.8, 0.75],
    };
    let train_labels = [1, 0, 0];
    let sharp = weighted_vote(&neighbours, &train_labels, &[1, 1], 3, 0.1);
    assert_eq!((sharp.top1, sharp.top5), (1.0, 1.0));
    let flat = weighted_vote(&neighbours, &train_labels, &[1, 1], 3, 1.0);
    assert_eq!(flat.top1, 0.0);
    assert_eq!(
        flat.top5, 1.0,
        "second of three classes is within the top 5"
    );
    // A class nobody voted for is tied last with the other unvoted classes: outside top-1.
    let none = weighted_vote(&neighbours, &train_labels, &[2, 2], 3, 0.1);
    assert_eq!(none.top1, 0.0);
}

/// An f64 reference of the weighted vote with exact arithmetic on the log scale: the class scores
/// as log-sum-exp of s/σ, ranked.
fn reference_top1(sims: &[f32], labels: &[u32], classes: usize, sigma: f64) -> usize {
    let mut logs = vec![Vec::new(); classes];
    for (&s, &l) in sims.iter().zip(labels) {
        logs[l as usize].push(f64::from(s) / sigma);
    }
    let lse = |v: &Vec<f64>| {
        if v.is_empty() {
            return f64::NEG_INFINITY;
        }
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    let scores: Vec<f64> = logs.iter().map(lse).collect();
    (0..classes)
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
        .unwrap()
}

#[test]
fn small_sigma_does_not_overflow_and_ranks_as_the_f64_reference() {
    // exp(0.95 / 0.001) overflows f64: before the fix every weight was infinite and the true class
    // lost every tie (0% accuracy). Queries with 3 neighbours from 3 classes, varied order.
    let cases: [([f32; 3], [u32; 3]); 4] = [
        ([0.95, 0.94, 0.90], [2, 0, 0]),
        ([0.80, 0.79, 0.79], [1, 0, 0]),
        ([0.70, 0.69, 0.10], [0, 1, 1]),
        ([0.99, 0.98, 0.97], [1, 1, 2]),
    ];
    for sigma in [0.001, 0.1] {
        let mut indices = Vec::new();
        let mut similarities = Vec::new();
        let mut train_labels = Vec::new();
        let mut truths = Vec::new();
        for (q, (sims, labels)) in cases.iter().enumerate() {
            for k in 0..3 {
                indices.push((q * 3 + k) as u32);
                similarities.push(sims[k]);
                train_labels.push(labels[k]);
            }
            truths.push(reference_top1(sims, labels, 3, sigma) as u32);
        }
        let neighbours = Neighbours {
            k: 3,
            indices,
            similarities,
        };
        let acc = weighted_vote(&neighbours, &train_labels, &truths, 3, sigma);
        assert_eq!(
            acc.top1, 1.0,
            "σ = {sigma}: every query predicts the reference's class"
        );
    }
    // And the reference differs between the two σ on case 2 (so the test sees σ at all).
    assert_eq!(reference_top1(&[0.80, 0.79, 0.79], &[1, 0, 0], 3, 0.001), 1);
    assert_eq!(reference_top1(&[0.80, 0.79, 0.79], &[1, 0, 0], 3, 0.1), 0);
}
