//! membank's all-rows exact top-k search (`bank_mining::nearest_neighbours`) on rows read from a
//! `.npy` file: seconds and queries per second.
//!
//! ```sh
//! cargo run --release -p membank-benches --example search_topk -- ROWS.npy [--k 10] [--out TOPK.npy]
//! ```
//! ROWS.npy: `[N, D]` float32 unit rows (`benches/peer/search_faiss.py make` writes them). They
//! become a bank (re-normalised in f32, as every bank row is), then every row queries the whole
//! bank, itself excluded, within the default 256 MiB memory budget. Only the search is timed,
//! not reading the file or building the bank. `--out` writes the neighbours' indices, `[N, k]`
//! u32 best first, for `search_faiss.py search --check`. Prints one JSON line, the counterpart
//! of `benches/peer/search_faiss.py` (`cargo xtask bench compare search` runs both).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use bank_core::MemoryBankConfig;
use bank_mining::{KnnConfig, SearchEngine, nearest_neighbours};
use burn::prelude::*;
use clap::{Parser, ValueEnum};
use membank_benches::Bench;

#[path = "common/npy.rs"]
mod npy;

#[derive(Parser)]
#[command(about = "membank's all-rows exact top-k search on rows from a .npy file")]
struct Args {
    /// `[N, D]` float32 rows.
    rows: PathBuf,
    /// Neighbours per row (the row itself excluded).
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Where to write the neighbours' indices (`[N, k]` u32).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the similarities are computed (bank-mining's `SearchEngine`); `auto` is what
    /// training uses: the host on a CPU backend.
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    engine: Engine,
}

/// bank-mining's `SearchEngine`, named on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Engine {
    Auto,
    Host,
    Device,
}

impl From<Engine> for SearchEngine {
    fn from(engine: Engine) -> Self {
        match engine {
            Engine::Auto => SearchEngine::Auto,
            Engine::Host => SearchEngine::Host,
            Engine::Device => SearchEngine::Device,
        }
    }
}

/// The rows of a 2-d float32 `.npy` file and its shape.
fn read_rows(path: &Path) -> anyhow::Result<(Vec<f32>, [usize; 2])> {
    let (values, shape) = npy::read::<f32>(path)?;
    let [n, d] = shape[..] else {
        bail!("{}: shape {shape:?}, expected [N, D]", path.display());
    };
    Ok((values, [n, d]))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (values, [n, d]) = read_rows(&args.rows)?;
    let device = Default::default();
    let rows = Tensor::<Bench, 2>::from_data(TensorData::new(values, [n, d]), &device);
    let bank = MemoryBankConfig::new(n, d).init_from_features(rows)?;
    <Bench as Backend>::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let config = KnnConfig::new(args.k).with_engine(args.engine.into());
    let engine = config.engine.resolve::<Bench>(&device);
    let start = Instant::now();
    let found = nearest_neighbours(&bank, &config)?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(out) = &args.out {
        npy::write(out, &[n, args.k], &found.indices)?;
    }
    println!(
        "{{\"tool\": \"membank\", \"backend\": \"{}\", \"engine\": \"{engine:?}\", \"rows\": {n}, \"dim\": {d}, \"k\": {}, \"self\": \"excluded\", \"seconds\": {seconds}, \"queries_per_s\": {}}}",
        <Bench as Backend>::name(&device),
        args.k,
        n as f64 / seconds
    );
    Ok(())
}
