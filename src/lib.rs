//! zerank-server: ZeroEntropy's zerank-1 cross-encoders behind an HTTP rerank API.
//!
//! Layers, each talking to the next through a small typed API:
//! - [`http`]: routes, request and response shapes, errors mapped to status codes;
//! - [`batcher`]: the queue, batch formation and the model thread;
//! - [`model`]: checkpoint loading, prompt building, the Qwen3 scoring forward.

pub mod batcher;
pub mod http;
pub mod metrics;
pub mod model;
pub mod settings;
