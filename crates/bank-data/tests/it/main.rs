//! bank-data integration tests: one binary, one module per concern.

mod augment;
mod bad_input;
mod cache;
mod common;
mod download;
mod fuzz;
mod index;
mod links;
mod loader;
mod real_data;
mod streaming;
mod synthetic_formats;
mod truncation;
mod views;
