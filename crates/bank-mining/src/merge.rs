//! The merging schedule and its state (see the crate docs for the procedure).

use bank_core::{Attachment, MemoryBank};
use burn::prelude::*;

use crate::error::invalid;
use crate::{Error, Neighbours, Result, UnionFind};

/// Name of the bank-file attachment that holds the group ids.
pub const GROUPS_ATTACHMENT: &str = "groups";
/// Name of the bank-file attachment that holds the number of rounds run.
pub const ROUNDS_ATTACHMENT: &str = "merge_rounds";

/// When and how much to merge.
///
/// Serialised as a TOML/JSON table (`bank-train` embeds it as `[merge.schedule]`); unknown fields
/// are refused and missing ones take the defaults. `max_group_size = 0` stands for unbounded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeSchedule {
    /// First epoch with a merging round (epochs count from 0). Default 1.
    pub start_epoch: usize,
    /// Epochs between rounds. Default 1.
    pub every_epochs: usize,
    /// Fraction of mutual-nearest-neighbour candidates merged in round 0. Default 0.05.
    pub fraction_start: f64,
    /// Added to the fraction each round. Default 0.05.
    pub fraction_step: f64,
    /// Upper bound of the fraction. Default 0.25.
    pub fraction_cap: f64,
    /// Candidates below this similarity are never merged. Default 0.9.
    pub min_similarity: f32,
    /// Largest group allowed (`None`: unbounded, written `0`). Default `Some(8)`.
    #[serde(with = "zero_is_none")]
    pub max_group_size: Option<usize>,
    /// Whether a round adds to the groups of the rounds before it or forms them afresh. Default
    /// [`GroupUpdate::Accumulate`].
    pub groups: GroupUpdate,
}

/// What a merging round does with the groups of the rounds before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupUpdate {
    /// Groups only grow: each round joins mutual-nearest-neighbour pairs of different groups
    /// (up to `max_group_size`), and a join is never undone.
    #[default]
    Accumulate,
    /// Every round starts from singletons: its groups are exactly the pairs it links, so a
    /// wrong pair of one round is dropped by the next unless the bank still makes it mutual
    /// nearest neighbours. As the PyTorch reference of the ablation: since every row has one
    /// nearest neighbour, the groups are pairs, and `max_group_size` never binds.
    Recompute,
}

/// `Option<usize>` as a plain number, `0` standing for `None` (TOML has no null).
mod zero_is_none {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.unwrap_or(0) as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        let v = usize::deserialize(d)?;
        Ok((v > 0).then_some(v))
    }
}

impl Default for MergeSchedule {
    fn default() -> Self {
        Self {
            start_epoch: 1,
            every_epochs: 1,
            fraction_start: 0.05,
            fraction_step: 0.05,
            fraction_cap: 0.25,
            min_similarity: 0.9,
            max_group_size: Some(8),
            groups: GroupUpdate::Accumulate,
        }
    }
}

impl MergeSchedule {
    /// Checks every field, naming the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if self.every_epochs == 0 {
            return Err(invalid("every_epochs", 0, "must be > 0"));
        }
        for (field, v) in [
            ("fraction_start", self.fraction_start),
            ("fraction_step", self.fraction_step),
            ("fraction_cap", self.fraction_cap),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(field, v, "must lie in [0, 1]"));
            }
        }
        if !(-1.0..=1.0).contains(&self.min_similarity) {
            return Err(invalid(
                "min_similarity",
                self.min_similarity,
                "must lie in [-1, 1]",
            ));
        }
        if self.max_group_size.is_some_and(|m| m < 2) {
            return Err(invalid(
                "max_group_size",
                self.max_group_size.unwrap_or(0),
                "must be ≥ 2",
            ));
        }
        Ok(())
    }

    /// Whether a round runs at `epoch`.
    pub fn is_round(&self, epoch: usize) -> bool {
        epoch >= self.start_epoch && (epoch - self.start_epoch).is_multiple_of(self.every_epochs)
    }

    /// The fraction of candidates merged in round `round`.
    pub fn fraction(&self, round: usize) -> f64 {
        (self.fraction_start + round as f64 * self.fraction_step).min(self.fraction_cap)
    }
}

/// What one merging round did.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundReport {
    /// Round number, from 0.
    pub round: usize,
    /// Mutual-nearest-neighbour pairs not yet in one group (with [`GroupUpdate::Recompute`]:
    /// all of them).
    pub candidates: usize,
    /// Pairs merged this round.
    pub pairs_merged: usize,
    /// Number of groups after the round.
    pub groups: usize,
    /// Size of the largest group after the round.
    pub largest_group: usize,
    /// Fraction of this round's merges that joined two images of the same class (labels given).
    pub purity: Option<f64>,
}

/// The merge groups of a bank and the rounds run so far.
#[derive(Debug, Clone)]
pub struct Merger {
    schedule: MergeSchedule,
    groups: UnionFind,
    rounds: usize,
}

impl Merger {
    /// Singleton groups for a bank of `num_rows` rows.
    pub fn new(num_rows: usize, schedule: MergeSchedule) -> Result<Self> {
        schedule.validate()?;
        Ok(Self {
            schedule,
            groups: UnionFind::new(num_rows),
            rounds: 0,
        })
    }

    /// The schedule.
    pub fn schedule(&self) -> &MergeSchedule {
        &self.schedule
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// The group id (smallest member) of every bank row.
    pub fn group_ids(&mut self) -> Vec<u32> {
        self.groups.group_ids()
    }

    /// The members of `row`'s group, ascending.
    pub fn members(&mut self, row: u32) -> Vec<u32> {
        let ids = self.groups.group_ids();
        let g = ids[row as usize];
        (0..ids.len() as u32)
            .filter(|&j| ids[j as usize] == g)
            .collect()
    }

    /// Group ids as a device tensor, for `bank_losses::merged_positive_loss`.
    ///
    /// # Shapes
    /// - output: `[N]`
    pub fn group_tensor<B: Backend>(&mut self, device: &B::Device) -> Tensor<B, 1, Int> {
        let ids: Vec<i64> = self.group_ids().into_iter().map(i64::from).collect();
        let n = ids.len();
        Tensor::from_data(TensorData::new(ids, [n]), device)
    }

    /// One merging round from the bank's top-1 neighbours (`neighbours.k ≥ 1`, one query per row).
    /// `labels` only feed the purity diagnostic. With [`GroupUpdate::Recompute`] the groups of
    /// earlier rounds are dropped first.
    ///
    /// # Errors
    /// [`Error::Groups`] when `neighbours` or `labels` do not have one entry per bank row.
    pub fn round(
        &mut self,
        neighbours: &Neighbours,
        labels: Option<&[u32]>,
    ) -> Result<RoundReport> {
        let n = self.groups.len();
        if neighbours.len() != n || neighbours.k == 0 {
            return Err(Error::Groups(format!(
                "neighbours of {} rows given for a bank of {n} rows",
                neighbours.len()
            )));
        }
        if let Some(l) = labels.filter(|l| l.len() != n) {
            return Err(Error::Groups(format!(
                "{} labels given for a bank of {n} rows",
                l.len()
            )));
        }
        if self.schedule.groups == GroupUpdate::Recompute {
            self.groups = UnionFind::new(n);
        }
        let top1 = |i: usize| neighbours.of(i).0[0];
        let mut candidates: Vec<(f32, u32, u32)> = (0..n as u32)
            .filter_map(|i| {
                let j = top1(i as usize);
                (i < j && top1(j as usize) == i).then(|| (neighbours.of(i as usize).1[0], i, j))
            })
            .filter(|&(_, i, j)| self.groups.find(i) != self.groups.find(j))
            .collect();
        // Most similar first; ties by the lower indices, so rounds are deterministic.
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let take = (self.schedule.fraction(self.rounds) * candidates.len() as f64).ceil() as usize;

        let (mut merged, mut same_class) = (0, 0);
        for &(sim, i, j) in candidates.iter().take(take) {
            if sim < self.schedule.min_similarity {
                break;
            }
            let joined = self.groups.set_size(i) + self.groups.set_size(j);
            if self.schedule.max_group_size.is_some_and(|max| joined > max) {
                continue;
            }
            self.groups.union(i, j);
            merged += 1;
            if let Some(l) = labels {
                same_class += usize::from(l[i as usize] == l[j as usize]);
            }
        }
        let ids = self.groups.group_ids();
        let mut sizes = vec![0usize; n];
        ids.iter().for_each(|&g| sizes[g as usize] += 1);
        let report = RoundReport {
            round: self.rounds,
            candidates: candidates.len(),
            pairs_merged: merged,
            groups: sizes.iter().filter(|&&s| s > 0).count(),
            largest_group: sizes.iter().copied().max().unwrap_or(0),
            purity: labels
                .filter(|_| merged > 0)
                .map(|_| same_class as f64 / merged as f64),
        };
        tracing::info!(?report, "merging round");
        self.rounds += 1;
        Ok(report)
    }

    /// Replaces each bank row by the normalised mean of its group's rows (optional step after a
    /// round, so that merged samples share one target).
    pub fn average_bank_rows<B: Backend>(&mut self, bank: &mut MemoryBank<B>) -> Result<()> {
        let device = bank.device();
        let groups = self.group_tensor::<B>(&device);
        let n = bank.num_rows();
        let rows = bank.rows();
        let sums = Tensor::<B, 2>::zeros([n, bank.dim()], &device).select_assign(
            0,
            groups.clone(),
            rows,
            burn::tensor::IndexingUpdateOp::Add,
        );
        // Each row takes its group's sum (normalising turns the sum into the mean direction).
        bank.set_rows(sums.select(0, groups))?;
        Ok(())
    }

    /// The state to save with the bank (`MemoryBank::save_with`).
    pub fn attachments(&mut self) -> Vec<Attachment> {
        vec![
            Attachment {
                name: GROUPS_ATTACHMENT.into(),
                values: self.group_ids(),
            },
            Attachment {
                name: ROUNDS_ATTACHMENT.into(),
                values: vec![self.rounds as u32],
            },
        ]
    }

    /// Restores the state saved by [`Merger::attachments`] for a bank of `num_rows` rows.
    pub fn from_attachments(
        num_rows: usize,
        schedule: MergeSchedule,
        attachments: &[Attachment],
    ) -> Result<Self> {
        schedule.validate()?;
        let find = |name: &str| attachments.iter().find(|a| a.name == name);
        let groups = find(GROUPS_ATTACHMENT)
            .ok_or_else(|| Error::Groups(format!("no `{GROUPS_ATTACHMENT}` attachment")))?;
        if groups.values.len() != num_rows {
            return Err(Error::Groups(format!(
                "{} group ids for a bank of {num_rows} rows",
                groups.values.len()
            )));
        }
        let uf = UnionFind::from_group_ids(&groups.values).ok_or_else(|| {
            Error::Groups("a group id is not the smallest member of its own group".into())
        })?;
        let rounds = match find(ROUNDS_ATTACHMENT).map(|a| a.values.as_slice()) {
            Some([r]) => *r as usize,
            _ => {
                return Err(Error::Groups(format!(
                    "missing or malformed `{ROUNDS_ATTACHMENT}`"
                )));
            }
        };
        Ok(Self {
            schedule,
            groups: uf,
            rounds,
        })
    }
}
