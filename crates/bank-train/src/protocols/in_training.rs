//! The protocols' hooks in the training loop: `merges.png` after each merging round, and the
//! protocols of `[eval] protocols` beyond kNN at the end of a run (`protocols.json`).

use std::path::Path;

use bank_data::Dataset;
use bank_mining::Merger;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use super::runner::{Inputs, lines, run, write_report};
use super::{Protocol, pictures};
use crate::Result;
use crate::config::TrainConfig;
use crate::data_source::TrainData;
use crate::metrics::KnnAccuracyRecord;
use crate::state::TrainState;
use crate::trainer::Progress;

/// Merged groups drawn in `merges.png`, and members per row.
const MERGE_ROWS: usize = 12;
const MERGE_COLUMNS: usize = 10;

/// Redraws `<run>/merges.png` from the merger's groups (a diagnostic: failures are logged).
pub fn merges_picture(run_dir: &Path, train: &dyn Dataset, merger: Option<&mut Merger>) {
    let Some(merger) = merger else { return };
    let groups = pictures::sample_groups(&merger.group_ids(), MERGE_ROWS);
    if groups.is_empty() {
        return;
    }
    let path = run_dir.join("merges.png");
    if let Err(e) = pictures::merges(&path, train, &groups, MERGE_COLUMNS) {
        tracing::warn!(path = %path.display(), error = %e, "could not draw merges.png");
    }
}

/// kNN top-1/top-5 as the training loop recorded them: against the bank, against recomputed
/// reference features.
pub type KnnPair = (Option<KnnAccuracyRecord>, Option<KnnAccuracyRecord>);

/// Runs the end-of-run protocols other than kNN (which the loop measured: `knn`, against the bank
/// and recomputed) and writes `<run>/protocols.json` with all of them; nothing when
/// `[eval] protocols` is `["knn"]` or the data has no labelled evaluation sets.
///
/// # Errors
/// As [`run`].
pub fn end_of_run<B: AutodiffBackend>(
    config: &TrainConfig,
    data: &TrainData,
    state: &TrainState<B>,
    (run_dir, knn): (&Path, KnnPair),
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<()> {
    let wanted: Vec<Protocol> = [Protocol::Linear, Protocol::Retrieval]
        .into_iter()
        .filter(|p| p.wanted(&config.eval.protocols))
        .collect();
    let Some(eval) = &data.eval else {
        return Ok(());
    };
    if wanted.is_empty() {
        return Ok(());
    }
    let model = state.model.valid();
    let inputs = Inputs::<B> {
        model: &model,
        bank: None,
        eval,
        view: &data.view,
        config,
        out_dir: run_dir,
    };
    let mut report = run(&wanted, &inputs, device, &mut |line| progress.note(line))?;
    for line in lines(&report, config) {
        progress.note(&line);
    }
    report.knn_bank = knn.0.map(Into::into);
    report.knn_recomputed = knn.1.map(Into::into);
    write_report(&run_dir.join("protocols.json"), &report)
}
