//! bank-mining's integration tests, in one binary.

#[path = "../../../bank-core/tests/it/common.rs"]
#[macro_use]
mod common;
mod knn;
mod merging;
