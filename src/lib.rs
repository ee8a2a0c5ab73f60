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
/// purge delay back to the system (see [`keep_freed_memory`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its position in mimalloc v3's `mi_option_e` (mimalloc.h), which
/// libmimalloc-sys binds under no name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before giving it back to the system, where
/// `MIMALLOC_PURGE_DELAY` does not say.
const PURGE_DELAY_MS: std::ffi::c_long = 5_000;

/// Keeps memory freed by one layer of a CPU forward for the next ones. At mimalloc's default
/// (1 s) ranges freed a while before were given back and then faulted in and zeroed again
/// when a later layer's tensors landed on them: 23,000 page faults in the engine bench's bf16
/// run (4,100 with no purging, 4,000-9,000 at 5 s), about a tenth of the forward's time in the
/// kernel's page zeroing (BENCHMARKS.md, round 6). The cost is that a batch's peak stays
/// resident for the delay after it.
pub(crate) fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option's value; mimalloc reads it at its next purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads an option's value.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() && get() != PURGE_DELAY_MS {
            // mimalloc v3's default purge delay: a shifted enum would read another option.
            assert_eq!(get(), 1_000);
        }
        keep_freed_memory();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), PURGE_DELAY_MS);
        }
    }
}
