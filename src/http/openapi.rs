//! The OpenAPI document, generated from the request and response types and the handlers'
//! annotations. `openapi.yaml` at the top of the repository is this document, committed; a
//! test fails when they differ (`zerank-server openapi > openapi.yaml` writes it anew).

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::routes;
use super::types::*;

/// The committed document, which `/openapi.yaml` serves.
pub const SPEC: &str = include_str!("../../openapi.yaml");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "zerank-server",
        description = "Rerank search results with causal-LM cross-encoders (zerank-1, zerank-2, Qwen3-Reranker, \
mxbai-rerank-v2, bge-reranker-v2-gemma) and encoder cross-encoders (BERT: ms-marco-MiniLM; XLM-RoBERTa: \
bge-reranker-base/large/v2-m3; ModernBERT: gte-reranker-modernbert-base).\n\n\
Scores are each model's reference's. zerank-1 (recipe `zerank`): score `sigmoid(yes_logit / 5)`, raw \
`yes_logit / 5`, query and document cut to 2,000 and 10,000 characters and stripped. Sentence \
Transformers 6 native checkpoints (zerank-2, Qwen3-Reranker): raw is what `CrossEncoder.predict` \
returns without activation (`logit[true] - logit[false]`, or `logit[true]`), score `sigmoid(raw / T)` \
with the model's `score_temperature` T (5 for a true token only, 1 with a false token). The original \
Qwen3-Reranker recipe: raw `logit(yes) - logit(no)`, score P(yes). bge-reranker-v2-gemma (recipe \
`bge-gemma`): raw the \"Yes\" logit, score its sigmoid. Encoder cross-encoders (recipe \
`cross-encoder`): raw the classifier's logit (what `CrossEncoder.predict` returns without activation), \
score its sigmoid (what TEI returns); pairs over the model's length cut as `predict` cuts them \
(`longest_first`); no instructions. `instruction` reaches models whose \
prompt has a place for one; others answer 400 `instruction_not_accepted`. `model` picks one of the \
served models. Results are sorted by descending score.\n\n\
Request bodies ignore unknown fields and accept `null` for optional ones. Every error has the body \
`ErrorBody`. Scoring routes, `/info`, `/v1/models`, `/openapi.yaml` and `/openapi.json` need the API \
key when the server has one; `/health` and `/metrics` only with `protect_health_and_metrics`; `/docs` \
never.",
        license(name = "Apache-2.0"),
    ),
    servers((url = "http://localhost:8080")),
    paths(
        routes::rerank,
        routes::rerank_v1,
        routes::rerank_v2,
        routes::rerank_zeroentropy,
        routes::score,
        routes::score_v1,
        routes::info,
        routes::models,
        openapi,
        openapi_json,
        routes::docs,
        routes::health,
        routes::metrics,
    ),
    components(schemas(ErrorBody, DocumentInput, OneOrMany)),
    modifiers(&ErrorsAndAuth),
)]
pub struct ApiDoc;

/// The YAML of the document the code describes.
pub fn generate() -> String {
    ApiDoc::openapi()
        .to_yaml()
        .expect("the OpenAPI document serializes")
}

/// The same document in JSON, which `/openapi.json` serves (to the docs page's script).
pub fn json() -> &'static str {
    static JSON: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    });
    &JSON
}

#[utoipa::path(get, path = "/openapi.yaml", tag = "routes",
    summary = "This document.",
    responses((status = 200, description = "The OpenAPI document.", body = Object, content_type = "application/yaml")))]
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], SPEC)
}

#[utoipa::path(get, path = "/openapi.json", tag = "routes",
    summary = "This document, in JSON.",
    responses((status = 200, description = "The OpenAPI document.", body = Object, content_type = "application/json")))]
pub async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

/// What every route shares: the error answers, `Retry-After` on 429 (and on a scoring
/// route's 503), the model and timing
/// headers of scoring answers, and the optional key.
struct ErrorsAndAuth;

/// Statuses a POST scoring route may answer besides 200; GET routes answer 401, 431, 503.
const SCORING_ERRORS: &[&str] = &[
    "400", "401", "404", "408", "413", "415", "422", "429", "431", "500", "503", "504",
];
const READ_ERRORS: &[&str] = &["401", "431", "503"];
/// The docs page: 404 when turned off.
const OPEN_ERRORS: &[&str] = &["404", "431"];

/// The headers of every scoring answer.
const SCORING_HEADERS: &[(&str, &str)] = &[
    (
        "x-request-id",
        "The request's id (the client's, when short and printable).",
    ),
    (
        "x-model",
        "The served model that scored (the one standing in for an unknown name under `--model-name-policy any`).",
    ),
    (
        "x-queue-time",
        "Milliseconds the request's pairs waited for the model.",
    ),
    (
        "x-inference-time",
        "Milliseconds of forward passes that held its pairs.",
    ),
    (
        "x-total-time",
        "Milliseconds from request received to response ready.",
    ),
];

impl Modify for ErrorsAndAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <key>` (the bare key is accepted too). Only when the server sets one.",
                    ))
                    .build(),
            ),
        );
        let error = || {
            ResponseBuilder::new().content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
        };
        components.responses.insert(
            "Error".into(),
            RefOr::T(
                error()
                    .description("An error; `error_type` says which.")
                    .build(),
            ),
        );
        let retry_after = || {
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .build()
        };
        components.responses.insert(
            "TooManyRequests".into(),
            RefOr::T(
                error()
                    .description("Over a limit; retry after the given seconds (the expected wait).")
                    .header("Retry-After", retry_after())
                    .build(),
            ),
        );
        components.responses.insert(
            "Unavailable".into(),
            RefOr::T(
                error()
                    .description("Models still loading or stopped; or the request bodies in flight fill `request_body_memory_bytes` (`body_memory_full`, with `Retry-After`).")
                    .header("Retry-After", retry_after())
                    .build(),
            ),
        );
        for item in openapi.paths.paths.values_mut() {
            // Open to all: a route whose one security requirement is the empty one.
            let open = item.get.as_ref().is_some_and(|operation| {
                operation.security.as_deref() == Some(&[SecurityRequirement::default()][..])
            });
            let read_errors = if open { OPEN_ERRORS } else { READ_ERRORS };
            if let Some(RefOr::T(answer)) = item
                .post
                .as_mut()
                .and_then(|scoring| scoring.responses.responses.get_mut("200"))
            {
                for (name, description) in SCORING_HEADERS {
                    let header = HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::String))
                        .description(Some(*description))
                        .build();
                    answer.headers.insert(name.to_string(), header);
                }
            }
            let operations = [
                (&mut item.post, SCORING_ERRORS, true),
                (&mut item.get, read_errors, false),
            ];
            for (operation, statuses, with_body) in operations {
                let Some(operation) = operation else { continue };
                for status in statuses.iter() {
                    // Only a request with a body can find the body memory full.
                    let name = match *status {
                        "429" => "TooManyRequests",
                        "503" if with_body => "Unavailable",
                        _ => "Error",
                    };
                    operation.responses.responses.insert(
                        status.to_string(),
                        RefOr::Ref(Ref::from_response_name(name)),
                    );
                }
            }
        }
        openapi.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("apiKey", Vec::<String>::new()),
        ]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_document_is_the_generated_one() {
        assert!(
            super::generate() == super::SPEC,
            "openapi.yaml differs from the types and routes: run `cargo run -- openapi > openapi.yaml`"
        );
    }

    #[test]
    fn the_json_document_is_the_yaml_one() {
        let json: serde_json::Value = serde_json::from_str(super::json()).unwrap();
        let yaml: serde_json::Value = serde_norway::from_str(super::SPEC).unwrap();
        assert_eq!(json, yaml);
    }
}
