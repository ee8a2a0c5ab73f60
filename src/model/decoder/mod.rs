//! The decoder family: causal LMs scored by their head's logits on each sequence's last token
//! (Qwen3, Qwen2, Gemma). `dispatch.rs` reads an architecture's config and picks its block;
//! each architecture's file holds its config and block; `layer.rs` the decoder layer they all
//! run; `scorer.rs` the forward over a packed batch.

mod config;
mod dispatch;
mod gemma;
mod layer;
mod qwen2;
mod qwen3;
mod scorer;

pub use config::ModelConfig;
pub(super) use scorer::Scorer;
