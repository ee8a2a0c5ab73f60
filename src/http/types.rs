//! Request and response bodies of every route. Unknown request fields are ignored and
//! `null` is accepted wherever a field is optional.

use serde::{Deserialize, Deserializer, Serialize};

use crate::model::TruncationDirection;

use super::error::ApiError;

/// `POST /rerank`, `/v1/rerank`, `/v2/rerank`, `/v1/models/rerank`: the union of the
/// Cohere, Jina, TEI and ZeroEntropy request fields.
#[derive(Debug, Deserialize)]
pub struct RerankRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub query: String,
    /// Strings, or objects with a `text` field (Cohere v1, Jina).
    #[serde(default)]
    pub documents: Option<Vec<serde_json::Value>>,
    /// TEI's name for the documents; selects TEI's response shape on `/rerank`.
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    #[serde(default, deserialize_with = "whole_number")]
    pub top_n: Option<usize>,
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// TEI: return the raw score (see README) instead of the 0-1 score.
    #[serde(default)]
    pub raw_scores: Option<bool>,
    /// TEI: echo each text.
    #[serde(default)]
    pub return_text: Option<bool>,
    /// TEI: shorten over-long inputs (true, the default here) or refuse them (false).
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default, deserialize_with = "direction")]
    pub truncation_direction: Option<TruncationDirection>,
    /// Cohere v2: cut each document to this many tokens.
    #[serde(default, deserialize_with = "positive_whole_number")]
    pub max_tokens_per_doc: Option<usize>,
    /// The task instruction (Sentence Transformers' `prompt`, Qwen3-Reranker's `<Instruct>`);
    /// replaces the model's default. 400 for a model whose prompt has no place for one.
    #[serde(default)]
    pub instruction: Option<String>,
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
            (Some(documents), _) => documents
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

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[derive(Debug, Serialize)]
pub struct DocumentText {
    pub text: String,
}

/// One result of the Cohere / Jina / ZeroEntropy shapes.
#[derive(Debug, Serialize)]
pub struct RerankResult {
    pub index: usize,
    pub relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentText>,
}

/// Jina's and Cohere v1's `usage`; `prompt_tokens` too, as Infinity's client requires it.
#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize)]
pub struct ApiVersion {
    pub version: &'static str,
}

#[derive(Debug, Serialize)]
pub struct BilledUnits {
    pub search_units: u32,
}

#[derive(Debug, Serialize)]
pub struct Meta {
    pub api_version: ApiVersion,
    pub billed_units: BilledUnits,
}

/// `/rerank` with `documents` and `/v1/rerank`: Jina's fields and Cohere v1's together;
/// `/v2/rerank`: Cohere v2's (`model` and `usage` absent).
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
pub struct TeiRank {
    pub index: usize,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `/v1/models/rerank`: ZeroEntropy's response.
#[derive(Debug, Serialize)]
pub struct ZeroEntropyResponse {
    pub results: Vec<RerankResult>,
    pub actual_latency_mode: &'static str,
    /// Seconds from request received to response ready.
    pub e2e_latency: f64,
    /// Seconds of model time.
    pub inference_latency: f64,
    pub total_bytes: usize,
    pub total_tokens: usize,
}

/// `/score`: vLLM's score API.
#[derive(Debug, Deserialize)]
pub struct ScoreRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub text_1: OneOrMany,
    pub text_2: OneOrMany,
    /// Cut each document to this many tokens.
    #[serde(default, deserialize_with = "positive_whole_number")]
    pub truncate_prompt_tokens: Option<usize>,
    /// As on the rerank routes.
    #[serde(default)]
    pub instruction: Option<String>,
}

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Serialize)]
pub struct ScoreData {
    pub index: usize,
    pub object: &'static str,
    pub score: f32,
}

#[derive(Debug, Serialize)]
pub struct ScoreUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize)]
pub struct ScoreResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub data: Vec<ScoreData>,
    pub usage: ScoreUsage,
}

/// `/v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}
