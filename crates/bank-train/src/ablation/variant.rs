//! The variants of the ablation: vanilla NPID and the paper's three improvements added one at a
//! time (Bulat et al., ICASSP 2021, Sec. 2: (a) K views per sample, (b) the consistency loss,
//! (c) merging of near-duplicate samples).

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result, TrainConfig};

/// Views per sample of the K-view variants when the recipe itself trains with one view.
pub const DEFAULT_VIEWS: usize = 2;

/// Consistency weight λ of the consistency variants when the recipe's own is 0 (the paper's
/// value, METHOD.md).
pub const DEFAULT_CONSISTENCY: f64 = 0.5;

/// One arm of the ablation. Each adds one improvement to the one before it, so the differences
/// of consecutive variants are the improvements' own shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// NPID (Wu et al., CVPR 2018): one view per sample, no consistency, no merging.
    Vanilla,
    /// (a) K views per sample, the bank row updated once from their mean.
    K2,
    /// (a) + (b) the consistency KL between the views' bank distributions.
    K2Consistency,
    /// (a) + (b) + (c) merging of near-duplicate samples: the full method.
    Full,
}

impl Variant {
    /// Every variant, in the order each adds one improvement.
    pub const ALL: [Variant; 4] = [
        Variant::Vanilla,
        Variant::K2,
        Variant::K2Consistency,
        Variant::Full,
    ];

    /// The name used on the command line, in run folder names and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vanilla => "vanilla",
            Self::K2 => "k2",
            Self::K2Consistency => "k2-consistency",
            Self::Full => "full",
        }
    }

    /// The config overrides (`section.field=value`) that turn `recipe` into this variant.
    ///
    /// The recipe supplies the improved method's values: its `train.views` when above 1 (else
    /// [`DEFAULT_VIEWS`]), its `method.consistency` when above 0 (else
    /// [`DEFAULT_CONSISTENCY`]) and its `[merge.schedule]`. Everything else is the recipe's.
    pub fn overrides(self, recipe: &TrainConfig) -> Vec<String> {
        let views = if recipe.train.views > 1 {
            recipe.train.views
        } else {
            DEFAULT_VIEWS
        };
        let consistency = if recipe.method.consistency > 0.0 {
            recipe.method.consistency
        } else {
            DEFAULT_CONSISTENCY
        };
        let (views, consistency, merge) = match self {
            Self::Vanilla => (1, 0.0, false),
            Self::K2 => (views, 0.0, false),
            Self::K2Consistency => (views, consistency, false),
            Self::Full => (views, consistency, true),
        };
        vec![
            format!("train.views={views}"),
            format!("method.consistency={consistency:?}"),
            format!("merge.enabled={merge}"),
        ]
    }

    /// Parses a comma-separated list (`vanilla,k2,full`), keeping the order of [`Self::ALL`] and
    /// dropping repeats.
    ///
    /// # Errors
    /// [`Error::Config`] naming `--variants` and the unknown name, or an empty list.
    pub fn parse_list(list: &str) -> Result<Vec<Variant>> {
        let mut chosen = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Variant>>>()?;
        chosen.sort();
        chosen.dedup();
        if chosen.is_empty() {
            return Err(Error::Config {
                field: "--variants".into(),
                reason: "no variant given".into(),
            });
        }
        Ok(chosen)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| Error::Config {
                field: "variant".into(),
                reason: format!(
                    "unknown variant `{s}` (known: {})",
                    Self::ALL.map(Variant::name).join(", ")
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(extra: &[&str]) -> TrainConfig {
        let o: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(None, &o).unwrap()
    }

    /// The overrides applied to the recipe give the variant's three switches, and nothing else
    /// of the recipe changes.
    #[test]
    fn overrides_switch_one_improvement_at_a_time() {
        let base = recipe(&["train.epochs=3", "merge.schedule.start_epoch=2"]);
        let expect = [
            (1, 0.0, false),
            (2, 0.0, false),
            (2, 0.5, false),
            (2, 0.5, true),
        ];
        for (v, (views, lambda, merge)) in Variant::ALL.into_iter().zip(expect) {
            let mut all = vec!["train.epochs=3".to_string()];
            all.push("merge.schedule.start_epoch=2".into());
            all.extend(v.overrides(&base));
            let c = TrainConfig::load(None, &all).unwrap();
            assert_eq!(
                (c.train.views, c.method.consistency, c.merge.enabled),
                (views, lambda, merge),
                "{v}"
            );
            assert_eq!(c.train.epochs, 3);
            assert_eq!(c.merge.schedule.start_epoch, 2);
        }
    }

    /// A recipe that already names K and λ supplies them to the improved variants.
    #[test]
    fn recipe_values_are_kept() {
        let base = recipe(&["train.views=4", "method.consistency=0.25"]);
        let c = TrainConfig::load(None, &Variant::K2Consistency.overrides(&base)).unwrap();
        assert_eq!((c.train.views, c.method.consistency), (4, 0.25));
        let c = TrainConfig::load(None, &Variant::Vanilla.overrides(&base)).unwrap();
        assert_eq!((c.train.views, c.method.consistency), (1, 0.0));
    }

    #[test]
    fn lists_parse_in_order_and_unknown_names_are_named() {
        let v = Variant::parse_list("full, vanilla,full").unwrap();
        assert_eq!(v, [Variant::Vanilla, Variant::Full]);
        let e = Variant::parse_list("vanilla,k3").unwrap_err().to_string();
        assert!(e.contains("variant") && e.contains("`k3`"), "{e}");
        assert!(Variant::parse_list(" , ").is_err());
    }
}
