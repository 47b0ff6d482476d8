//! Union-find properties, planted near-duplicates, the schedule and persistence of groups.

use crate::common::*;
use bank_core::{Attachment, MemoryBank, MemoryBankConfig};
use bank_mining::{
    GroupUpdate, KnnConfig, MergeSchedule, Merger, Neighbours, UnionFind, nearest_neighbours,
};

type B = burn::backend::Flex;

#[test]
fn union_find_is_transitive_idempotent_and_order_independent() {
    let pairs = [(0u32, 5u32), (5, 9), (2, 3), (9, 1), (7, 8), (3, 2)];
    let mut a = UnionFind::new(10);
    for &(x, y) in &pairs {
        a.union(x, y);
    }
    let ids = a.group_ids();
    assert_eq!(ids, vec![0, 0, 2, 2, 4, 0, 6, 7, 7, 0]);
    // Transitive: 0~5, 5~9, 9~1 ⇒ 0~1.
    assert_eq!(a.find(0), a.find(1));
    // Idempotent: repeating every union changes nothing and reports no new merge.
    for &(x, y) in &pairs {
        assert!(!a.union(x, y));
    }
    assert_eq!(a.group_ids(), ids);
    // Order-independent: every permutation-like reordering gives the same ids.
    for rotate in 0..pairs.len() {
        let mut b = UnionFind::new(10);
        let mut order = pairs.to_vec();
        order.rotate_left(rotate);
        for &(x, y) in order.iter().rev() {
            b.union(y, x);
        }
        assert_eq!(b.group_ids(), ids);
    }
    assert_eq!(UnionFind::from_group_ids(&ids).unwrap().group_ids(), ids);
    assert!(UnionFind::from_group_ids(&[1, 1]).is_none());
}

/// A bank of random directions with `pairs` planted near-duplicate pairs (rows 2p and 2p+1).
fn planted_bank(n: usize, d: usize, pairs: usize) -> MemoryBank<B> {
    let device = Default::default();
    let mut v = values(
        MemoryBankConfig::new(n, d)
            .with_seed(11)
            .init::<B>(&device)
            .unwrap()
            .rows(),
    );
    let noise = host_matrix(pairs, d, 12);
    for p in 0..pairs {
        for c in 0..d {
            v[(2 * p + 1) * d + c] = v[2 * p * d + c] + 0.01 * noise[p * d + c];
        }
    }
    MemoryBankConfig::new(n, d)
        .init_from_features(tensor::<B>(v, n, d, &device))
        .unwrap()
}

#[test]
fn planted_pairs_are_found_and_nothing_else_merges() {
    let (n, d, pairs) = (400, 32, 20);
    let bank = planted_bank(n, d, pairs);
    let nn = nearest_neighbours(&bank, &KnnConfig::new(1)).unwrap();
    let strict = MergeSchedule {
        fraction_start: 1.0,
        fraction_cap: 1.0,
        min_similarity: 0.99,
        ..Default::default()
    };
    let mut merger = Merger::new(n, strict).unwrap();
    let labels: Vec<u32> = (0..n as u32).map(|i| i / 2).collect();
    let report = merger.round(&nn, Some(&labels)).unwrap();
    assert_eq!(report.pairs_merged, pairs);
    assert_eq!(report.groups, n - pairs);
    assert_eq!(report.largest_group, 2);
    assert_eq!(report.purity, Some(1.0));
    let ids = merger.group_ids();
    for (i, &id) in ids.iter().enumerate() {
        let want = if i < 2 * pairs { i - i % 2 } else { i };
        assert_eq!(id as usize, want, "row {i}");
    }
    assert_eq!(merger.members(7), vec![6, 7]);
    // A second round finds no new candidates: groups only grow, never re-merge.
    let again = merger.round(&nn, None).unwrap();
    assert_eq!(again.pairs_merged, 0);
}

#[test]
fn the_schedule_merges_gradually() {
    // Every row has a planted twin, so the candidates are exactly the 20 twin pairs.
    let (n, d, pairs) = (40, 32, 20);
    let bank = planted_bank(n, d, pairs);
    let nn = nearest_neighbours(&bank, &KnnConfig::new(1)).unwrap();
    let schedule = MergeSchedule {
        start_epoch: 2,
        every_epochs: 3,
        fraction_start: 0.1,
        fraction_step: 0.2,
        fraction_cap: 0.5,
        min_similarity: -1.0,
        max_group_size: Some(2),
        groups: GroupUpdate::Accumulate,
    };
    assert_eq!(
        (0..12)
            .filter(|&e| schedule.is_round(e))
            .collect::<Vec<_>>(),
        vec![2, 5, 8, 11]
    );
    let mut merger = Merger::new(n, schedule).unwrap();
    // 20 candidates: round 0 merges ceil(0.1·20) = 2, then ceil(0.3·18) = 6, ceil(0.5·12) = 6,
    // ceil(0.5·6) = 3.
    let merged: Vec<usize> = (0..4)
        .map(|_| merger.round(&nn, None).unwrap().pairs_merged)
        .collect();
    assert_eq!(merged, vec![2, 6, 6, 3]);
    assert_eq!(merger.rounds(), 4);
}

/// Top-1 lists written by hand: `top1[i]` is row i's nearest neighbour, `sims[i]` its similarity.
fn top1_lists(top1: &[u32], sims: &[f32]) -> Neighbours {
    Neighbours {
        k: 1,
        indices: top1.to_vec(),
        similarities: sims.to_vec(),
    }
}

#[test]
fn recomputed_groups_are_the_pairs_of_the_last_round() {
    // Round 0: 0–1 and 2–3 are mutual nearest neighbours. Round 1: the bank has moved; 0–1 are
    // mutual again, 2 and 3 point at 0 and 2 without being chosen back, 4–5 are mutual.
    let round0 = top1_lists(&[1, 0, 3, 2, 0, 4], &[0.9, 0.9, 0.8, 0.8, 0.5, 0.5]);
    let round1 = top1_lists(&[1, 0, 0, 2, 5, 4], &[0.7, 0.7, 0.6, 0.6, 0.95, 0.95]);
    let every = |groups| MergeSchedule {
        fraction_start: 1.0,
        fraction_cap: 1.0,
        min_similarity: -1.0,
        max_group_size: None,
        groups,
        ..Default::default()
    };
    let labels = [0, 0, 1, 1, 2, 3];

    let mut fresh = Merger::new(6, every(GroupUpdate::Recompute)).unwrap();
    let r0 = fresh.round(&round0, Some(&labels)).unwrap();
    assert_eq!((r0.candidates, r0.pairs_merged), (2, 2));
    assert_eq!(fresh.group_ids(), vec![0, 0, 2, 2, 4, 5]);
    let r1 = fresh.round(&round1, Some(&labels)).unwrap();
    // The groups are reset before the candidates are found: 0–1, already one group after
    // round 0, is a candidate again and linked again; 2–3 is gone. Purity counts this round's
    // pairs only: 0–1 (one class) and 4–5 (classes 2, 3).
    assert_eq!((r1.candidates, r1.pairs_merged), (2, 2));
    assert_eq!(fresh.group_ids(), vec![0, 0, 2, 3, 4, 4]);
    assert_eq!((r1.groups, r1.largest_group), (4, 2));
    assert_eq!(r1.purity, Some(0.5));

    // The same rounds accumulated: 0–1 is skipped as already joined, 2–3 stays.
    let mut grown = Merger::new(6, every(GroupUpdate::Accumulate)).unwrap();
    grown.round(&round0, None).unwrap();
    let g1 = grown.round(&round1, None).unwrap();
    assert_eq!((g1.candidates, g1.pairs_merged), (1, 1));
    assert_eq!(grown.group_ids(), vec![0, 0, 2, 2, 4, 4]);
    assert_eq!((g1.groups, g1.largest_group), (3, 2));
}

#[test]
fn max_group_size_stops_chains() {
    // Three identical rows: 0-1 mutual, then 2 would join the {0, 1} group.
    let device = Default::default();
    let v = vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
    let bank = MemoryBankConfig::new(4, 2)
        .init_from_features(tensor::<B>(v, 4, 2, &device))
        .unwrap();
    let nn = nearest_neighbours(&bank, &KnnConfig::new(1)).unwrap();
    let all = MergeSchedule {
        fraction_start: 1.0,
        fraction_cap: 1.0,
        max_group_size: Some(2),
        ..Default::default()
    };
    let mut merger = Merger::new(4, all).unwrap();
    merger.round(&nn, None).unwrap();
    assert_eq!(merger.group_ids(), vec![0, 0, 2, 3]);
}

#[test]
fn groups_round_trip_with_the_bank_and_bad_state_is_rejected() {
    let (n, d) = (40, 8);
    let bank = planted_bank(n, d, 5);
    let nn = nearest_neighbours(&bank, &KnnConfig::new(1)).unwrap();
    let schedule = MergeSchedule {
        fraction_start: 1.0,
        fraction_cap: 1.0,
        min_similarity: 0.99,
        ..Default::default()
    };
    let mut merger = Merger::new(n, schedule.clone()).unwrap();
    merger.round(&nn, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    bank.save_with(&path, &merger.attachments()).unwrap();
    let (_, attachments) = MemoryBank::<B>::load_with(&path, &Default::default()).unwrap();
    let mut restored = Merger::from_attachments(n, schedule.clone(), &attachments).unwrap();
    assert_eq!(restored.group_ids(), merger.group_ids());
    assert_eq!(restored.rounds(), 1);

    let err = Merger::from_attachments(n + 1, schedule.clone(), &attachments).unwrap_err();
    assert!(
        err.to_string()
            .contains("40 group ids for a bank of 41 rows"),
        "{err}"
    );
    let mut bad = attachments.clone();
    bad.iter_mut().find(|a| a.name == "groups").unwrap().values[3] = 39;
    assert!(
        Merger::from_attachments(n, schedule.clone(), &bad)
            .unwrap_err()
            .to_string()
            .contains("smallest member")
    );
    let only_groups: Vec<Attachment> = attachments
        .into_iter()
        .filter(|a| a.name == "groups")
        .collect();
    assert!(
        Merger::from_attachments(n, schedule, &only_groups)
            .unwrap_err()
            .to_string()
            .contains("merge_rounds")
    );
}

#[test]
fn averaging_gives_each_group_one_row() {
    let device = Default::default();
    let v = vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
    let mut bank = MemoryBankConfig::new(3, 2)
        .init_from_features(tensor::<B>(v, 3, 2, &device))
        .unwrap();
    let mut uf_state = Merger::from_attachments(
        3,
        MergeSchedule::default(),
        &[
            Attachment {
                name: "groups".into(),
                values: vec![0, 0, 2],
            },
            Attachment {
                name: "merge_rounds".into(),
                values: vec![1],
            },
        ],
    )
    .unwrap();
    uf_state.average_bank_rows(&mut bank).unwrap();
    let h = std::f64::consts::FRAC_1_SQRT_2;
    assert!(max_diff(&values(bank.rows()), &[h, h, h, h, -1.0, 0.0]) < 1e-6);
}

#[test]
fn invalid_schedules_name_the_field() {
    let cases = [
        (
            MergeSchedule {
                every_epochs: 0,
                ..Default::default()
            },
            "every_epochs",
        ),
        (
            MergeSchedule {
                fraction_cap: 1.5,
                ..Default::default()
            },
            "fraction_cap",
        ),
        (
            MergeSchedule {
                min_similarity: 2.0,
                ..Default::default()
            },
            "min_similarity",
        ),
        (
            MergeSchedule {
                max_group_size: Some(1),
                ..Default::default()
            },
            "max_group_size",
        ),
    ];
    for (s, field) in cases {
        assert!(s.validate().unwrap_err().to_string().contains(field));
    }
}

#[test]
fn labels_of_the_wrong_length_are_an_error_not_a_panic() {
    let bank = planted_bank(40, 8, 5);
    let nn = nearest_neighbours(&bank, &KnnConfig::new(1)).unwrap();
    let mut merger = Merger::new(40, MergeSchedule::default()).unwrap();
    let err = merger.round(&nn, Some(&[0u32; 39])).unwrap_err();
    assert!(
        err.to_string()
            .contains("39 labels given for a bank of 40 rows"),
        "{err}"
    );
    assert_eq!(merger.rounds(), 0, "a rejected round does not count");
}
