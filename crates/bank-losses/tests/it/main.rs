//! bank-losses' integration tests, in one binary.

#[path = "../../../bank-core/tests/it/common.rs"]
#[macro_use]
mod common;
mod closed_form;
mod losses;
mod nce_bank;
mod reference;
mod sharded;
