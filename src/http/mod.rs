//! The HTTP layer: the route table, authentication, the metrics and request-head middleware,
//! and connections with their limits. The server's life cycle (listen, load the models, serve,
//! drain on SIGTERM) is `crate::server`'s.

mod body;
mod body_budget;
mod connections;
pub mod error;
mod eviction;
pub mod openapi;
mod routes;
mod state;
pub mod types;
mod write_deadline;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::http::{HeaderName, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use subtle::ConstantTimeEq;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyDeadlineLayer;
use tower_http::trace::TraceLayer;

use error::{ApiError, ErrorKind};
use state::digest;

use crate::metrics::Metrics;

pub use connections::{
    ConnectionLimits, Listener, ensure_open_file_limit, serve as serve_connections,
};
pub use state::AppState;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Needs the API key when the server has one.
    Guarded,
    /// Health and metrics: open unless `protect_health_and_metrics`.
    Probe,
    /// Anyone, always: the docs page, which holds no data (the calls it makes carry the key).
    Open,
}

/// One route: its method and path, who may call it, and its handler.
struct Route {
    method: Method,
    path: &'static str,
    access: Access,
    handler: MethodRouter<Arc<AppState>>,
}

fn route<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Route
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("GET and POST are filters");
    Route {
        method,
        path,
        access,
        handler: on(filter, handler),
    }
}

/// Where the API reference and playground page is served, unless `docs_page` is false.
const DOCS_PATH: &str = "/docs";

/// Every route the server serves (`/docs` only with `docs_page`).
fn route_table() -> Vec<Route> {
    use Access::{Guarded, Open, Probe};
    vec![
        route(Method::POST, "/rerank", Guarded, routes::rerank),
        route(Method::POST, "/v1/rerank", Guarded, routes::rerank_v1),
        route(Method::POST, "/v2/rerank", Guarded, routes::rerank_v2),
        route(
            Method::POST,
            "/v1/models/rerank",
            Guarded,
            routes::rerank_zeroentropy,
        ),
        route(Method::POST, "/score", Guarded, routes::score),
        route(Method::POST, "/v1/score", Guarded, routes::score_v1),
        route(Method::GET, "/info", Guarded, routes::info),
        route(Method::GET, "/v1/models", Guarded, routes::models),
        route(Method::GET, "/openapi.yaml", Guarded, openapi::openapi),
        route(Method::GET, "/openapi.json", Guarded, openapi::openapi_json),
        route(Method::GET, DOCS_PATH, Open, routes::docs),
        route(Method::GET, "/health", Probe, routes::health),
        route(Method::GET, "/metrics", Probe, routes::metrics),
    ]
}

/// The method, path and access of every route the router serves (with `docs_page`).
pub fn served_routes() -> Vec<(Method, &'static str, Access)> {
    route_table()
        .into_iter()
        .map(|r| (r.method, r.path, r.access))
        .collect()
}

/// Every route, for the main port.
pub fn router(state: Arc<AppState>) -> Router {
    router_of(state, |_| true)
}

/// `/health` and `/metrics` alone, for the admin port.
pub fn admin_router(state: Arc<AppState>) -> Router {
    router_of(state, |route| route.access == Access::Probe)
}

fn router_of(state: Arc<AppState>, serves: impl Fn(&Route) -> bool) -> Router {
    let mut routes = Router::new();
    for route in route_table() {
        if !serves(&route) || (route.path == DOCS_PATH && !state.settings.server.docs_page) {
            continue;
        }
        let guarded = match route.access {
            Access::Guarded => true,
            Access::Probe => state.settings.server.protect_health_and_metrics,
            Access::Open => false,
        };
        let handler = if guarded {
            route.handler.route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_api_key,
            ))
        } else {
            route.handler
        };
        routes = routes.route(route.path, handler);
    }
    let request_id = HeaderName::from_static("x-request-id");
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(
            state.settings.server.payload_limit_bytes,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            body_budget::budget_body,
        ))
        .layer(RequestBodyDeadlineLayer::new(Duration::from_secs_f64(
            state.settings.server.body_read_timeout_secs,
        )))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("the request handler panicked".into()).into_response()
        }))
        .layer(middleware::from_fn_with_state(state.clone(), check_head))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        // Failures are logged where they are made into responses, at their own level.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(|response: &Response, _: Duration, span: &tracing::Span| {
                    crate::telemetry::record_status(span, response.status().as_u16())
                })
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(middleware::from_fn(drop_unusable_request_id))
        .with_state(state)
}

/// The span of one request, named after its route (a path no route serves is not a name, so
/// that names stay few).
fn request_span(request: &Request) -> tracing::Span {
    let (method, path) = (request.method(), request.uri().path());
    static ROUTES: LazyLock<Vec<(Method, &'static str, Access)>> = LazyLock::new(served_routes);
    let name = match ROUTES.iter().any(|(m, p, _)| m == method && *p == path) {
        true => format!("{method} {path}"),
        false => method.to_string(),
    };
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    crate::telemetry::request_span(&name, method.as_str(), path, request_id, request.headers())
}

/// What is wrong with a request before its body is read: a head over `max_header_bytes`
/// (431), a declared body over the payload limit (413 at once, not after reading it), or a
/// content encoding the server does not decode (415).
async fn check_head(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let head_bytes: usize = request.uri().to_string().len()
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    let limit = state.settings.server.max_header_bytes;
    if head_bytes > limit {
        return ApiError::HeadersTooLarge { limit }.into_response();
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let payload_limit = state.settings.server.payload_limit_bytes;
    if declared.is_some_and(|n| n > payload_limit as u64) {
        return ApiError::PayloadTooLarge {
            limit: payload_limit,
        }
        .into_response();
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes())
            .trim()
            .to_ascii_lowercase();
        if encoding != "identity" && !encoding.is_empty() {
            return ApiError::UnsupportedEncoding(encoding).into_response();
        }
    }
    next.run(request).await
}

/// The longest client `x-request-id` echoed back.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A client's `x-request-id` is echoed only when it is short and printable ASCII; otherwise
/// the server makes its own.
async fn drop_unusable_request_id(mut request: Request, next: Next) -> Response {
    let usable = |value: &axum::http::HeaderValue| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(|b| b.is_ascii_graphic())
    };
    if request
        .headers()
        .get_all("x-request-id")
        .iter()
        .enumerate()
        .any(|(i, value)| i > 0 || !usable(value))
    {
        request.headers_mut().remove("x-request-id");
    }
    next.run(request).await
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

/// `Authorization: Bearer <key>` (the scheme in any case, RFC 7235) or the bare key; the
/// digests of given and expected keys are compared in constant time.
async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.api_key_digest {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(presented_key)
            .unwrap_or("");
        if given.is_empty() || !bool::from(digest(given).ct_eq(expected)) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// The key in an `Authorization` value: after a `Bearer` scheme, or the whole value.
fn presented_key(value: &str) -> &str {
    let value = value.trim();
    match value.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
        _ => value,
    }
}

async fn record_metrics(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let mut unanswered = Unanswered {
        metrics: &state.metrics,
        route: &route,
        answered: false,
    };
    let response = next.run(request).await;
    unanswered.answered = true;
    let metrics = &state.metrics;
    metrics
        .request_duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    if let Some(ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
        metrics.errors.with_label_values(&[kind]).inc();
    }
    response
}

/// A request dropped before it was answered: its client went away (an HTTP/1 connection
/// closed, an HTTP/2 stream reset) while its body was read or it was scored. Counted as a
/// 499, as an abort the server sees while reading the body and answers.
struct Unanswered<'a> {
    metrics: &'a Metrics,
    route: &'a str,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let disconnected = ApiError::ClientDisconnected;
            let status = disconnected.status();
            self.metrics
                .requests
                .with_label_values(&[self.route, status.as_str()])
                .inc();
            self.metrics
                .errors
                .with_label_values(&[disconnected.kind()])
                .inc();
        }
    }
}
