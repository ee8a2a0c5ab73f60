//! The integration tests, one binary: a module per area, `common` shared by all.
//!
//! `cargo test --test it` runs them all; `cargo test --test it http::` one area.

mod common;

mod architectures;
mod cache;
mod chunking;
mod cli;
mod connections;
mod encoders;
mod engine;
mod hardening;
mod http;
mod memory;
mod models;
mod native;
mod oracle;
// Trace export, in a build with the `otlp` feature (`cargo test --features otlp`).
#[cfg(feature = "otlp")]
mod otlp_export;
mod properties;
mod shapes;
mod telemetry;
