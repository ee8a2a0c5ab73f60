//! Which scoring recipe a checkpoint follows, and what its files say about it.
//!
//! - zerank-1 (the legacy recipe): the model's chat template with the query as the system
//!   turn and the document as the user turn, the reference's character cuts, the "Yes" logit.
//! - Sentence Transformers 6's native layout (zerank-2, Qwen3-Reranker with ST files):
//!   `modules.json` with a LogitScore module, a score template taking `query`/`document`
//!   messages, `logit[true] - logit[false]` (or `logit[true]`).
//! - The original Qwen3-Reranker: a plain causal LM run with its published prompt and
//!   yes/no log-odds. Its files cannot be told from zerank-1's, so it is chosen explicitly.
//! - bge-reranker-v2-gemma: FlagEmbedding's decoder-only reranker prompt and the raw "Yes"
//!   logit; the recipe of a Gemma checkpoint without Sentence Transformers files.
//! - mxbai-rerank-v2's own library prompt and logit("1") - logit("0"), chosen explicitly (its
//!   Hub checkpoints carry Sentence Transformers' files, which `auto` prefers).

use serde::Deserialize;
use serde_with::{DeserializeFromStr, SerializeDisplay};

use super::architecture::Architecture;
use super::files::{CheckpointFiles, read_json};
use super::template::{
    BGE_GEMMA_DEFAULT_INSTRUCTION, Layout, Messages, QWEN3_RERANKER_DEFAULT_INSTRUCTION,
};
use crate::choice::{Word, Words, spelled_as_words};
use crate::model::error::{ModelError, Result};

/// The `recipe` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, DeserializeFromStr, SerializeDisplay)]
pub enum RecipeChoice {
    /// Sentence Transformers' native layout when the checkpoint has it, else bge-gemma for
    /// a Gemma, zerank-1 otherwise.
    #[default]
    Auto,
    Zerank,
    SentenceTransformers,
    Qwen3Reranker,
    BgeGemma,
    MxbaiRerank,
}

impl Words for RecipeChoice {
    const WORDS: &'static [Word<Self>] = &[
        Word {
            value: RecipeChoice::Auto,
            name: "auto",
            aliases: &[],
            help: Some(
                "Sentence Transformers' native layout when the checkpoint has it, else bge-gemma for a Gemma, zerank-1 otherwise",
            ),
        },
        Word {
            value: RecipeChoice::Zerank,
            name: "zerank",
            aliases: &["zerank-1", "zerank_1"],
            help: None,
        },
        Word {
            value: RecipeChoice::SentenceTransformers,
            name: "sentence-transformers",
            aliases: &["sentence_transformers", "st"],
            help: None,
        },
        Word {
            value: RecipeChoice::Qwen3Reranker,
            name: "qwen3-reranker",
            aliases: &["qwen3_reranker"],
            help: None,
        },
        Word {
            value: RecipeChoice::BgeGemma,
            name: "bge-gemma",
            aliases: &["bge_gemma"],
            help: None,
        },
        Word {
            value: RecipeChoice::MxbaiRerank,
            name: "mxbai-rerank",
            aliases: &["mxbai_rerank"],
            help: None,
        },
    ];
}

spelled_as_words!(RecipeChoice, "recipe");

/// The recipe a loaded checkpoint is scored with.
#[derive(Debug, Clone, PartialEq)]
pub enum Recipe {
    Zerank,
    SentenceTransformers(NativeConfig),
    Qwen3Reranker,
    BgeGemma,
    MxbaiRerank,
}

/// What Sentence Transformers' files say about a causal-LM reranker.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeConfig {
    pub true_token_id: u32,
    pub false_token_id: Option<u32>,
    /// `activation_fn` of `config_sentence_transformers.json` (what `predict` applies).
    pub activation: String,
    /// `prompts[default_prompt_name]`: the instruction `predict` uses when given none.
    pub default_prompt: Option<String>,
    /// Variables the score template is rendered with (`processing_kwargs.chat_template`).
    pub template_kwargs: serde_json::Map<String, serde_json::Value>,
    /// Message contents as `[{"type": "text", "text": ...}]` rather than strings.
    pub structured_messages: bool,
    pub max_seq_length: Option<usize>,
}

/// The published Qwen3-Reranker recipe's prompt length.
const QWEN3_RERANKER_MAX_LENGTH: usize = 8_192;
/// mxbai-rerank's `max_length` (of query and document; the server counts the whole prompt).
const MXBAI_RERANK_MAX_LENGTH: usize = 8_192;

/// What user text goes through before it is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRule {
    /// zerank-1: `text[:limit].strip()`.
    ReferenceCuts,
    /// Every other recipe: the text as given.
    Verbatim,
}

/// The zerank convention for a lone "Yes" logit (zerank-1's recipe, zerank-2's card).
pub const ZERANK_TEMPERATURE: f32 = 5.0;

/// How a logit margin becomes the published numbers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Calibration {
    /// `raw = margin / raw_divisor`: 5 for zerank-1's published raw score, 1 otherwise.
    pub raw_divisor: f32,
    /// `score = sigmoid(margin / temperature)`.
    pub temperature: f32,
}

impl Recipe {
    pub fn resolve(
        choice: RecipeChoice,
        files: &CheckpointFiles,
        architecture: Architecture,
    ) -> Result<Recipe> {
        let native = || NativeConfig::read(files);
        match choice {
            RecipeChoice::Auto if files.logit_score_config.is_some() => {
                Ok(Recipe::SentenceTransformers(native()?))
            }
            // The Gemma reranker people use is bge-reranker-v2-gemma, in FlagEmbedding's layout.
            RecipeChoice::Auto if architecture == Architecture::Gemma => Ok(Recipe::BgeGemma),
            RecipeChoice::Auto | RecipeChoice::Zerank => Ok(Recipe::Zerank),
            RecipeChoice::SentenceTransformers if files.logit_score_config.is_some() => {
                Ok(Recipe::SentenceTransformers(native()?))
            }
            RecipeChoice::SentenceTransformers => Err(ModelError::UnsupportedConfig(
                "recipe `sentence-transformers` needs modules.json with a LogitScore module".into(),
            )),
            RecipeChoice::Qwen3Reranker => Ok(Recipe::Qwen3Reranker),
            RecipeChoice::BgeGemma => Ok(Recipe::BgeGemma),
            RecipeChoice::MxbaiRerank => Ok(Recipe::MxbaiRerank),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Recipe::Zerank => "zerank",
            Recipe::SentenceTransformers(_) => "sentence-transformers",
            Recipe::Qwen3Reranker => "qwen3-reranker",
            Recipe::BgeGemma => "bge-gemma",
            Recipe::MxbaiRerank => "mxbai-rerank",
        }
    }

    /// The instruction used when a request brings none.
    pub fn default_instruction(&self) -> Option<&str> {
        match self {
            Recipe::Zerank => None,
            Recipe::SentenceTransformers(native) => native.default_prompt.as_deref(),
            Recipe::Qwen3Reranker => Some(QWEN3_RERANKER_DEFAULT_INSTRUCTION),
            Recipe::BgeGemma => Some(BGE_GEMMA_DEFAULT_INSTRUCTION),
            Recipe::MxbaiRerank => None,
        }
    }

    /// The recipe's own cap on the prompt's length, if it has one.
    pub fn max_length(&self) -> Option<usize> {
        match self {
            Recipe::SentenceTransformers(native) => native.max_seq_length,
            Recipe::Qwen3Reranker => Some(QWEN3_RERANKER_MAX_LENGTH),
            Recipe::MxbaiRerank => Some(MXBAI_RERANK_MAX_LENGTH),
            Recipe::Zerank | Recipe::BgeGemma => None,
        }
    }

    pub fn text_rule(&self) -> TextRule {
        match self {
            Recipe::Zerank => TextRule::ReferenceCuts,
            _ => TextRule::Verbatim,
        }
    }

    /// For a recipe that renders the checkpoint's chat template: how a pair becomes its
    /// messages, and the extra variables the template is rendered with.
    pub fn chat_messages(&self) -> (Messages, serde_json::Map<String, serde_json::Value>) {
        match self {
            Recipe::SentenceTransformers(native) => (
                Messages::QueryDocument {
                    structured: native.structured_messages,
                },
                native.template_kwargs.clone(),
            ),
            _ => (Messages::SystemQueryUserDocument, Default::default()),
        }
    }

    /// The head tokens the recipe scores with, true then false when it has one; `vocab`
    /// looks up a token's id by its text.
    pub fn head_token_ids(&self, vocab: impl Fn(&str) -> Result<u32>) -> Result<Vec<u32>> {
        let by_text = |texts: &[&str]| texts.iter().map(|text| vocab(text)).collect();
        match self {
            Recipe::Zerank | Recipe::BgeGemma => by_text(&["Yes"]),
            Recipe::Qwen3Reranker => by_text(&["yes", "no"]),
            Recipe::MxbaiRerank => by_text(&["1", "0"]),
            Recipe::SentenceTransformers(native) => Ok(std::iter::once(native.true_token_id)
                .chain(native.false_token_id)
                .collect()),
        }
    }

    /// The prompts of a recipe with a fixed one (no chat template), without and with an
    /// instruction; `bos`: the tokenizer's BOS, for a recipe that puts one first.
    pub fn fixed_layouts(&self, bos: Option<&str>) -> Option<(Layout, Layout)> {
        match self {
            Recipe::Zerank | Recipe::SentenceTransformers(_) => None,
            // The instruction has a default: one layout for both.
            Recipe::Qwen3Reranker => Some((Layout::qwen3_reranker(), Layout::qwen3_reranker())),
            Recipe::BgeGemma => Some((Layout::bge_gemma(bos), Layout::bge_gemma(bos))),
            Recipe::MxbaiRerank => Some((Layout::mxbai_rerank(false), Layout::mxbai_rerank(true))),
        }
    }

    /// `score_temperature` when the settings give none: 5 for a lone "Yes" logit, 1 for
    /// yes/no log-odds (Qwen3-Reranker's P(yes), mxbai-rerank's "1" against "0") and for
    /// bge-gemma (FlagEmbedding's `normalize=True`: sigmoid of the raw logit).
    pub fn calibration(&self, temperature: Option<f32>) -> Calibration {
        let (raw_divisor, default) = match self {
            Recipe::Zerank => (ZERANK_TEMPERATURE, ZERANK_TEMPERATURE),
            Recipe::SentenceTransformers(n) if n.false_token_id.is_none() => {
                (1.0, ZERANK_TEMPERATURE)
            }
            Recipe::SentenceTransformers(_)
            | Recipe::Qwen3Reranker
            | Recipe::BgeGemma
            | Recipe::MxbaiRerank => (1.0, 1.0),
        };
        Calibration {
            raw_divisor,
            temperature: temperature.unwrap_or(default),
        }
    }
}

#[derive(Deserialize)]
struct LogitScoreConfig {
    true_token_id: u32,
    #[serde(default)]
    false_token_id: Option<u32>,
}

#[derive(Deserialize, Default)]
struct SentenceBertConfig {
    #[serde(default)]
    transformer_task: Option<String>,
    #[serde(default)]
    modality_config: serde_json::Value,
    #[serde(default)]
    processing_kwargs: serde_json::Value,
    #[serde(default)]
    max_seq_length: Option<usize>,
}

#[derive(Deserialize, Default)]
struct StModelConfig {
    #[serde(default)]
    activation_fn: Option<String>,
    #[serde(default)]
    prompts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    default_prompt_name: Option<String>,
}

/// Keyword arguments of `apply_chat_template` that size or format the tokenization, and
/// Sentence Transformers' own flag: none of them reach the template.
const NOT_TEMPLATE_VARIABLES: &[&str] = &[
    "padding",
    "truncation",
    "max_length",
    "return_tensors",
    "restore_suffix",
];

impl NativeConfig {
    fn read(files: &CheckpointFiles) -> Result<NativeConfig> {
        let logit_score: LogitScoreConfig = read_json(
            files
                .logit_score_config
                .as_deref()
                .expect("native checkpoints have a LogitScore config"),
        )?;
        let sbert: SentenceBertConfig = match &files.sentence_bert_config {
            Some(path) => read_json(path)?,
            None => SentenceBertConfig::default(),
        };
        if let Some(task) = sbert.transformer_task.as_deref()
            && task != "text-generation"
        {
            return Err(ModelError::UnsupportedConfig(format!(
                "sentence_bert_config.json has transformer_task `{task}`; a LogitScore reranker needs `text-generation`"
            )));
        }
        let st: StModelConfig = match &files.config_sentence_transformers {
            Some(path) => read_json(path)?,
            None => StModelConfig::default(),
        };
        let default_prompt = match &st.default_prompt_name {
            None => None,
            Some(name) => Some(st.prompts.get(name).cloned().ok_or_else(|| {
                ModelError::UnsupportedConfig(format!(
                    "config_sentence_transformers.json names default prompt `{name}`, which is not among its prompts {:?}",
                    st.prompts.keys().collect::<Vec<_>>()
                ))
            })?),
        };
        let mut template_kwargs = sbert
            .processing_kwargs
            .get("chat_template")
            .and_then(|v| v.as_object())
            .cloned()
            .unwrap_or_default();
        template_kwargs.retain(|key, _| !NOT_TEMPLATE_VARIABLES.contains(&key.as_str()));
        let structured_messages = sbert
            .modality_config
            .pointer("/message/format")
            .and_then(|v| v.as_str())
            == Some("structured");
        Ok(NativeConfig {
            true_token_id: logit_score.true_token_id,
            false_token_id: logit_score.false_token_id,
            activation: st
                .activation_fn
                .unwrap_or_else(|| "torch.nn.modules.activation.Sigmoid".into()),
            default_prompt,
            template_kwargs,
            structured_messages,
            max_seq_length: sbert.max_seq_length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_names() {
        assert_eq!("auto".parse(), Ok(RecipeChoice::Auto));
        assert_eq!("Qwen3_Reranker".parse(), Ok(RecipeChoice::Qwen3Reranker));
        assert_eq!("zerank".parse(), Ok(RecipeChoice::Zerank));
        assert_eq!("bge_gemma".parse(), Ok(RecipeChoice::BgeGemma));
        assert!("bge".parse::<RecipeChoice>().is_err());
    }

    #[test]
    fn temperatures_follow_the_head() {
        assert_eq!(
            Recipe::Zerank.calibration(None),
            Calibration {
                raw_divisor: 5.0,
                temperature: 5.0
            }
        );
        assert_eq!(Recipe::Qwen3Reranker.calibration(None).temperature, 1.0);
        assert_eq!(
            Recipe::Qwen3Reranker.calibration(Some(2.0)).temperature,
            2.0
        );
    }
}
