//! zerank-server: causal-LM cross-encoders (zerank-1, zerank-2, Qwen3-Reranker) behind an
//! HTTP rerank API.
//!
//! Layers, each importing only from those below it:
//! - [`http`]: routes, request and response shapes, errors mapped to status codes; it reaches
//!   the models only through [`service`];
//! - [`service`]: the served models, each an engine with its batcher; admission,
//!   tokenizing (with the model's encoder) and ranking;
//! - [`batcher`]: the queue, batch formation and the model thread;
//! - [`model`]: the scoring forward (Qwen3, Qwen2, Gemma), above two rooms of its own: the
//!   checkpoint (files, recipes, templates, prompts) and the backend (device, matmuls,
//!   kernels).
//!
//! [`settings`], [`telemetry`] and [`metrics`] serve every layer and import no layer above
//! the model (settings names its device and dtype types). `scripts/check_layers.py` holds
//! the floors and checks that every import runs down them. [`offline`] scores a file of pairs
//! with a model directly, beside the service and without the server.

pub mod batcher;
mod choice;
pub mod http;
mod json;
pub mod metrics;
pub mod model;
pub mod offline;
pub mod server;
pub mod service;
pub mod settings;
pub mod telemetry;

/// Tensors of tens of megabytes come and go at every layer. glibc's malloc maps and unmaps
/// each afresh (page faults, zeroing); mimalloc reuses them, and gives memory unused for its
/// purge delay back to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
