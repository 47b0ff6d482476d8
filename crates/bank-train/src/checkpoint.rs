//! Checkpoints: model, optimiser state, bank (with merge groups), epoch, step, RNG position and
//! the resolved config, in one folder per epoch.
//!
//! A checkpoint folder is assembled under a temporary name and renamed into place, so a run
//! killed at any moment leaves only complete checkpoints (`epoch-NNNN/`) and, at worst, a
//! temporary folder that the next save removes. RNG state is positional: the loader, the
//! augmentations and the backend seed are functions of (seed, epoch), so the epoch restores it.

use std::fs;
use std::path::{Path, PathBuf};

use bank_core::{Attachment, MemoryBank, write_atomic};
use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::model::EmbeddingNet;
use crate::{Error, Result};

const MODEL_FILE: &str = "model.bin";
const OPTIM_FILE: &str = "optim.bin";
const BANK_FILE: &str = "bank.safetensors";
const STATE_FILE: &str = "state.json";

/// The scalar state of a run at the end of an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimiser steps taken.
    pub step: usize,
    /// The run's seed (with `epochs_done`, the position of every generator).
    pub seed: u64,
    /// NCE's normalising constant, when NCE is used.
    pub nce_z: Option<f64>,
    /// The resolved configuration, as TOML.
    pub config: String,
}

type Bytes = BinBytesRecorder<FullPrecisionSettings>;

/// Writes checkpoint `state.epochs_done` under `dir` and keeps the newest `keep`.
pub fn save<B, O>(
    dir: &Path,
    model: &EmbeddingNet<B>,
    optim: &O,
    bank: &MemoryBank<B>,
    attachments: &[Attachment],
    state: &RunState,
    keep: usize,
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    O: Optimizer<EmbeddingNet<B>, B>,
{
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = format!("epoch-{:04}", state.epochs_done);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let recorder = Bytes::default();
    let encode = |what: &str, e: burn::record::RecorderError| {
        Error::checkpoint(&tmp, format!("cannot encode {what}: {e}"))
    };
    let model_bytes = Recorder::<B>::record(&recorder, model.clone().into_record(), ())
        .map_err(|e| encode("model", e))?;
    write_atomic(&tmp.join(MODEL_FILE), &model_bytes)?;
    let optim_bytes = Recorder::<B>::record(&recorder, optim.to_record(), ())
        .map_err(|e| encode("optimiser", e))?;
    write_atomic(&tmp.join(OPTIM_FILE), &optim_bytes)?;
    bank.save_with(tmp.join(BANK_FILE), attachments)?;
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    write_atomic(&tmp.join(STATE_FILE), &json)?;

    let target = dir.join(&name);
    if target.exists() {
        fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    }
    fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    for old in list(dir)?.into_iter().rev().skip(keep) {
        let _ = fs::remove_dir_all(old);
    }
    Ok(target)
}

/// Complete checkpoints under `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("epoch-"))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint under `dir`.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(dir)?.pop())
}

/// Reads the state file of checkpoint `ckpt`.
pub fn read_state(ckpt: &Path) -> Result<RunState> {
    let path = ckpt.join(STATE_FILE);
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::checkpoint(&path, format!("unreadable state: {e}")))
}

/// What [`load`] restores: model, optimiser, bank and the bank's attachments (merge groups).
pub type Restored<B, O> = (EmbeddingNet<B>, O, MemoryBank<B>, Vec<Attachment>);

/// Restores model, optimiser and bank (with attachments) from checkpoint `ckpt`.
pub fn load<B, O>(
    ckpt: &Path,
    model: EmbeddingNet<B>,
    optim: O,
    device: &B::Device,
) -> Result<Restored<B, O>>
where
    B: AutodiffBackend,
    O: Optimizer<EmbeddingNet<B>, B>,
{
    let recorder = Bytes::default();
    let read = |file: &str| -> Result<Vec<u8>> {
        let p = ckpt.join(file);
        fs::read(&p).map_err(|e| Error::io(&p, e))
    };
    let decode = |file: &str, e: burn::record::RecorderError| {
        Error::checkpoint(
            ckpt.join(file),
            format!("damaged or from another model: {e}"),
        )
    };
    let record = Recorder::<B>::load(&recorder, read(MODEL_FILE)?, device)
        .map_err(|e| decode(MODEL_FILE, e))?;
    let model = model.load_record(record);
    let record = Recorder::<B>::load(&recorder, read(OPTIM_FILE)?, device)
        .map_err(|e| decode(OPTIM_FILE, e))?;
    let optim = optim.load_record(record);
    let (bank, attachments) = MemoryBank::load_with(ckpt.join(BANK_FILE), device)?;
    Ok((model, optim, bank, attachments))
}
