//! `config.json` of a Qwen3 checkpoint, read tolerantly: Hub files carry `rope_theta` and
//! `torch_dtype` at top level, newer transformers write `rope_parameters` and `dtype`.

use std::path::Path;

use serde::Deserialize;

use super::error::{ModelError, Result};

const SUPPORTED_ARCHITECTURE: &str = "Qwen3ForCausalLM";
const DEFAULT_ROPE_THETA: f64 = 1_000_000.0;

/// The settled configuration the forward needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
}

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
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
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    use_sliding_window: bool,
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

fn default_max_position_embeddings() -> usize {
    32_768
}

impl Qwen3Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|err| ModelError::InvalidFile {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        Self::from_json(&text).map_err(|err| match err {
            ModelError::InvalidFile { message, .. } => ModelError::InvalidFile {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|err| invalid(format!("not valid JSON: {err}")))?;
        check_architecture(&value)?;
        let raw: RawConfig = serde_json::from_value(value)
            .map_err(|err| invalid(format!("not a Qwen3 config: {err}")))?;
        raw.settle()
    }
}

fn invalid(message: String) -> ModelError {
    ModelError::InvalidFile {
        path: "config.json".into(),
        message,
    }
}

/// Checked before the shape fields so that, say, a BERT config says "wrong architecture"
/// rather than "missing field".
fn check_architecture(value: &serde_json::Value) -> Result<()> {
    let found: Vec<String> = value
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let model_type = value
        .get("model_type")
        .and_then(|m| m.as_str())
        .map(str::to_owned);
    let supported = if found.is_empty() {
        model_type.as_deref() == Some("qwen3")
    } else {
        found.iter().any(|a| a == SUPPORTED_ARCHITECTURE)
    };
    if supported {
        Ok(())
    } else {
        Err(ModelError::UnsupportedArchitecture { found, model_type })
    }
}

impl RawConfig {
    fn settle(self) -> Result<Qwen3Config> {
        if let Some(act) = self.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(ModelError::UnsupportedConfig(format!(
                "hidden_act `{act}` (only silu)"
            )));
        }
        if self.use_sliding_window {
            return Err(ModelError::UnsupportedConfig(
                "use_sliding_window: true".into(),
            ));
        }
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
            .unwrap_or(DEFAULT_ROPE_THETA);
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
        Ok(Qwen3Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
        })
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
        let hub = Qwen3Config::from_json(HUB_LAYOUT).unwrap();
        let new = Qwen3Config::from_json(NEW_LAYOUT).unwrap();
        assert_eq!(hub, new);
        assert_eq!(hub.rope_theta, 1_000_000.0);
    }

    #[test]
    fn wrong_architecture_is_named() {
        let err = Qwen3Config::from_json(
            r#"{"architectures":["BertForSequenceClassification"],"model_type":"bert"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("BertForSequenceClassification"), "{err}");
        assert!(err.contains("Qwen3ForCausalLM"), "{err}");
    }

    #[test]
    fn scaled_rope_is_refused() {
        let text = HUB_LAYOUT.replace(
            r#""rope_scaling":null"#,
            r#""rope_scaling":{"rope_type":"yarn","factor":4.0}"#,
        );
        let err = Qwen3Config::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
    }

    #[test]
    fn missing_shape_field_is_named() {
        let text = HUB_LAYOUT.replace(r#""hidden_size":2048,"#, "");
        let err = Qwen3Config::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("hidden_size"), "{err}");
    }
}
