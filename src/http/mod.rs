//! The HTTP layer: routes, the state they share, authentication, metrics middleware, and
//! the server's life cycle (listen at once, load the models, serve, drain on SIGTERM).

mod body;
mod body_budget;
mod connections;
pub mod error;
mod eviction;
pub mod openapi;
mod routes;
pub mod types;
mod write_deadline;

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

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

use crate::metrics::Metrics;
use crate::service::{Service, ServiceError};
use crate::settings::Settings;
use error::{ApiError, ErrorKind};

pub use connections::ConnectionLimits;

pub struct AppState {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    service: OnceLock<Service>,
    /// KiB of `request_body_memory_bytes`: each request holds its body's bytes until answered.
    body_memory: Arc<tokio::sync::Semaphore>,
    /// SHA-256 of the API key: keys are compared as fixed-size digests, in constant time.
    api_key_digest: Option<[u8; 32]>,
    created: u64,
}

impl AppState {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        AppState {
            api_key_digest: settings.api_key.as_deref().map(digest),
            body_memory: body_budget::budget(settings.request_body_memory_bytes),
            settings,
            metrics,
            service: OnceLock::new(),
            created: routes::unix_now(),
        }
    }

    /// Makes the models available to the routes; `/health` turns 200.
    pub fn set_ready(&self, service: Service) {
        let _ = self.service.set(service);
    }

    fn service(&self) -> Result<&Service, ApiError> {
        match self.service.get() {
            Some(service) if service.is_healthy() => Ok(service),
            Some(_) => Err(ServiceError::Unavailable.into()),
            None => Err(ApiError::NotReady),
        }
    }
}

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
        route(Method::GET, "/openapi.yaml", Guarded, routes::openapi),
        route(Method::GET, "/openapi.json", Guarded, routes::openapi_json),
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
        if !serves(&route) || (route.path == DOCS_PATH && !state.settings.docs_page) {
            continue;
        }
        let guarded = match route.access {
            Access::Guarded => true,
            Access::Probe => state.settings.protect_health_and_metrics,
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
        .layer(DefaultBodyLimit::max(state.settings.payload_limit_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            body_budget::budget_body,
        ))
        .layer(RequestBodyDeadlineLayer::new(Duration::from_secs_f64(
            state.settings.body_read_timeout_secs,
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
    let limit = state.settings.max_header_bytes;
    if head_bytes > limit {
        return ApiError::HeadersTooLarge { limit }.into_response();
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let payload_limit = state.settings.payload_limit_bytes;
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

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
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

/// Connections the admin port holds at once, apart from `max_connections`: enough for every
/// probe and scraper, and no way for a flood of the main port to reach it.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The admin port's header read timeout, at most: a probe or scraper sends its request as
/// soon as it connects, and a socket that holds a place without one is let go soon.
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the service until SIGTERM or SIGINT, then answers what is in flight and returns.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let address = format!("{}:{}", settings.host, settings.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {address}: {err}"))?;
    serve_on(listener, settings, shutdown_signal()).await
}

/// Serves on `listener` until `shutdown` completes, then stops accepting, answers every
/// request in flight and returns. The model loads in the background meanwhile.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admin = match settings.admin_port {
        Some(port) => {
            let address = format!("{}:{port}", settings.admin_host);
            let listener = tokio::net::TcpListener::bind(&address)
                .await
                .map_err(|err| anyhow::anyhow!("cannot listen on {address} (admin_port): {err}"))?;
            tracing::info!(address = %listener.local_addr()?, "admin listener: /health and /metrics");
            Some(listener)
        }
        None => None,
    };
    connections::ensure_open_file_limit(
        settings.max_connections + admin.as_ref().map_or(0, |_| ADMIN_MAX_CONNECTIONS),
    )?;
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(AppState::new(settings.clone(), metrics.clone()));
    tracing::info!(address = %listener.local_addr()?, "listening; /health answers 503 until the model is ready");

    let loading = {
        let (state, settings, metrics) = (state.clone(), settings.clone(), metrics.clone());
        tokio::spawn(async move {
            let (models, settings, metrics) = tokio::task::spawn_blocking(move || {
                Service::load_models(&settings, &metrics).map(|m| (m, settings, metrics))
            })
            .await
            .map_err(|err| anyhow::anyhow!("model loading panicked: {err}"))??;
            state.set_ready(Service::start(models, &settings, metrics));
            anyhow::Ok(())
        })
    };
    let load_failure = async move {
        match loading.await {
            Ok(Ok(())) => std::future::pending().await,
            Ok(Err(err)) => err.context("could not load the models"),
            Err(err) => anyhow::anyhow!("model loading task failed: {err}"),
        }
    };
    let limits = ConnectionLimits::from_settings(&settings);
    let mut listeners = vec![connections::Listener {
        socket: listener,
        app: router(state.clone()),
        max_connections: settings.max_connections,
        header_read_timeout: limits.header_read_timeout,
        evict_idle: false,
    }];
    listeners.extend(admin.map(|socket| connections::Listener {
        socket,
        app: admin_router(state.clone()),
        max_connections: ADMIN_MAX_CONNECTIONS,
        header_read_timeout: limits.header_read_timeout.min(ADMIN_HEADER_READ_TIMEOUT),
        // Every probe must get in: the cap holds only probes and scrapers, each done in
        // milliseconds, so an idle place is one held against them.
        evict_idle: true,
    }));
    let server = connections::serve(listeners, limits, metrics, shutdown);
    tokio::select! {
        served = server => {
            served?;
            tracing::info!("drained; exiting");
            Ok(())
        }
        err = load_failure => Err(err),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal: no new connections; answering requests in flight");
}
