//! Time-boxed property-based fuzzing on stable Rust (proptest), shared by the fuzz tests of
//! bank-core, bank-data and bank-train (included by path).
//!
//! Each target runs rounds of proptest cases, every round with its own seed, until its time is
//! up: `MEMBANK_FUZZ_SECONDS` (default 1.5 s, the suite's short version; `cargo xtask fuzz
//! --minutes 10` sets 600). A failing case, a panic included (proptest catches panics), is
//! shrunk and reported. `MEMBANK_FUZZ_SEED` moves every round to other seeds.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases per round (one seed each).
const ROUND: u32 = 64;

/// Seconds each target runs.
pub fn budget() -> Duration {
    let seconds = std::env::var("MEMBANK_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.5);
    Duration::from_secs_f64(seconds)
}

/// Runs `test` on values of `strategy` for [`budget`]; panics with the shrunk failing input.
pub fn fuzz<S: Strategy>(
    target: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    let base: u64 = std::env::var("MEMBANK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut cases = 0u64;
    let mut round = 0u64;
    while started.elapsed() < budget() || round == 0 {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&base.to_le_bytes());
        seed[8..16].copy_from_slice(&round.to_le_bytes());
        seed[16..16 + target.len().min(16)]
            .copy_from_slice(&target.as_bytes()[..target.len().min(16)]);
        let config = Config {
            cases: ROUND,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("fuzz target `{target}` failed in round {round} (seed base {base}): {e}");
        }
        cases += u64::from(ROUND);
        round += 1;
    }
    eprintln!(
        "fuzz {target}: {cases} cases in {:.1} s, 0 failures, 0 panics",
        started.elapsed().as_secs_f64()
    );
}

/// Edits to a valid file: byte overwrites at positions (taken modulo the length), then
/// optionally a cut at a position, then optionally appended bytes.
#[derive(Debug, Clone)]
pub struct Mutation {
    /// (position, new byte) pairs.
    pub writes: Vec<(usize, u8)>,
    /// Cut the file at this position (modulo length + 1).
    pub cut: Option<usize>,
    /// Bytes appended at the end.
    pub tail: Vec<u8>,
}

impl Mutation {
    /// `bytes` with the edits applied; positions below `focus` (when given) are hit more often:
    /// half of the writes land in the first `focus` bytes (headers).
    pub fn apply(&self, bytes: &[u8], focus: Option<usize>) -> Vec<u8> {
        let mut out = bytes.to_vec();
        if !out.is_empty() {
            for (i, &(at, value)) in self.writes.iter().enumerate() {
                let span = match focus {
                    Some(f) if i % 2 == 0 => f.clamp(1, out.len()),
                    _ => out.len(),
                };
                out[at % span] = value;
            }
        }
        if let Some(cut) = self.cut {
            out.truncate(cut % (out.len() + 1));
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

/// Mutations: up to 8 byte writes, a cut one time in four, a short tail one time in eight.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    (
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        proptest::option::weighted(0.25, any::<usize>()),
        prop_oneof![7 => Just(Vec::new()), 1 => proptest::collection::vec(any::<u8>(), 1..64)],
    )
        .prop_map(|(writes, cut, tail)| Mutation { writes, cut, tail })
}

/// Arbitrary bytes up to `max` long.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}
