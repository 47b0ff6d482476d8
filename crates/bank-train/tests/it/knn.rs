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
