//! Qwen3 (zerank-1/-2, Qwen3-Reranker): q/k RMSNorm per head before the rotation, SwiGLU,
//! optional attention biases (none in the released models), rope θ 10⁶ by default.

use serde::Deserialize;

use super::config::{DecoderFields, Defaults, ModelConfig, check_activation};
use super::layer::{Activation, Block, NormKind};
use crate::model::checkpoint::Architecture;
use crate::model::error::{ModelError, Result};

pub(super) const BLOCK: Block = Block {
    qk_norm: true,
    norm: NormKind::Plain,
    activation: Activation::Silu,
    scaled_embeddings: false,
};

/// `config.json` of a `Qwen3ForCausalLM`.
#[derive(Deserialize)]
pub(super) struct Qwen3Config {
    #[serde(flatten)]
    decoder: DecoderFields,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    use_sliding_window: bool,
}

/// What a Qwen3 `config.json` may leave out.
const DEFAULTS: Defaults = Defaults {
    rope_theta: 1_000_000.0,
    max_position_embeddings: 32_768,
    tie_word_embeddings: false,
};

impl Qwen3Config {
    pub fn settle(self) -> Result<ModelConfig> {
        check_activation(self.decoder.hidden_act.as_deref(), &["silu"])?;
        if self.use_sliding_window {
            return Err(ModelError::UnsupportedConfig(
                "use_sliding_window: true".into(),
            ));
        }
        self.decoder
            .settle(Architecture::Qwen3, DEFAULTS, self.attention_bias)
    }
}
