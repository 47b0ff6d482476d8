//! What a build and a run with LibTorch (`--backend tch`) need. burn-tch links the torch of the
//! peers' Python environment (`~/.cache/membank/pyenv`, torch 2.9.0 from
//! `benches/peer/requirements.txt`: one environment, one download, for both), never a libtorch
//! of its own: without `LIBTORCH_USE_PYTORCH` or `LIBTORCH`, torch-sys's build script would try
//! to download one.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::peer;

/// Sets `cmd` (a `cargo build|run|test|bench` with the `tch` feature) up to build and run with
/// the torch of the environment whose interpreter is `python`, and returns torch's `lib/`:
///
/// - `LIBTORCH_USE_PYTORCH=1`: torch-sys's and burn-tch's build scripts ask the environment's
///   Python for torch's headers and libraries instead of downloading libtorch;
/// - the environment's `bin/` first in `PATH`: they run the first `python3` (`python` when
///   `VIRTUAL_ENV` is set) found there;
/// - torch's `lib/` first in `LD_LIBRARY_PATH`: the binaries carry no rpath to it, and
///   `cargo run` / `cargo test` / `cargo bench` pass the variable on to them.
///
/// # Errors
///
/// When `python` is not in a `bin/` folder or the environment holds no `torch/lib/`.
pub fn configure(cmd: &mut Command, python: &Path) -> Result<PathBuf> {
    let bin = python
        .parent()
        .with_context(|| format!("{} is in no folder", python.display()))?;
    let env = bin
        .parent()
        .with_context(|| format!("{} is in no environment", bin.display()))?;
    let lib = torch_lib(env)?;
    cmd.env("LIBTORCH_USE_PYTORCH", "1")
        .env("PATH", prepend(bin, "PATH")?)
        .env("LD_LIBRARY_PATH", prepend(&lib, "LD_LIBRARY_PATH")?);
    Ok(lib)
}

/// [`configure`] with the peers' environment, created first when it is missing (a ~4 GB
/// download, a few minutes: [`peer::python`]).
///
/// # Errors
///
/// When the environment cannot be created or holds no torch.
pub fn setup(cmd: &mut Command) -> Result<()> {
    let python = peer::python()?;
    let lib = configure(cmd, &python)?;
    eprintln!("xtask: LibTorch from {}", lib.display());
    Ok(())
}

/// The peers' environment's Python when the environment exists and holds torch (nothing is
/// created or downloaded).
pub fn existing_python() -> Option<PathBuf> {
    let env = peer::env_dir();
    let python = env.join("bin/python");
    (python.is_file() && torch_lib(&env).is_ok()).then_some(python)
}

/// `ENV/lib/python3.*/site-packages/torch/lib`.
fn torch_lib(env: &Path) -> Result<PathBuf> {
    let libs = env.join("lib");
    let entries = std::fs::read_dir(&libs)
        .with_context(|| format!("no Python environment in {}", env.display()))?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/torch/lib"))
        .find(|lib| lib.join("libtorch.so").is_file())
        .with_context(|| {
            format!(
                "no torch in the Python environment {} (no lib/python3.*/site-packages/torch/lib/libtorch.so)",
                env.display()
            )
        })
}

/// `first` followed by the current value of the search-path variable `var`.
fn prepend(first: &Path, var: &str) -> Result<std::ffi::OsString> {
    let rest = std::env::var_os(var).unwrap_or_default();
    // An empty entry would mean the current folder: none is added.
    let rest = std::env::split_paths(&rest).filter(|p| !p.as_os_str().is_empty());
    let paths = std::iter::once(first.to_path_buf()).chain(rest);
    std::env::join_paths(paths).with_context(|| format!("{} cannot go into {var}", first.display()))
}
