//! Which decoder a checkpoint is, as its `config.json` names it: what picks the recipe
//! (`recipe.rs`) and the forward (`../decoder/dispatch.rs`).

use std::fmt;

use crate::model::error::{ModelError, Result};

/// The decoders the engine runs; each differs from the others in its decoder block only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Qwen3,
    Qwen2,
    Gemma,
}

impl Architecture {
    const ALL: [Architecture; 3] = [
        Architecture::Qwen3,
        Architecture::Qwen2,
        Architecture::Gemma,
    ];

    /// The transformers class name, as `architectures` lists it.
    pub fn class_name(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Gemma => "GemmaForCausalLM",
        }
    }

    fn model_type(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "qwen3",
            Architecture::Qwen2 => "qwen2",
            Architecture::Gemma => "gemma",
        }
    }

    /// The supported class names, for error messages.
    pub fn supported() -> String {
        Self::ALL.map(Architecture::class_name).join(", ")
    }

    /// From `architectures` (any entry the engine runs), else from `model_type`. Checked
    /// before the shape fields so that, say, a BERT config says "wrong architecture" rather
    /// than "missing field".
    pub(crate) fn detect(value: &serde_json::Value) -> Result<Architecture> {
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
        let known = Self::ALL.into_iter().find(|arch| {
            if found.is_empty() {
                model_type.as_deref() == Some(arch.model_type())
            } else {
                found.iter().any(|a| a == arch.class_name())
            }
        });
        known.ok_or_else(|| ModelError::UnsupportedArchitecture {
            found,
            model_type,
            supported: Self::supported(),
        })
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class_name())
    }
}
