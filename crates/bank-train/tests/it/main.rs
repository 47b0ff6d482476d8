//! bank-train integration tests (ndarray backend): one binary, one module per concern.

mod ablation;
mod config;
mod end_to_end;
mod failing_cases;
mod folders;
mod fuzz;
mod knn;
mod models;
mod parallel;
mod process;
mod protocols;
mod resume;
mod step_resume;

use std::path::PathBuf;

use bank_data::{CifarKind, Dataset, DecodeOptions, ImageDataset, ImageStore, read_cifar};

/// The autodiff backend of the resume test (ndarray, as the issue asks).
pub type Train = burn::backend::Autodiff<burn::backend::NdArray>;

/// The faster CPU backend, for the end-to-end run on real images.
pub type FastTrain = burn::backend::Autodiff<burn::backend::Flex>;

/// burn seeds one generator per backend for the whole process, and the harness runs tests on
/// several threads: every test that seeds a backend's generator or draws from it (training,
/// initial weights, random tensors) holds this turn. One draw between a run's seed and its
/// initial weights gives another run (CI of stop 32: a sharded run's epoch-1 loss 4.5% off the
/// replicated run's while the fuzzer's fresh states and the model tests drew unguarded).
pub fn backend_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// `../shared/data` beside the workspace (override with `MEMBANK_SHARED_DATA`).
pub fn shared_data() -> PathBuf {
    std::env::var("MEMBANK_SHARED_DATA").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
        PathBuf::from,
    )
}

/// The first `train` and the next `test` of the 4,000 lossless CIFAR-10 records.
pub fn cifar_records(train: usize, test: usize) -> (ImageDataset, ImageDataset) {
    let all = read_cifar(
        &[shared_data().join("cifar10/data_batch_1_first4000.bin")],
        CifarKind::Cifar10,
        DecodeOptions::default(),
    )
    .expect("real CIFAR-10 records in ../shared/data");
    let a: Vec<usize> = (0..train).collect();
    let b: Vec<usize> = (train..train + test).collect();
    (all.select(&a), all.select(&b))
}

/// `dataset` with every image halved by 2×2 averaging (32×32 → 16×16), to keep ndarray tests
/// short.
pub fn halved(dataset: &ImageDataset) -> ImageDataset {
    let mut store = ImageStore::default();
    for i in 0..dataset.len() {
        let loaded = dataset.image(i).unwrap();
        let img = loaded.view();
        let (h, w) = (img.height / 2, img.width / 2);
        let mut px = Vec::with_capacity(h * w * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let sum: u32 = [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .iter()
                        .map(|&(dy, dx)| u32::from(img.at(2 * y + dy, 2 * x + dx, c)))
                        .sum();
                    px.push((sum / 4) as u8);
                }
            }
        }
        store.push(h, w, &px);
    }
    ImageDataset::new(
        store,
        dataset.labels().map(<[u32]>::to_vec),
        dataset.class_names().to_vec(),
        dataset.source(),
    )
}

/// What must match bit for bit between two runs: every metrics field but the timings.
pub fn metrics(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut m: bank_train::metrics::EpochMetrics = serde_json::from_str(l).unwrap();
            (m.images_per_s, m.views_per_s, m.train_seconds) = (0.0, 0.0, 0.0);
            format!("{m:?} loss bits {:x}", m.loss.to_bits())
        })
        .collect()
}

/// The bits of the newest checkpoint's bank rows (flex) and its attachments (merge groups).
pub fn final_bank(dir: &std::path::Path) -> (Vec<u32>, Vec<bank_core::Attachment>) {
    let ckpt = bank_train::checkpoint::latest(&dir.join("checkpoints"))
        .unwrap()
        .unwrap();
    let (bank, attachments) = bank_core::MemoryBank::<burn::backend::Flex>::load_with(
        ckpt.join("bank.safetensors"),
        &Default::default(),
    )
    .unwrap();
    let rows: Vec<f32> = bank.rows().into_data().to_vec().unwrap();
    (rows.iter().map(|x| x.to_bits()).collect(), attachments)
}
