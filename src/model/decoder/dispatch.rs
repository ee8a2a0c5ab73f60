//! Each architecture's own file, chosen by what `config.json` says: the config struct it
//! parses, and the decoder block it runs (or the encoder family, `../encoder/`, for the
//! cross-encoders). Above `config.rs`, the architecture files and `layer.rs`, so that none
//! of them needs the others' list.

use std::path::Path;

use super::config::ModelConfig;
use super::layer::Block;
use super::{gemma, qwen2, qwen3};
use crate::model::checkpoint::Architecture;
use crate::model::encoder::EncoderConfig;
use crate::model::error::{ModelError, Result, invalid_config};

impl Architecture {
    /// What its decoder block is made of.
    pub(super) fn block(self) -> Block {
        match self {
            Architecture::Qwen3 => qwen3::BLOCK,
            Architecture::Qwen2 => qwen2::BLOCK,
            Architecture::Gemma => gemma::BLOCK,
            encoder => unreachable!("{encoder} has no decoder block: its config is an encoder's"),
        }
    }
}

/// A checkpoint's settled `config.json`, of either family.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkConfig {
    Decoder(ModelConfig),
    Encoder(EncoderConfig),
}

impl NetworkConfig {
    pub fn architecture(&self) -> Architecture {
        match self {
            NetworkConfig::Decoder(config) => config.architecture,
            NetworkConfig::Encoder(config) => config.architecture(),
        }
    }

    /// The longest sequence the network scores.
    pub fn max_positions(&self) -> usize {
        match self {
            NetworkConfig::Decoder(config) => config.max_position_embeddings,
            NetworkConfig::Encoder(config) => config.max_positions(),
        }
    }

    pub fn num_hidden_layers(&self) -> usize {
        match self {
            NetworkConfig::Decoder(config) => config.num_hidden_layers,
            NetworkConfig::Encoder(config) => config.num_hidden_layers(),
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            NetworkConfig::Decoder(config) => config.hidden_size,
            NetworkConfig::Encoder(config) => config.hidden_size(),
        }
    }

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
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|err| invalid_config(format!("not valid JSON: {err}")))?;
        let architecture = Architecture::detect(&value)?;
        if architecture.is_encoder() {
            return EncoderConfig::from_value(architecture, value).map(NetworkConfig::Encoder);
        }
        let fields =
            |err: serde_json::Error| invalid_config(format!("not a {architecture} config: {err}"));
        let decoder = match architecture {
            Architecture::Qwen3 => serde_json::from_value::<qwen3::Qwen3Config>(value)
                .map_err(fields)?
                .settle(),
            Architecture::Qwen2 => serde_json::from_value::<qwen2::Qwen2Config>(value)
                .map_err(fields)?
                .settle(),
            Architecture::Gemma => serde_json::from_value::<gemma::GemmaConfig>(value)
                .map_err(fields)?
                .settle(),
            encoder => unreachable!("{encoder} is read as an encoder above"),
        };
        decoder.map(NetworkConfig::Decoder)
    }
}

impl ModelConfig {
    /// A decoder's `config.json`; an encoder's is refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        match NetworkConfig::from_file(path)? {
            NetworkConfig::Decoder(config) => Ok(config),
            NetworkConfig::Encoder(_) => Err(ModelError::UnsupportedConfig(format!(
                "{} is an encoder's config, not a decoder's",
                path.display()
            ))),
        }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        match NetworkConfig::from_json(text)? {
            NetworkConfig::Decoder(config) => Ok(config),
            NetworkConfig::Encoder(_) => Err(invalid_config(
                "an encoder's config, not a decoder's".into(),
            )),
        }
    }
}
