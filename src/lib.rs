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
pub mod service;
pub mod settings;
pub mod telemetry;

/// Tensors of tens of megabytes come and go at every layer. glibc's malloc maps and unmaps
/// each afresh (page faults, zeroing); mimalloc, set by [`keep_freed_memory`], reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long freed memory stays in the process before it goes back to the system.
const PURGE_DELAY_MS: std::ffi::c_long = 2_000;

/// Keeps freed memory in the process for a while instead of returning it to the system at
/// once: back-to-back batches reuse it and do not page-fault their way to it again
/// (measured: ~5% of a CPU forward's time), and an idle server gives it back (aborted
/// request bodies included).
pub fn keep_freed_memory() {
    // `mi_option_purge_delay` of mimalloc.h (not named by libmimalloc-sys), in milliseconds.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one of mimalloc's options, which it reads atomically.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
}
