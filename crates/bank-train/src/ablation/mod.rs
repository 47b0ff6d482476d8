//! The ablation of the paper's improvements (Bulat et al., ICASSP 2021): vanilla NPID, K views,
//! K views + consistency, and the full method with merging, each over several seeds, as ordinary
//! run folders under `RUNS/<recipe>-ablation/`, then `ablation.md` and `ablation.png` there.
//!
//! - [`Variant`]: the arms and the config overrides that make them from a recipe;
//! - [`AblationPlan`]: every variant × seed, run (or skipped when finished, resumed when
//!   interrupted) by [`PlannedRun::execute`];
//! - [`AblationReport`]: the statistics over the seeds, [`AblationReport::markdown`] and
//!   [`draw`] for the picture.

mod plan;
mod plot;
mod report;
mod variant;

pub use plan::{AblationPlan, Outcome, PlannedRun};
pub use plot::draw;
pub use report::{AblationReport, Gain, LinearTop1, Measure, RunRecord, Spread, VariantStats};
pub use variant::{DEFAULT_CONSISTENCY, DEFAULT_VIEWS, Variant};

use std::path::PathBuf;

use crate::{Error, Result};

/// Writes `ablation.md` (atomically) and `ablation.png` into `root`; returns their paths.
///
/// # Errors
/// IO errors naming the file; [`Error::Report`] when the picture cannot be drawn.
pub fn write(report: &AblationReport, root: &std::path::Path) -> Result<Vec<PathBuf>> {
    let md = root.join("ablation.md");
    bank_core::write_atomic(&md, report.markdown().as_bytes()).map_err(Error::from)?;
    let png = root.join("ablation.png");
    draw(report, &png)?;
    Ok(vec![md, png])
}
