//! zerank-server: ZeroEntropy's zerank-1 cross-encoders behind an HTTP rerank API.
//!
//! Layers, each talking to the next through a small typed API:
//! - [`model`]: checkpoint loading, prompt building, the Qwen3 scoring forward.

pub mod model;
