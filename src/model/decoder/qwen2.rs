//! Qwen2 / Qwen2.5 (mxbai-rerank-v2): like Qwen3 without the q/k norms, with biases on the
//! q, k and v projections, `head_dim` = hidden_size / heads (unless the config names one, as
//! transformers reads it), rope θ 10⁴ by default.

use serde::Deserialize;

use super::config::{DecoderFields, Defaults, ModelConfig, check_activation};
use super::layer::{Activation, Block, NormKind};
use crate::model::checkpoint::Architecture;
use crate::model::error::{ModelError, Result};

pub(super) const BLOCK: Block = Block {
    qk_norm: false,
    norm: NormKind::Plain,
    activation: Activation::Silu,
    scaled_embeddings: false,
};

/// `config.json` of a `Qwen2ForCausalLM`.
#[derive(Deserialize)]
pub(super) struct Qwen2Config {
    #[serde(flatten)]
    decoder: DecoderFields,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    sliding_window: Option<usize>,
    /// Layers from this index on slide, when the window is on.
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
}

/// What a Qwen2 `config.json` may leave out.
const DEFAULTS: Defaults = Defaults {
    rope_theta: 10_000.0,
    max_position_embeddings: 32_768,
    tie_word_embeddings: false,
};

impl Qwen2Config {
    pub fn settle(self) -> Result<ModelConfig> {
        check_activation(self.decoder.hidden_act.as_deref(), &["silu"])?;
        let window = self.effective_window()?;
        let mut config = self.decoder.settle(Architecture::Qwen2, DEFAULTS, true)?;
        // A sequence no longer than the window attends exactly as with full attention, so
        // the window is honoured by scoring no longer sequences.
        if let Some(window) = window
            && window < config.max_position_embeddings
        {
            tracing::info!(
                window,
                "use_sliding_window: prompts are limited to the {window}-token window, within which attention is exact"
            );
            config.max_position_embeddings = window;
        }
        Ok(config)
    }

    /// The sliding window that some layer applies, if any (as transformers decides it:
    /// `use_sliding_window` and `sliding_window` set, and a layer typed `sliding_attention`,
    /// by default those from `max_window_layers` on).
    fn effective_window(&self) -> Result<Option<usize>> {
        let window = match (self.use_sliding_window, self.sliding_window) {
            (true, Some(window)) => window,
            _ => return Ok(None),
        };
        if window == 0 {
            return Err(ModelError::UnsupportedConfig("sliding_window 0".into()));
        }
        let slides = match &self.layer_types {
            Some(types) => types.iter().any(|t| t == "sliding_attention"),
            None => self
                .max_window_layers
                .is_some_and(|first| first < self.decoder.num_hidden_layers),
        };
        Ok(slides.then_some(window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mxbai-rerank-base-v2's shape (Qwen2.5-0.5B).
    const MXBAI_BASE: &str = r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2",
        "vocab_size":151936,"hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,
        "num_attention_heads":14,"num_key_value_heads":2,"rms_norm_eps":1e-6,
        "rope_theta":1000000.0,"max_position_embeddings":32768,"tie_word_embeddings":true,
        "use_sliding_window":false,"sliding_window":32768,"max_window_layers":21,
        "hidden_act":"silu","torch_dtype":"bfloat16"}"#;

    #[test]
    fn qwen2_has_biases_and_derives_its_head_dim() {
        let config = ModelConfig::from_json(MXBAI_BASE).unwrap();
        assert_eq!(config.architecture, Architecture::Qwen2);
        assert_eq!(config.head_dim, 64);
        assert!(config.attention_bias && config.tie_word_embeddings);
        assert_eq!(config.max_position_embeddings, 32_768);
    }

    #[test]
    fn a_sliding_window_limits_prompts_to_it() {
        let sliding = MXBAI_BASE
            .replace(
                r#""use_sliding_window":false"#,
                r#""use_sliding_window":true"#,
            )
            .replace(r#""sliding_window":32768"#, r#""sliding_window":4096"#);
        assert_eq!(
            ModelConfig::from_json(&sliding)
                .unwrap()
                .max_position_embeddings,
            4096
        );
        // Every layer below max_window_layers: no layer slides.
        let no_layer = sliding.replace(r#""max_window_layers":21"#, r#""max_window_layers":24"#);
        assert_eq!(
            ModelConfig::from_json(&no_layer)
                .unwrap()
                .max_position_embeddings,
            32_768
        );
    }
}
