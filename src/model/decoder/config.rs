//! `config.json`: which architecture the checkpoint is, and the settled shape the forward
//! needs. Each architecture reads its own fields (see `qwen3.rs`, `qwen2.rs`, `gemma.rs`,
//! chosen in `dispatch.rs`); what they share is read here, tolerantly: Hub files carry `rope_theta` and `torch_dtype`
//! at top level, newer transformers write `rope_parameters` and `dtype`.

use serde::Deserialize;

use crate::model::checkpoint::Architecture;
use crate::model::error::{ModelError, Result};

/// The settled configuration the forward needs, whatever the architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// The longest sequence the forward scores exactly (a sliding window may shorten it).
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections.
    pub attention_bias: bool,
}

pub(super) fn invalid(message: String) -> ModelError {
    ModelError::InvalidFile {
        path: "config.json".into(),
        message,
    }
}

/// The fields every decoder's `config.json` has, flattened into each architecture's config.
#[derive(Deserialize)]
pub(super) struct DecoderFields {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    pub num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// The MLP's activation (Gemma's releases say `gelu` and mean the tanh approximation, as
    /// transformers maps it).
    #[serde(default)]
    pub hidden_act: Option<String>,
}

#[derive(Deserialize)]
struct RopeParameters {
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default, alias = "type")]
    rope_type: Option<String>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

/// An architecture's defaults for the fields its `config.json` may leave out.
pub(super) struct Defaults {
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl DecoderFields {
    /// The settled shape; `attention_bias` is the architecture's to say.
    pub(super) fn settle(
        self,
        architecture: Architecture,
        defaults: Defaults,
        attention_bias: bool,
    ) -> Result<ModelConfig> {
        for params in [&self.rope_parameters, &self.rope_scaling]
            .into_iter()
            .flatten()
        {
            if let Some(kind) = params.rope_type.as_deref()
                && kind != "default"
            {
                return Err(ModelError::UnsupportedConfig(format!(
                    "rope type `{kind}` (only default)"
                )));
            }
        }
        let rope_theta = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(defaults.rope_theta);
        let heads = self.num_attention_heads;
        let kv_heads = self.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(ModelError::UnsupportedConfig(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(ModelError::UnsupportedConfig(format!(
                "head_dim {head_dim} must be even and non-zero"
            )));
        }
        Ok(ModelConfig {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            max_position_embeddings: self
                .max_position_embeddings
                .unwrap_or(defaults.max_position_embeddings),
            tie_word_embeddings: self
                .tie_word_embeddings
                .unwrap_or(defaults.tie_word_embeddings),
            attention_bias,
        })
    }
}

/// Refuses an MLP activation other than the architecture's.
pub(super) fn check_activation(found: Option<&str>, expected: &[&str]) -> Result<()> {
    match found {
        Some(act) if !expected.contains(&act) => Err(ModelError::UnsupportedConfig(format!(
            "hidden_act `{act}` (only {})",
            expected.join(" or ")
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB_LAYOUT: &str = r#"{"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3",
        "vocab_size":151936,"hidden_size":2048,"intermediate_size":6144,"num_hidden_layers":28,
        "num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,"rms_norm_eps":1e-6,
        "rope_theta":1000000,"rope_scaling":null,"max_position_embeddings":40960,
        "tie_word_embeddings":true,"torch_dtype":"bfloat16","hidden_act":"silu"}"#;
    const NEW_LAYOUT: &str = r#"{"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3",
        "vocab_size":151936,"hidden_size":2048,"intermediate_size":6144,"num_hidden_layers":28,
        "num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,"rms_norm_eps":1e-6,
        "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},
        "max_position_embeddings":40960,"tie_word_embeddings":true,"dtype":"bfloat16"}"#;

    #[test]
    fn both_layouts_settle_to_the_same_config() {
        let hub = ModelConfig::from_json(HUB_LAYOUT).unwrap();
        let new = ModelConfig::from_json(NEW_LAYOUT).unwrap();
        assert_eq!(hub, new);
        assert_eq!(hub.rope_theta, 1_000_000.0);
        assert_eq!(hub.architecture, Architecture::Qwen3);
    }

    #[test]
    fn wrong_architecture_names_it_and_the_supported_ones() {
        for config in [
            r#"{"architectures":["BertForSequenceClassification"],"model_type":"bert"}"#,
            // A Gemma 2 is not a Gemma: softcapping and sliding layers.
            r#"{"architectures":["Gemma2ForCausalLM"],"model_type":"gemma2"}"#,
        ] {
            let err = ModelConfig::from_json(config).unwrap_err().to_string();
            let found: serde_json::Value = serde_json::from_str(config).unwrap();
            assert!(
                err.contains(found["architectures"][0].as_str().unwrap()),
                "{err}"
            );
            for supported in ["Qwen3ForCausalLM", "Qwen2ForCausalLM", "GemmaForCausalLM"] {
                assert!(err.contains(supported), "{err}");
            }
        }
    }

    #[test]
    fn model_type_alone_names_the_architecture() {
        let text = HUB_LAYOUT
            .replace(r#""architectures":["Qwen3ForCausalLM"],"#, "")
            .replace(r#""model_type":"qwen3""#, r#""model_type":"qwen2""#);
        let config = ModelConfig::from_json(&text).unwrap();
        assert_eq!(config.architecture, Architecture::Qwen2);
    }

    #[test]
    fn scaled_rope_is_refused() {
        let text = HUB_LAYOUT.replace(
            r#""rope_scaling":null"#,
            r#""rope_scaling":{"rope_type":"yarn","factor":4.0}"#,
        );
        let err = ModelConfig::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
    }

    #[test]
    fn missing_shape_field_is_named() {
        let text = HUB_LAYOUT.replace(r#""hidden_size":2048,"#, "");
        let err = ModelConfig::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("hidden_size"), "{err}");
    }
}
