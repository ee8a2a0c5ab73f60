//! Qwen3 (zerank-1/-2, Qwen3-Reranker): q/k RMSNorm per head before the rotation, SwiGLU,
//! optional attention biases (none in the released models), rope θ 10⁶ by default.

use serde::Deserialize;

use super::checkpoint::Architecture;
use super::config::{DecoderFields, Defaults, ModelConfig, check_activation};
use super::decoder::{Activation, Block, NormKind};
use super::error::{ModelError, Result};

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
    hidden_act: Option<String>,
    #[serde(default)]
    use_sliding_window: bool,
}

impl Qwen3Config {
    pub fn settle(self) -> Result<ModelConfig> {
        check_activation(self.hidden_act.as_deref(), &["silu"])?;
        if self.use_sliding_window {
            return Err(ModelError::UnsupportedConfig(
                "use_sliding_window: true".into(),
            ));
        }
        let defaults = Defaults {
            rope_theta: 1_000_000.0,
            max_position_embeddings: 32_768,
            tie_word_embeddings: false,
        };
        self.decoder
            .settle(Architecture::Qwen3, defaults, self.attention_bias)
    }
}
