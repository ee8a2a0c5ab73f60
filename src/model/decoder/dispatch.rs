//! Each architecture's own file, chosen by what `config.json` says: the config struct it
//! parses, and the decoder block it runs. Above `config.rs`, the architecture files and
//! `layer.rs`, so that none of them needs the others' list.

use std::path::Path;

use super::config::{ModelConfig, invalid};
use super::layer::Block;
use super::{gemma, qwen2, qwen3};
use crate::model::checkpoint::Architecture;
use crate::model::error::{ModelError, Result};

impl Architecture {
    /// What its decoder block is made of.
    pub(super) fn block(self) -> Block {
        match self {
            Architecture::Qwen3 => qwen3::BLOCK,
            Architecture::Qwen2 => qwen2::BLOCK,
            Architecture::Gemma => gemma::BLOCK,
        }
    }
}

impl ModelConfig {
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
        let architecture = Architecture::detect(&value)?;
        let fields =
            |err: serde_json::Error| invalid(format!("not a {architecture} config: {err}"));
        match architecture {
            Architecture::Qwen3 => serde_json::from_value::<qwen3::Qwen3Config>(value)
                .map_err(fields)?
                .settle(),
            Architecture::Qwen2 => serde_json::from_value::<qwen2::Qwen2Config>(value)
                .map_err(fields)?
                .settle(),
            Architecture::Gemma => serde_json::from_value::<gemma::GemmaConfig>(value)
                .map_err(fields)?
                .settle(),
        }
    }
}
