//! bank-core's integration tests, in one binary (each test binary re-instantiates burn's generic
//! code, so one binary per crate compiles several times faster than one per file).

#[macro_use]
mod common;
mod fuzz;
mod fuzz_harness;
mod persistence;
mod similarity_and_init;
mod update;
