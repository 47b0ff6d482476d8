//! bank-data integration tests: one binary, one module per concern.

mod augment;
mod bad_input;
mod cache;
mod common;
mod download;
mod loader;
mod real_data;
mod synthetic_formats;
