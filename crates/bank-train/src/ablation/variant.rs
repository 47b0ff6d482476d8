//! The variants of the ablation: vanilla NPID and the paper's three improvements added one at a
//! time (Bulat et al., ICASSP 2021, Sec. 2: (a) K views per sample, (b) the consistency loss,
//! (c) merging of near-duplicate samples).

use std::fmt;

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
    Views,
    /// (a) + (b) the consistency KL between the views' bank distributions.
    ViewsConsistency,
    /// (a) + (b) + (c) merging of near-duplicate samples: the full method.
    Full,
}

impl Variant {
    /// Every variant, in the order each adds one improvement.
    pub const ALL: [Variant; 4] = [
        Variant::Vanilla,
        Variant::Views,
        Variant::ViewsConsistency,
        Variant::Full,
    ];

    /// The name used on the command line, in run folder names and in the report. The K-view
    /// arms are named without their K (`views`, `views-consistency`): they train the recipe's
    /// K, which [`Self::views`] gives and the report shows.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vanilla => "vanilla",
            Self::Views => "views",
            Self::ViewsConsistency => "views-consistency",
            Self::Full => "full",
        }
    }

    /// K, the views per sample of the improved variants of `recipe`: its `train.views` when
    /// above 1, else [`DEFAULT_VIEWS`].
    pub fn views(recipe: &TrainConfig) -> usize {
        if recipe.train.views > 1 {
            recipe.train.views
        } else {
            DEFAULT_VIEWS
        }
    }

    /// The config overrides (`section.field=value`) that turn `recipe` into this variant.
    ///
    /// The recipe supplies the improved method's values: its `train.views` when above 1 (else
    /// [`DEFAULT_VIEWS`]), its `method.consistency` when above 0 (else
    /// [`DEFAULT_CONSISTENCY`]) and its `[merge.schedule]`. Everything else is the recipe's.
    pub fn overrides(self, recipe: &TrainConfig) -> Vec<String> {
        let views = Self::views(recipe);
        let consistency = if recipe.method.consistency > 0.0 {
            recipe.method.consistency
        } else {
            DEFAULT_CONSISTENCY
        };
        let (views, consistency, merge) = match self {
            Self::Vanilla => (1, 0.0, false),
            Self::Views => (views, 0.0, false),
            Self::ViewsConsistency => (views, consistency, false),
            Self::Full => (views, consistency, true),
        };
        vec![
            format!("train.views={views}"),
            format!("method.consistency={consistency:?}"),
            format!("merge.enabled={merge}"),
        ]
    }

    /// Parses one variant's name for a recipe whose improved variants train `views` views
    /// ([`Self::views`]). Besides [`Self::name`], `k<K>` and `k<K>-consistency` (the ablation
    /// issue's `k2`, `k2-consistency`) name the K-view arms when K is the recipe's.
    ///
    /// # Errors
    /// [`Error::Config`] naming `field`: an unknown name, or a `k<K>` whose K is not the
    /// recipe's (it says how to train that K).
    pub fn parse(name: &str, views: usize, field: &str) -> Result<Variant> {
        if let Some(v) = Self::ALL.into_iter().find(|v| v.name() == name) {
            return Ok(v);
        }
        let (k, variant) = match name.strip_suffix("-consistency") {
            Some(k) => (k, Self::ViewsConsistency),
            None => (name, Self::Views),
        };
        let error = |reason: String| Error::Config {
            field: field.into(),
            reason,
        };
        match k.strip_prefix('k').map(str::parse::<usize>) {
            Some(Ok(named)) if named == views => Ok(variant),
            Some(Ok(named)) if named < 2 => Err(error(format!(
                "`{name}` names K = {named} views, and the K-view arms need K ≥ 2 (`vanilla` \
                 is NPID with one view)"
            ))),
            Some(Ok(named)) => Err(error(format!(
                "`{name}` names K = {named} views, but this recipe's improved variants train K = \
                 {views} (`train.views`): name it `{variant}` (the recipe's K), or add the \
                 override `train.views={named}`"
            ))),
            _ => Err(error(format!(
                "unknown variant `{name}` (known: {}; `k{views}` and `k{views}-consistency` \
                 also name the K-view arms)",
                Self::ALL.map(Variant::name).join(", ")
            ))),
        }
    }

    /// Parses a comma-separated list (`vanilla,views,full`) as [`Self::parse`] does, keeping
    /// the order of [`Self::ALL`] and dropping repeats.
    ///
    /// # Errors
    /// [`Error::Config`] naming `--variants` and the unknown name, or an empty list.
    pub fn parse_list(list: &str, views: usize) -> Result<Vec<Variant>> {
        let mut chosen = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Self::parse(s, views, "--variants"))
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
        let c = TrainConfig::load(None, &Variant::ViewsConsistency.overrides(&base)).unwrap();
        assert_eq!((c.train.views, c.method.consistency), (4, 0.25));
        let c = TrainConfig::load(None, &Variant::Vanilla.overrides(&base)).unwrap();
        assert_eq!((c.train.views, c.method.consistency), (1, 0.0));
    }

    #[test]
    fn lists_parse_in_order_and_unknown_names_are_named() {
        let v = Variant::parse_list("full, vanilla,full", 2).unwrap();
        assert_eq!(v, [Variant::Vanilla, Variant::Full]);
        let e = Variant::parse_list("vanilla,npid", 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--variants") && e.contains("`npid`"), "{e}");
        assert!(Variant::parse_list(" , ", 2).is_err());
    }

    /// `k<K>` names the K-view arms only with the recipe's K; another K is refused with the
    /// override that would train it.
    #[test]
    fn k_spellings_name_the_recipes_k() {
        let v = Variant::parse_list("k3-consistency,k3,views", 3).unwrap();
        assert_eq!(v, [Variant::Views, Variant::ViewsConsistency]);
        assert_eq!(
            Variant::parse_list("k2,k2-consistency", 2).unwrap(),
            [Variant::Views, Variant::ViewsConsistency]
        );
        let e = Variant::parse("k2", 3, "--variant")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--variant") && e.contains("K = 2") && e.contains("train.views=2"),
            "{e}"
        );
        for bad in ["k", "kx", "k2-", "k-consistency", "consistency", "k1", "k0"] {
            assert!(Variant::parse(bad, 2, "--variant").is_err(), "{bad}");
        }
        // The recipe with one view: the improved variants train DEFAULT_VIEWS.
        let one = recipe(&["train.views=1"]);
        assert_eq!(Variant::views(&one), DEFAULT_VIEWS);
        assert_eq!(Variant::views(&recipe(&["train.views=4"])), 4);
    }
}
