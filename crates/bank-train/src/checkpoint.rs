//! Checkpoints: model, optimiser state, bank (with merge groups), epoch, step, the position
//! inside the epoch with its running statistics, and the resolved config, in one folder each.
//!
//! A checkpoint folder is assembled under a temporary name and renamed into place, so a run
//! killed at any moment leaves only complete checkpoints and, at worst, a temporary folder that
//! the next save removes. Every file is listed with its length and CRC-32 in `checksums.txt`
//! (written last) and verified before it is decoded: damage or truncation is an error naming the
//! file. RNG state is positional: the loader's shuffle and views are functions of (seed, epoch,
//! index) and the backend is reseeded before every step from (seed, epoch, batch), so the
//! position restores every generator.
//!
//! Names: `epoch-NNNN` after NNNN whole epochs, `epoch-NNNN-batch-BBBBBB` after BBBBBB batches
//! of the next epoch; they sort in training order.

use std::fs;
use std::path::{Path, PathBuf};

use bank_core::{Attachment, HostBank, MemoryBank, write_atomic};
use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::manifest::{Entry, MANIFEST_FILE, Manifest};
use crate::model::EmbeddingNet;
use crate::{Error, Result};

const MODEL_FILE: &str = "model.bin";
const OPTIM_FILE: &str = "optim.bin";
const BANK_FILE: &str = "bank.safetensors";
const STATE_FILE: &str = "state.json";

/// How far an epoch has come: what a resume in its middle restores besides the tensors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// Batches of the epoch trained (0: the epoch has not begun).
    pub batches: usize,
    /// Sum of their losses.
    pub loss_sum: f64,
    /// Training views through the network.
    pub views: usize,
    /// Seconds of training spent on them.
    pub seconds: f64,
    /// Learning rate of the last of them.
    pub lr: f64,
}

/// The scalar state of a run at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimiser steps taken.
    pub step: usize,
    /// Progress inside epoch `epochs_done` (from 0); all zero at an epoch end.
    #[serde(default)]
    pub progress: EpochProgress,
    /// The run's seed (with the position, the state of every generator).
    pub seed: u64,
    /// NCE's normalising constant, when NCE is used.
    pub nce_z: Option<f64>,
    /// The resolved configuration, as TOML.
    pub config: String,
}

/// The folder name of the checkpoint taken after `epochs_done` epochs and `batches` batches of
/// the next one.
pub fn name(epochs_done: usize, batches: usize) -> String {
    if batches == 0 {
        format!("epoch-{epochs_done:04}")
    } else {
        format!("epoch-{epochs_done:04}-batch-{batches:06}")
    }
}

/// The position `(epochs_done, batches)` a checkpoint folder name stands for.
pub fn position(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("epoch-")?;
    let (epochs, batches) = match rest.split_once("-batch-") {
        Some((e, b)) => (e, b.parse().ok()?),
        None => (rest, 0),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    digits(epochs).then_some(())?;
    Some((epochs.parse().ok()?, batches))
}

/// Model and optimiser records as named MessagePack: its reader returns errors on bad bytes
/// (burn 0.21's `BinBytesRecorder` unwraps them: a panic).
type Bytes = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// Writes the checkpoint of `state` under `dir` (named by its position) and keeps the newest
/// `keep`. The bank comes from host memory: one device's bank read back, or the shards of a bank
/// split across data-parallel devices gathered.
///
/// # Errors
/// IO errors naming the path; a model or optimiser that cannot be encoded.
pub fn save<B, O>(
    dir: &Path,
    model: &EmbeddingNet<B>,
    optim: &O,
    bank: &HostBank,
    attachments: &[Attachment],
    state: &RunState,
    keep: usize,
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    O: Optimizer<EmbeddingNet<B>, B>,
{
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = name(state.epochs_done, state.progress.batches);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let recorder = Bytes::default();
    let encode = |what: &str, e: burn::record::RecorderError| {
        Error::checkpoint(&tmp, format!("cannot encode {what}: {e}"))
    };
    let mut manifest = Manifest::default();
    let bank_path = tmp.join(BANK_FILE);
    bank.save_with(&bank_path, attachments)?;
    let bank_bytes = fs::read(&bank_path).map_err(|e| Error::io(&bank_path, e))?;
    manifest.entries.push(Entry::of(BANK_FILE, &bank_bytes));
    drop(bank_bytes);
    let mut put = |file: &str, bytes: &[u8]| -> Result<()> {
        write_atomic(&tmp.join(file), bytes)?;
        manifest.entries.push(Entry::of(file, bytes));
        Ok(())
    };
    let model_bytes = Recorder::<B>::record(&recorder, model.clone().into_record(), ())
        .map_err(|e| encode("model", e))?;
    put(MODEL_FILE, &model_bytes)?;
    let optim_bytes = Recorder::<B>::record(&recorder, optim.to_record(), ())
        .map_err(|e| encode("optimiser", e))?;
    put(OPTIM_FILE, &optim_bytes)?;
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    put(STATE_FILE, &json)?;
    write_atomic(&tmp.join(MANIFEST_FILE), manifest.to_text().as_bytes())?;

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
    remove_abandoned(dir);
    Ok(target)
}

/// Removes the checkpoint folders a killed write left half-assembled (`.NAME.tmp`) in `dir`.
/// Call it only holding the run's lock: only the process that trains the run writes
/// checkpoints, so any such folder there is then abandoned. Without this, one whose name was
/// never written again (a mid-epoch checkpoint, when the resume took another path) stayed for
/// good.
pub(crate) fn remove_abandoned(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") && entry.path().is_dir() {
            tracing::info!(folder = %entry.path().display(), "removed a checkpoint a killed write left");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Complete checkpoints under `dir`, oldest first (in training order).
///
/// # Errors
/// The folder cannot be listed.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<((usize, usize), PathBuf)> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            let at = position(p.file_name()?.to_str()?)?;
            Some((at, p))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The newest complete checkpoint under `dir`.
///
/// # Errors
/// The folder cannot be listed.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(dir)?.pop())
}

/// Reads the (verified) state file of checkpoint `ckpt`.
///
/// # Errors
/// A missing or damaged checksum list or state file, naming it.
pub fn read_state(ckpt: &Path) -> Result<RunState> {
    let manifest = Manifest::read(ckpt)?;
    let bytes = manifest.read_verified(ckpt, STATE_FILE)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::checkpoint(ckpt.join(STATE_FILE), format!("unreadable state: {e}")))
}

/// What [`load`] restores: model, optimiser, bank and the bank's attachments (merge groups).
pub type Restored<B, O> = (EmbeddingNet<B>, O, MemoryBank<B>, Vec<Attachment>);

/// Restores model, optimiser and bank (with attachments) from checkpoint `ckpt`, every file
/// verified against the checksum list before it is decoded.
///
/// # Errors
/// A missing, truncated or damaged file (naming it), or a record of another model.
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
    let (model, optim, bank, attachments) = load_host(ckpt, model, optim, device)?;
    Ok((model, optim, bank.to_device(device)?, attachments))
}

/// [`load`] with the bank left in host memory (a sharded run's replicas each take their rows of
/// it).
///
/// # Errors
/// As [`load`].
pub fn load_host<B, O>(
    ckpt: &Path,
    model: EmbeddingNet<B>,
    optim: O,
    device: &B::Device,
) -> Result<(EmbeddingNet<B>, O, HostBank, Vec<Attachment>)>
where
    B: AutodiffBackend,
    O: Optimizer<EmbeddingNet<B>, B>,
{
    let manifest = Manifest::read(ckpt)?;
    let recorder = Bytes::default();
    let decode = |file: &str, e: burn::record::RecorderError| {
        Error::checkpoint(ckpt.join(file), format!("from another model: {e}"))
    };
    let record = Recorder::<B>::load(&recorder, manifest.read_verified(ckpt, MODEL_FILE)?, device)
        .map_err(|e| decode(MODEL_FILE, e))?;
    let model = model.load_record(record);
    let record = Recorder::<B>::load(&recorder, manifest.read_verified(ckpt, OPTIM_FILE)?, device)
        .map_err(|e| decode(OPTIM_FILE, e))?;
    let optim = optim.load_record(record);
    let (bank, attachments) = load_bank(ckpt, &manifest)?;
    Ok((model, optim, bank, attachments))
}

/// The bank of checkpoint `ckpt` in host memory, verified against the checksum list first.
///
/// # Errors
/// A missing or damaged bank file or checksum list (naming it).
pub fn load_host_bank(ckpt: &Path) -> Result<HostBank> {
    Ok(load_bank(ckpt, &Manifest::read(ckpt)?)?.0)
}

fn load_bank(ckpt: &Path, manifest: &Manifest) -> Result<(HostBank, Vec<Attachment>)> {
    manifest.read_verified(ckpt, BANK_FILE)?;
    Ok(HostBank::load_with(ckpt.join(BANK_FILE))?)
}

/// Verifies every file of checkpoint `ckpt` against its checksum list (what a reader of the
/// folder does before decoding anything).
///
/// # Errors
/// A missing, truncated or damaged file, naming it.
pub fn verify(ckpt: &Path) -> Result<()> {
    let manifest = Manifest::read(ckpt)?;
    for file in [MODEL_FILE, OPTIM_FILE, BANK_FILE, STATE_FILE] {
        manifest.read_verified(ckpt, file)?;
    }
    Ok(())
}
