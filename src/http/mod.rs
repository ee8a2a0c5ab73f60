//! The HTTP layer: routes, the state they share, authentication, metrics middleware, and
//! the server's life cycle (listen at once, load the models, serve, drain on SIGTERM).

pub mod error;
mod routes;
pub mod types;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::metrics::Metrics;
use crate::service::Service;
use crate::settings::Settings;
use error::{ApiError, ErrorKind};

pub struct AppState {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    service: OnceLock<Service>,
    created: u64,
}

impl AppState {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        AppState {
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
            Some(_) => Err(ApiError::Unavailable),
            None => Err(ApiError::NotReady),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let scoring = Router::new()
        .route("/rerank", post(routes::rerank))
        .route("/v1/rerank", post(routes::rerank_v1))
        .route("/v2/rerank", post(routes::rerank_v2))
        .route("/v1/models/rerank", post(routes::rerank_zeroentropy))
        .route("/score", post(routes::score))
        .route("/v1/score", post(routes::score))
        .route("/info", get(routes::info))
        .route("/v1/models", get(routes::models))
        .route("/openapi.yaml", get(routes::openapi));
    let probes = Router::new()
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics));
    let guarded = |r: Router<Arc<AppState>>| {
        r.route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
    };
    let scoring = guarded(scoring);
    let probes = if state.settings.protect_health_and_metrics {
        guarded(probes)
    } else {
        probes
    };
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .merge(scoring)
        .merge(probes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(DefaultBodyLimit::max(state.settings.payload_limit_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("the request handler panicked".into()).into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
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

/// `Authorization: Bearer <key>` or the bare key, compared in constant time.
async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.settings.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim())
            .map(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .unwrap_or(v)
                    .trim()
            })
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
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
    let response = next.run(request).await;
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
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown);
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
