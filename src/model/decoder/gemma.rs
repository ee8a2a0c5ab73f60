//! Gemma (gemma-2b; bge-reranker-v2-gemma): embeddings scaled by √hidden_size, RMSNorm by
//! (1 + w) in f32, GeGLU with tanh-approximated GELU, no q/k norms, rope θ 10⁴, embeddings
//! tied to the head. gemma-2b has head_dim 256 and one key/value head; all read from the config.

use serde::Deserialize;

use super::config::{DecoderFields, Defaults, ModelConfig, check_activation};
use super::layer::{Activation, Block, NormKind};
use crate::model::checkpoint::Architecture;
use crate::model::error::{ModelError, Result};

pub(super) const BLOCK: Block = Block {
    qk_norm: false,
    norm: NormKind::OnePlusWeight,
    activation: Activation::GeluTanh,
    scaled_embeddings: true,
};

/// `config.json` of a `GemmaForCausalLM`.
#[derive(Deserialize)]
pub(super) struct GemmaConfig {
    #[serde(flatten)]
    decoder: DecoderFields,
    #[serde(default)]
    attention_bias: bool,
    /// Older transformers' override of `hidden_act`.
    #[serde(default)]
    hidden_activation: Option<String>,
    #[serde(default)]
    use_bidirectional_attention: Option<bool>,
}

/// What a Gemma `config.json` may leave out.
const DEFAULTS: Defaults = Defaults {
    rope_theta: 10_000.0,
    max_position_embeddings: 8_192,
    tie_word_embeddings: true,
};

impl GemmaConfig {
    pub fn settle(self) -> Result<ModelConfig> {
        match self.hidden_activation.as_deref() {
            Some(act) => check_activation(Some(act), &["gelu_pytorch_tanh"])?,
            None => check_activation(
                self.decoder.hidden_act.as_deref(),
                &["gelu", "gelu_pytorch_tanh"],
            )?,
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(ModelError::UnsupportedConfig(
                "use_bidirectional_attention: true (a reranker scores causally)".into(),
            ));
        }
        self.decoder
            .settle(Architecture::Gemma, DEFAULTS, self.attention_bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bge-reranker-v2-gemma's shape (gemma-2b), as its Hub config writes it.
    const GEMMA_2B: &str = r#"{"architectures":["GemmaForCausalLM"],"model_type":"gemma",
        "vocab_size":256000,"hidden_size":2048,"intermediate_size":16384,"num_hidden_layers":18,
        "num_attention_heads":8,"num_key_value_heads":1,"head_dim":256,"rms_norm_eps":1e-6,
        "rope_theta":10000.0,"max_position_embeddings":8192,"hidden_act":"gelu",
        "hidden_activation":null,"attention_bias":false,"torch_dtype":"float32"}"#;

    #[test]
    fn gemma_2b_settles_with_its_defaults() {
        let config = ModelConfig::from_json(GEMMA_2B).unwrap();
        assert_eq!(config.architecture, Architecture::Gemma);
        assert_eq!((config.head_dim, config.num_key_value_heads), (256, 1));
        assert!(config.tie_word_embeddings && !config.attention_bias);
        assert_eq!(config.rope_theta, 10_000.0);
    }

    #[test]
    fn exact_gelu_is_refused() {
        let exact = GEMMA_2B.replace(
            r#""hidden_activation":null"#,
            r#""hidden_activation":"gelu""#,
        );
        let err = ModelConfig::from_json(&exact).unwrap_err().to_string();
        assert!(err.contains("gelu_pytorch_tanh"), "{err}");
    }
}
