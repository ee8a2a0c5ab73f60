//! Handlers: each parses its body shape, hands a [`ScoreJob`] to the service, and shapes
//! the answer its clients expect.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::body::JsonBody;
use super::error::ApiError;
use super::state::{AppState, unix_now};
use super::types::*;
use crate::service::{Pairs, ScoreJob, Scoring, TruncationDirection};

/// `x-model`, the served model that scored (what every shape can carry, the TEI array and
/// Cohere v2 included); `x-queue-time`, `x-inference-time`, `x-total-time`, in milliseconds.
fn scoring_headers(scoring: &Scoring) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-model", header_text(&scoring.model));
    for (name, time) in [
        ("x-queue-time", scoring.queue_time),
        ("x-inference-time", scoring.inference_time),
        ("x-total-time", scoring.started.elapsed()),
    ] {
        let ms = format!("{}", time.as_millis());
        headers.insert(
            name,
            HeaderValue::from_str(&ms).expect("digits are a valid header"),
        );
    }
    headers
}

/// `text` as a header value: bytes a header cannot hold (a model directory's non-ASCII
/// name) percent-encoded.
fn header_text(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| {
        let encoded: String = text
            .bytes()
            .map(|b| match b {
                b' '..=b'~' if b != b'%' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        HeaderValue::from_str(&encoded).expect("printable ASCII is a valid header")
    })
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

#[utoipa::path(post, path = "/rerank",
    summary = "Rerank documents (Jina/Cohere shape with `documents`, TEI shape with `texts`).",
    request_body = RerankRequest,
    responses((status = 200, description = "Ranked results, best first.", body = RerankAnswer)))]
pub async fn rerank(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Result<Response, ApiError> {
    rerank_as(&state, req, Flavor::Generic).await
}

#[utoipa::path(post, path = "/v1/rerank",
    summary = "Cohere v1 / Jina rerank.",
    request_body = RerankRequest,
    responses((status = 200, description = "Ranked results, best first.", body = RerankResponse)))]
pub async fn rerank_v1(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Result<Response, ApiError> {
    rerank_as(&state, req, Flavor::CohereV1).await
}

#[utoipa::path(post, path = "/v2/rerank",
    summary = "Cohere v2 rerank (no `model` or `usage` in the answer; `x-model` names the model).",
    request_body = RerankRequest,
    responses((status = 200, description = "Ranked results, best first.", body = RerankResponse)))]
pub async fn rerank_v2(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Result<Response, ApiError> {
    rerank_as(&state, req, Flavor::CohereV2).await
}

#[utoipa::path(post, path = "/v1/models/rerank",
    summary = "ZeroEntropy rerank (the `zeroentropy` SDK with base URL `http://host:port/v1`).",
    request_body = RerankRequest,
    responses((status = 200, description = "Ranked results, best first.", body = ZeroEntropyResponse)))]
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
    let service = state.service()?;
    let documents = req.document_texts()?;
    if documents.is_empty() {
        return Err(ApiError::Validation("`documents` must not be empty".into()));
    }
    let tei = flavor == Flavor::Generic && req.documents.is_none();
    let raw = req.raw_scores.unwrap_or(false);
    let scoring = service
        .score(ScoreJob {
            model: req.model,
            pairs: Pairs::OneQuery {
                query: req.query,
                documents,
            },
            instruction: req.instruction,
            max_tokens_per_doc: req.max_tokens_per_doc,
            truncation_direction: req.truncation_direction.unwrap_or_default(),
            refuse_truncation: req.truncate == Some(false),
            long_documents: req.long_documents,
        })
        .await?;
    let _respond = tracing::info_span!("respond").entered();
    let headers = scoring_headers(&scoring);
    let ranked = scoring.ranked(req.top_n.filter(|&n| n > 0));
    let text = |index: usize| scoring.pairs.get(index).1.to_owned();

    if tei {
        let with_text = req.return_text.unwrap_or(false);
        let body: Vec<TeiRank> = ranked
            .iter()
            .map(|r| TeiRank {
                index: r.index,
                score: if raw { r.score.raw } else { r.score.score },
                text: with_text.then(|| text(r.index)),
            })
            .collect();
        return Ok((headers, Json(body)).into_response());
    }

    let with_documents = req.return_documents.unwrap_or(false);
    // Cohere's SDKs and Elasticsearch's parsers know their fields only.
    let chunk = |index: usize| {
        let open_shape = matches!(flavor, Flavor::Generic | Flavor::ZeroEntropy);
        let best = scoring.best_windows.as_ref().filter(|_| open_shape)?;
        Some(ChunkWindow::from(&best[index]))
    };
    let results: Vec<RerankResult> = ranked
        .iter()
        .map(|r| RerankResult {
            index: r.index,
            relevance_score: r.score.score,
            raw_score: raw.then_some(r.score.raw),
            document: with_documents.then(|| DocumentText {
                text: text(r.index),
            }),
            chunk: chunk(r.index),
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
            model: scoring.model,
        };
        return Ok((headers, Json(body)).into_response());
    }
    let v2 = flavor == Flavor::CohereV2;
    let body = RerankResponse {
        results,
        id: uuid::Uuid::new_v4().to_string(),
        model: (!v2).then_some(scoring.model),
        usage: (!v2).then_some(Usage {
            prompt_tokens: scoring.total_tokens,
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

#[utoipa::path(post, path = "/score",
    summary = "vLLM score API: arbitrary pairs, in input order (e.g. near-duplicate detection).",
    request_body = ScoreRequest,
    responses((status = 200, description = "One score per pair, in input order.", body = ScoreResponse)))]
pub async fn score(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ScoreRequest>,
) -> Result<Response, ApiError> {
    let service = state.service()?;
    let pairs = ScoreRequest::pairs(req.text_1, req.text_2)?;
    let scoring = service
        .score(ScoreJob {
            model: req.model,
            pairs: Pairs::Listed(pairs),
            instruction: req.instruction,
            max_tokens_per_doc: req.truncate_prompt_tokens,
            truncation_direction: TruncationDirection::default(),
            refuse_truncation: false,
            long_documents: req.long_documents,
        })
        .await?;
    let _respond = tracing::info_span!("respond").entered();
    let headers = scoring_headers(&scoring);
    let body = ScoreResponse {
        id: format!("score-{}", uuid::Uuid::new_v4().simple()),
        object: "list",
        created: unix_now(),
        data: scoring
            .scores
            .iter()
            .enumerate()
            .map(|(index, s)| ScoreData {
                index,
                object: "score",
                score: s.score,
                chunk: scoring
                    .best_windows
                    .as_ref()
                    .map(|best| ChunkWindow::from(&best[index])),
            })
            .collect(),
        usage: ScoreUsage {
            prompt_tokens: scoring.total_tokens,
            total_tokens: scoring.total_tokens,
        },
        model: scoring.model,
    };
    Ok((headers, Json(body)).into_response())
}

#[utoipa::path(post, path = "/v1/score",
    summary = "Alias of /score.",
    request_body = ScoreRequest,
    responses((status = 200, description = "One score per pair, in input order.", body = ScoreResponse)))]
pub async fn score_v1(
    state: State<Arc<AppState>>,
    body: JsonBody<ScoreRequest>,
) -> Result<Response, ApiError> {
    score(state, body).await
}

#[utoipa::path(get, path = "/health",
    summary = "200 once every model is loaded and warmed up; 503 before, or when a model worker stopped.",
    responses((status = 200, description = "Ready.", body = Health)))]
pub async fn health(State(state): State<Arc<AppState>>) -> Result<Json<Health>, ApiError> {
    state.service()?;
    Ok(Json(Health { status: "ok" }))
}

#[utoipa::path(get, path = "/info",
    summary = "The served models (recipe, scoring tokens, temperature, instruction, device, dtype, speed), limits and version.",
    responses((status = 200, description = "Server information.", body = InfoResponse)))]
pub async fn info(State(state): State<Arc<AppState>>) -> Result<Json<InfoResponse>, ApiError> {
    let service = state.service()?;
    let (scoring, server) = (&state.settings.scoring, &state.settings.server);
    let first = service.models()[0].info();
    let char_limits = service.char_limits();
    let as_json = |info| serde_json::to_value(info).expect("model info serializes");
    Ok(Json(InfoResponse {
        version: env!("CARGO_PKG_VERSION"),
        model: as_json(first),
        served_model_names: service.served_names(),
        models: service
            .models()
            .iter()
            .map(|served| {
                let speed = served.speed();
                ModelEntry {
                    served_model_names: served.names.clone(),
                    model: as_json(served.info()),
                    tokens_per_sec: speed.map(|(rate, _)| rate),
                    typical_request_secs: speed.map(|(_, secs)| secs),
                }
            })
            .collect(),
        limits: serde_json::json!({
            "max_batch_tokens": scoring.max_batch_tokens,
            "max_batch_pairs": scoring.max_batch_pairs,
            "max_concurrent_requests": server.max_concurrent_requests,
            "max_queued_tokens": server.max_queued_tokens,
            "max_documents_per_request": server.max_documents_per_request,
            "max_tokens_per_doc": scoring.max_tokens_per_doc,
            "max_length": first.max_length,
            "payload_limit_bytes": server.payload_limit_bytes,
            "request_timeout_secs": server.request_timeout_secs,
            "query_char_limit": char_limits.query,
            "document_char_limit": char_limits.document,
        }),
    }))
}

#[utoipa::path(get, path = "/v1/models",
    summary = "OpenAI-style list of the served model names.",
    responses((status = 200, description = "Served models.", body = ModelList)))]
pub async fn models(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    let service = state.service()?;
    Ok(Json(ModelList {
        object: "list",
        data: service
            .served_names()
            .into_iter()
            .map(|id| ModelCard {
                id,
                object: "model",
                created: state.created,
                owned_by: "zerank-server",
            })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/metrics",
    summary = "Prometheus metrics (text exposition format).",
    responses((status = 200, description = "Metrics.", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// What the docs page may reach: itself and this server, nothing else.
const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

#[utoipa::path(get, path = "/docs",
    summary = "The API reference (from this document) and a playground to rank documents, one self-contained HTML page. Open to all, as it holds no data; 404 when the server sets `docs_page = false`.",
    security(()),
    responses((status = 200, description = "The page.", body = String, content_type = "text/html")))]
pub async fn docs() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                DOCS_CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("docs.html"),
    )
}
