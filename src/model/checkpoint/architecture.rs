//! Which network a checkpoint is, as its `config.json` names it: what picks the recipe
//! (`recipe.rs`) and the forward (`../decoder/dispatch.rs`, `../encoder/`): a causal LM
//! scored by its head's token logits, or an encoder cross-encoder scored by its classifier.

use std::fmt;

use crate::model::error::{ModelError, Result};

/// The networks the engine runs: decoders, which differ from each other in their decoder
/// block only, and encoders with a one-logit classification head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Qwen3,
    Qwen2,
    Gemma,
    Bert,
    Roberta,
    XlmRoberta,
    ModernBert,
}

/// What mxbai-rerank-base/large-v1 are: refused with its own reason.
const DEBERTA_V2: &str = "DebertaV2ForSequenceClassification";

impl Architecture {
    const ALL: [Architecture; 7] = [
        Architecture::Qwen3,
        Architecture::Qwen2,
        Architecture::Gemma,
        Architecture::Bert,
        Architecture::Roberta,
        Architecture::XlmRoberta,
        Architecture::ModernBert,
    ];

    /// A bidirectional encoder with a classification head (a cross-encoder), not a causal LM.
    pub fn is_encoder(self) -> bool {
        matches!(
            self,
            Architecture::Bert
                | Architecture::Roberta
                | Architecture::XlmRoberta
                | Architecture::ModernBert
        )
    }

    /// The transformers class name, as `architectures` lists it.
    pub fn class_name(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Gemma => "GemmaForCausalLM",
            Architecture::Bert => "BertForSequenceClassification",
            Architecture::Roberta => "RobertaForSequenceClassification",
            Architecture::XlmRoberta => "XLMRobertaForSequenceClassification",
            Architecture::ModernBert => "ModernBertForSequenceClassification",
        }
    }

    fn model_type(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "qwen3",
            Architecture::Qwen2 => "qwen2",
            Architecture::Gemma => "gemma",
            Architecture::Bert => "bert",
            Architecture::Roberta => "roberta",
            Architecture::XlmRoberta => "xlm-roberta",
            Architecture::ModernBert => "modernbert",
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
        if known.is_none() && found.iter().any(|a| a == DEBERTA_V2) {
            return Err(ModelError::UnsupportedConfig(format!(
                "{DEBERTA_V2} (mxbai-rerank-base-v1/large-v1): its disentangled attention is not \
                 implemented; serve mxbai-rerank-base-v2 (Qwen2) or an encoder zerank-server runs \
                 ({})",
                Self::supported()
            )));
        }
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
