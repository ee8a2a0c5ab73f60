//! Handlers: each parses its body shape, hands pairs to [`score_pairs`], and shapes the
//! answer its clients expect.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use super::types::*;
use crate::model::{Score, TokenLimits, rank_scores};

/// A JSON body, with every way it can be wrong answered as an [`ApiError`].
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            let value = content_type.to_str().unwrap_or("").to_ascii_lowercase();
            let mime = value.split(';').next().unwrap_or("").trim();
            if mime != "application/json" && !mime.ends_with("+json") {
                return Err(ApiError::UnsupportedMediaType(value));
            }
        }
        let limit = state.settings.payload_limit_bytes;
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::InvalidJson(rejection.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|err| match err.classify() {
                serde_json::error::Category::Data => ApiError::Validation(err.to_string()),
                _ => ApiError::InvalidJson(err.to_string()),
            })
    }
}

/// The pairs of one request.
enum Pairs {
    /// One query against many documents: the query is tokenized per pair but stored once.
    OneQuery {
        query: String,
        documents: Vec<String>,
    },
    Listed(Vec<(String, String)>),
}

impl Pairs {
    fn len(&self) -> usize {
        match self {
            Pairs::OneQuery { documents, .. } => documents.len(),
            Pairs::Listed(pairs) => pairs.len(),
        }
    }

    fn get(&self, i: usize) -> (&str, &str) {
        match self {
            Pairs::OneQuery { query, documents } => (query, &documents[i]),
            Pairs::Listed(pairs) => (&pairs[i].0, &pairs[i].1),
        }
    }

    fn bytes(&self) -> usize {
        (0..self.len())
            .map(|i| {
                let (q, d) = self.get(i);
                q.len() + d.len()
            })
            .sum()
    }
}

struct Scoring {
    pairs: Pairs,
    scores: Vec<Score>,
    total_tokens: usize,
    queue_time: Duration,
    inference_time: Duration,
    started: Instant,
}

impl Scoring {
    /// `x-queue-time`, `x-inference-time`, `x-total-time`, in milliseconds.
    fn timing_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, time) in [
            ("x-queue-time", self.queue_time),
            ("x-inference-time", self.inference_time),
            ("x-total-time", self.started.elapsed()),
        ] {
            let ms = format!("{}", time.as_millis());
            headers.insert(
                name,
                HeaderValue::from_str(&ms).expect("digits are a valid header"),
            );
        }
        headers
    }
}

/// Admission, tokenization off the runtime, the batcher, all under the request timeout.
async fn score_pairs(
    state: &AppState,
    pairs: Pairs,
    limits: TokenLimits,
    refuse_truncation: bool,
) -> Result<Scoring, ApiError> {
    let started = Instant::now();
    let ready = state.ready()?;
    let limit = state.settings.max_documents_per_request;
    if pairs.len() > limit {
        return Err(ApiError::TooManyDocuments {
            count: pairs.len(),
            limit,
        });
    }
    let _admitted = state.admit()?;
    let timeout = Duration::from_secs_f64(state.settings.request_timeout_secs);
    let engine = ready.engine.clone();
    let metrics = state.metrics.clone();
    let work = async move {
        let (pairs, sequences) = tokio::task::spawn_blocking(move || {
            let tokenizing = Instant::now();
            let encoded = (0..pairs.len())
                .map(|i| {
                    let (query, document) = pairs.get(i);
                    engine.encode(query, document, limits)
                })
                .collect::<Result<Vec<_>, _>>();
            metrics
                .tokenization_duration
                .observe(tokenizing.elapsed().as_secs_f64());
            encoded.map(|encoded| (pairs, encoded))
        })
        .await
        .map_err(|err| ApiError::Model(format!("tokenization task failed: {err}")))??;
        if refuse_truncation && let Some(i) = sequences.iter().position(|e| e.over_max_length) {
            return Err(ApiError::InputTooLong(format!(
                "document {i} is over the model's length limit and `truncate` is false"
            )));
        }
        let total_tokens = sequences.iter().map(|e| e.ids.len()).sum();
        let scored = ready
            .batcher
            .score(sequences.into_iter().map(|e| e.ids).collect())
            .await?;
        Ok(Scoring {
            pairs,
            scores: scored.scores,
            total_tokens,
            queue_time: scored.queue_time,
            inference_time: scored.inference_time,
            started,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ApiError::Timeout(timeout.as_secs_f64()))?
}

/// Which rerank API a route speaks.
#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    /// `/rerank`: Jina/Cohere with `documents`, TEI with `texts`.
    Generic,
    CohereV1,
    CohereV2,
    ZeroEntropy,
}

pub async fn rerank(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Result<Response, ApiError> {
    rerank_as(&state, req, Flavor::Generic).await
}

pub async fn rerank_v1(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Result<Response, ApiError> {
    rerank_as(&state, req, Flavor::CohereV1).await
}

pub async fn rerank_v2(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Result<Response, ApiError> {
    rerank_as(&state, req, Flavor::CohereV2).await
}

pub async fn rerank_zeroentropy(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Result<Response, ApiError> {
    rerank_as(&state, req, Flavor::ZeroEntropy).await
}

async fn rerank_as(
    state: &AppState,
    req: RerankRequest,
    flavor: Flavor,
) -> Result<Response, ApiError> {
    let model = state.check_model(req.model.as_deref())?;
    let documents = req.document_texts()?;
    if documents.is_empty() {
        return Err(ApiError::Validation("`documents` must not be empty".into()));
    }
    let tei = flavor == Flavor::Generic && req.documents.is_none();
    let limits = TokenLimits {
        max_document_tokens: req.max_tokens_per_doc.or(state.settings.max_tokens_per_doc),
        direction: req.truncation_direction.unwrap_or_default(),
    };
    let refuse_truncation = req.truncate == Some(false);
    let top_n = req.top_n.filter(|&n| n > 0);
    let pairs = Pairs::OneQuery {
        query: req.query,
        documents,
    };
    let scoring = score_pairs(state, pairs, limits, refuse_truncation).await?;
    let headers = scoring.timing_headers();
    let ranked = rank_scores(&scoring.scores, top_n);
    let Pairs::OneQuery { documents, .. } = &scoring.pairs else {
        unreachable!("rerank scores one query")
    };

    if tei {
        let raw = req.raw_scores.unwrap_or(false);
        let with_text = req.return_text.unwrap_or(false);
        let body: Vec<TeiRank> = ranked
            .iter()
            .map(|r| TeiRank {
                index: r.index,
                score: if raw { r.score.raw } else { r.score.score },
                text: with_text.then(|| documents[r.index].clone()),
            })
            .collect();
        return Ok((headers, Json(body)).into_response());
    }

    let with_documents = req.return_documents.unwrap_or(false);
    let results: Vec<RerankResult> = ranked
        .iter()
        .map(|r| RerankResult {
            index: r.index,
            relevance_score: r.score.score,
            document: with_documents.then(|| DocumentText {
                text: documents[r.index].clone(),
            }),
        })
        .collect();
    if flavor == Flavor::ZeroEntropy {
        let body = ZeroEntropyResponse {
            results,
            actual_latency_mode: "fast",
            e2e_latency: scoring.started.elapsed().as_secs_f64(),
            inference_latency: scoring.inference_time.as_secs_f64(),
            total_bytes: scoring.pairs.bytes(),
            total_tokens: scoring.total_tokens,
        };
        return Ok((headers, Json(body)).into_response());
    }
    let v2 = flavor == Flavor::CohereV2;
    let body = RerankResponse {
        results,
        id: uuid::Uuid::new_v4().to_string(),
        model: (!v2).then_some(model),
        usage: (!v2).then_some(Usage {
            total_tokens: scoring.total_tokens,
        }),
        meta: Meta {
            api_version: ApiVersion {
                version: if v2 { "2" } else { "1" },
            },
            billed_units: BilledUnits { search_units: 1 },
        },
    };
    Ok((headers, Json(body)).into_response())
}

pub async fn score(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ScoreRequest>,
) -> Result<Response, ApiError> {
    let model = state.check_model(req.model.as_deref())?;
    let limits = TokenLimits {
        max_document_tokens: req
            .truncate_prompt_tokens
            .or(state.settings.max_tokens_per_doc),
        ..TokenLimits::default()
    };
    let pairs = Pairs::Listed(req.pairs()?);
    let scoring = score_pairs(&state, pairs, limits, false).await?;
    let body = ScoreResponse {
        id: format!("score-{}", uuid::Uuid::new_v4().simple()),
        object: "list",
        created: unix_now(),
        model,
        data: scoring
            .scores
            .iter()
            .enumerate()
            .map(|(index, s)| ScoreData {
                index,
                object: "score",
                score: s.score,
            })
            .collect(),
        usage: ScoreUsage {
            prompt_tokens: scoring.total_tokens,
            total_tokens: scoring.total_tokens,
        },
    };
    Ok((scoring.timing_headers(), Json(body)).into_response())
}

pub async fn health(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.ready()?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

pub async fn info(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let ready = state.ready()?;
    let s = &state.settings;
    Ok(Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "model": ready.engine.info(),
        "served_model_names": state.served_names,
        "limits": {
            "max_batch_tokens": s.max_batch_tokens,
            "max_batch_pairs": s.max_batch_pairs,
            "max_concurrent_requests": s.max_concurrent_requests,
            "max_queued_tokens": s.max_queued_tokens,
            "max_documents_per_request": s.max_documents_per_request,
            "max_tokens_per_doc": s.max_tokens_per_doc,
            "max_length": ready.engine.info().max_length,
            "payload_limit_bytes": s.payload_limit_bytes,
            "request_timeout_secs": s.request_timeout_secs,
            "query_char_limit": crate::model::QUERY_CHAR_LIMIT,
            "document_char_limit": crate::model::DOCUMENT_CHAR_LIMIT,
        },
    })))
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: state
            .served_names
            .iter()
            .map(|id| ModelCard {
                id: id.clone(),
                object: "model",
                created: state.created,
                owned_by: "zeroentropy",
            })
            .collect(),
    })
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        include_str!("../../openapi.yaml"),
    )
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
