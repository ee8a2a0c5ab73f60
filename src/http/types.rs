//! Request and response bodies of every route. Unknown request fields are ignored and
//! `null` is accepted wherever a field is optional.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::json::json_kind;
use crate::service::{BestWindow, TruncationDirection};
use crate::settings::LongDocuments;

use super::error::ApiError;

/// `POST /rerank`, `/v1/rerank`, `/v2/rerank`, `/v1/models/rerank`: the union of the
/// Cohere, Jina, TEI and ZeroEntropy request fields. Exactly one of `documents` or `texts`
/// is required and must not be empty.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "query": "What is the capital of France?",
    "documents": ["Paris is the capital of France.", "Berlin is the capital of Germany."],
    "top_n": 1,
    "return_documents": true
}))]
pub struct RerankRequest {
    /// A served model name; absent means the first model. An unknown name gets 404, or is
    /// served by the first model when the server sets `model_name_policy = "any"`.
    #[serde(default)]
    pub model: Option<String>,
    pub query: String,
    /// Strings, or objects with a `text` field (Cohere v1, Jina).
    #[serde(default)]
    #[schema(value_type = Option<Vec<DocumentInput>>)]
    pub documents: Option<Vec<serde_json::Value>>,
    /// TEI's name for the documents; on `/rerank` it selects TEI's response shape.
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    /// Absent, null or 0: all results.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 0)]
    pub top_n: Option<usize>,
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// The raw score (see README): TEI's shape (`texts`) returns it instead of the 0-1
    /// score; the other shapes add it to each result as `raw_score`.
    #[serde(default)]
    pub raw_scores: Option<bool>,
    /// TEI: echo each text.
    #[serde(default)]
    pub return_text: Option<bool>,
    /// TEI: shorten over-long inputs (true, the default here) or refuse them (false).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// `right` keeps the beginning of an over-long document, `left` its end.
    #[serde(default, deserialize_with = "direction")]
    #[schema(value_type = Option<String>)]
    pub truncation_direction: Option<TruncationDirection>,
    /// Cohere v2: cut each document to this many tokens.
    #[serde(default, deserialize_with = "positive_whole_number")]
    #[schema(minimum = 1)]
    pub max_tokens_per_doc: Option<usize>,
    /// The task instruction (Sentence Transformers' `prompt`, Qwen3-Reranker's `<Instruct>`);
    /// replaces the model's default. 400 for a model whose prompt has no place for one.
    #[serde(default)]
    pub instruction: Option<String>,
    /// A document longer than the model's prompt has room for: `truncate` cuts it, `chunk`
    /// scores windows of it and takes the best [default: the server's `long_documents`].
    #[serde(default)]
    pub long_documents: Option<LongDocuments>,
}

/// A non-negative integer, also when written `3.0` (as JSON Schema's `integer` allows).
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_u64() {
        return usize::try_from(n)
            .map(Some)
            .map_err(serde::de::Error::custom);
    }
    match number.as_f64() {
        // `as` saturates: a number past usize::MAX means "no limit" anyway.
        Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as usize)),
        _ => Err(serde::de::Error::custom(format!(
            "expected a non-negative integer, got {number}"
        ))),
    }
}

fn positive_whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match whole_number(d)? {
        Some(0) => Err(serde::de::Error::custom(
            "expected an integer of at least 1, got 0",
        )),
        n => Ok(n),
    }
}

fn direction<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TruncationDirection>, D::Error> {
    let value: Option<String> = Option::deserialize(d)?;
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(None),
        Some("right") => Ok(Some(TruncationDirection::Right)),
        Some("left") => Ok(Some(TruncationDirection::Left)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "truncation_direction must be `left` or `right`, got `{other}`"
        ))),
    }
}

impl RerankRequest {
    /// The document texts, from `documents` (strings or `{"text"}` objects) or `texts`.
    pub fn document_texts(&self) -> Result<Vec<String>, ApiError> {
        match (&self.documents, &self.texts) {
            // Two names for one field: taking either would silently drop the other.
            (Some(_), Some(_)) => Err(ApiError::Validation(
                "the body has both `documents` and `texts`, two names for the same field: send one"
                    .into(),
            )),
            (Some(documents), None) => documents
                .iter()
                .enumerate()
                .map(|(i, doc)| match doc {
                    serde_json::Value::String(text) => Ok(text.clone()),
                    serde_json::Value::Object(fields) => match fields.get("text") {
                        Some(serde_json::Value::String(text)) => Ok(text.clone()),
                        _ => Err(ApiError::Validation(format!(
                            "documents[{i}] is an object without a string `text` field"
                        ))),
                    },
                    other => Err(ApiError::Validation(format!(
                        "documents[{i}] must be a string or an object with `text`, got {}",
                        json_kind(other)
                    ))),
                })
                .collect(),
            (None, Some(texts)) => Ok(texts.clone()),
            (None, None) => Err(ApiError::Validation(
                "missing field `documents` (or `texts`)".into(),
            )),
        }
    }
}

/// A document: a string, or an object with a `text` field (other fields are ignored).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Describes what `documents` accepts; parsing reads it as JSON values.
pub enum DocumentInput {
    Text(String),
    Object(DocumentText),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentText {
    pub text: String,
}

/// One result of the Cohere / Jina / ZeroEntropy shapes.
#[derive(Debug, Serialize, ToSchema)]
pub struct RerankResult {
    pub index: usize,
    pub relevance_score: f32,
    /// With `raw_scores: true`: the model's raw score (see README).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentText>,
    /// With `long_documents: "chunk"`, the window that gave the score (`/rerank` with
    /// `documents` and `/v1/models/rerank`; Cohere's routes keep their own shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkWindow>,
}

/// The window of a long document that scored best.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkWindow {
    /// The window's position among the document's windows, from 0.
    pub index: usize,
    /// How many windows the document made (1: it fitted whole).
    pub count: usize,
    /// Where the window starts in the document, in characters (Unicode code points).
    pub start: usize,
    /// Where it ends (exclusive), in characters.
    pub end: usize,
}

impl From<&BestWindow> for ChunkWindow {
    fn from(best: &BestWindow) -> Self {
        ChunkWindow {
            index: best.index,
            count: best.windows,
            start: best.chars.start,
            end: best.chars.end,
        }
    }
}

/// Jina's and Cohere v1's `usage`; `prompt_tokens` too, as Infinity's client requires it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiVersion {
    pub version: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BilledUnits {
    pub search_units: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Meta {
    pub api_version: ApiVersion,
    pub billed_units: BilledUnits,
}

/// `/rerank` with `documents` and `/v1/rerank`: Jina's fields and Cohere v1's together;
/// `/v2/rerank`: Cohere v2's (`model` and `usage` absent).
#[derive(Debug, Serialize, ToSchema)]
pub struct RerankResponse {
    pub results: Vec<RerankResult>,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub meta: Meta,
}

/// `/rerank` with `texts`: TEI's bare array.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiRank {
    pub index: usize,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `/v1/models/rerank`: ZeroEntropy's response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ZeroEntropyResponse {
    pub results: Vec<RerankResult>,
    pub actual_latency_mode: &'static str,
    /// Seconds from request received to response ready.
    pub e2e_latency: f64,
    /// Seconds of model time.
    pub inference_latency: f64,
    pub total_bytes: usize,
    pub total_tokens: usize,
    /// The served model that scored (beyond ZeroEntropy's API, like `chunk`).
    pub model: String,
}

/// `/score`: vLLM's score API.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "text_1": "What is the capital of France?",
    "text_2": ["Paris.", "Berlin."]
}))]
pub struct ScoreRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// One text_1 for every text_2, every text_1 for one text_2, or equally many
    /// (element-wise).
    pub text_1: OneOrMany,
    pub text_2: OneOrMany,
    /// Cut each text_2 to this many tokens.
    #[serde(default, deserialize_with = "positive_whole_number")]
    #[schema(minimum = 1)]
    pub truncate_prompt_tokens: Option<usize>,
    /// As on the rerank routes.
    #[serde(default)]
    pub instruction: Option<String>,
    /// A document longer than the model's prompt has room for: `truncate` cuts it, `chunk`
    /// scores windows of it and takes the best [default: the server's `long_documents`].
    #[serde(default)]
    pub long_documents: Option<LongDocuments>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

impl ScoreRequest {
    /// (query, document) pairs: one `text_1` against every `text_2` (or every `text_1`
    /// against one `text_2`), or element-wise.
    pub fn pairs(text_1: OneOrMany, text_2: OneOrMany) -> Result<Vec<(String, String)>, ApiError> {
        let (queries, documents) = (text_1.into_vec(), text_2.into_vec());
        match (queries.len(), documents.len()) {
            (0, _) | (_, 0) => Err(ApiError::Validation(
                "text_1 and text_2 must not be empty".into(),
            )),
            (1, _) => {
                let query = &queries[0];
                Ok(documents.into_iter().map(|d| (query.clone(), d)).collect())
            }
            (_, 1) => {
                let document = &documents[0];
                Ok(queries.into_iter().map(|q| (q, document.clone())).collect())
            }
            (n, m) if n == m => Ok(queries.into_iter().zip(documents).collect()),
            (n, m) => Err(ApiError::Validation(format!(
                "text_1 has {n} texts and text_2 {m}: give one of either, or as many of both"
            ))),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreData {
    pub index: usize,
    pub object: &'static str,
    pub score: f32,
    /// With `long_documents: "chunk"`, the window of `text_2` that gave the score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkWindow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub data: Vec<ScoreData>,
    pub usage: ScoreUsage,
}

/// `/rerank`'s answer: Jina/Cohere's object, or TEI's bare array when the request sent `texts`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Describes the two shapes; the handler builds each directly.
pub enum RerankAnswer {
    Ranked(RerankResponse),
    Tei(Vec<TeiRank>),
}

/// `/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `/info`: the server, its models and limits.
#[derive(Debug, Serialize, ToSchema)]
pub struct InfoResponse {
    pub version: &'static str,
    /// The first model, where clients of one model look.
    #[schema(value_type = Object)]
    pub model: serde_json::Value,
    /// Every served name of every model.
    pub served_model_names: Vec<String>,
    pub models: Vec<ModelEntry>,
    #[schema(value_type = Object)]
    pub limits: serde_json::Value,
}

/// One served model in `/info`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    pub served_model_names: Vec<String>,
    /// Architecture, recipe, scoring tokens, calibration, instruction, device, dtype and
    /// `dtype_choice` (why that dtype: as set, or what `auto` found), matmul, and on the CPU
    /// `cpu`: its model and the instructions its matmuls can use (AVX2, AVX-512, bf16).
    #[schema(value_type = Object)]
    pub model: serde_json::Value,
    /// The rate admission plans with (also `zerank_estimated_tokens_per_second`): units of
    /// work per second, measured at warm-up, then on real batches (see README, Admission).
    pub tokens_per_sec: Option<f64>,
    /// Time for 100 documents of 400 tokens at that rate.
    pub typical_request_secs: Option<f64>,
}

/// `/v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}
