//! bank-losses' integration tests, in one binary.

#[path = "../../../bank-core/tests/it/common.rs"]
#[macro_use]
mod common;
mod losses;
mod nce_bank;
mod reference;
