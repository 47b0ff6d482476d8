//! How the binaries (bank-train, xtask) print an error they end with. One file for both:
//! xtask includes it with `#[path]`, since it depends on no crate of the workspace (it must not
//! build burn to run the tests that build burn).

/// Prints an error and its causes to stderr. Bad input is not a bug, so the stack backtrace
/// (captured by `anyhow` when `RUST_BACKTRACE=1`, which many Rust users keep set for panics) is
/// printed only when asked for errors in particular: `RUST_LIB_BACKTRACE=1`.
/// A closed stderr is no reason to panic on the way out: the exit status still says it failed.
pub(crate) fn report(err: &anyhow::Error) {
    use std::io::Write as _;
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "Error: {err}");
    // A cause whose text the message above already shows (`path: {source}`) is not repeated.
    let mut above = err.to_string();
    let mut causes = Vec::new();
    for cause in err.chain().skip(1).map(|c| c.to_string()) {
        if !above.contains(&cause) {
            above.clone_from(&cause);
            causes.push(cause);
        }
    }
    if !causes.is_empty() {
        let _ = writeln!(stderr, "\nCaused by:");
        for (i, cause) in causes.iter().enumerate() {
            let _ = writeln!(stderr, "    {i}: {cause}");
        }
    }
    if std::env::var_os("RUST_LIB_BACKTRACE").is_some_and(|v| v != "0") {
        let _ = writeln!(stderr, "\nStack backtrace:\n{}", err.backtrace());
    }
}
