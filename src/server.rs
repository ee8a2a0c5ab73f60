//! The composition root of `zerank-server serve`: listen at once, load the models in the
//! background (`/health` answers 503 meanwhile), serve the main and admin ports through the
//! HTTP layer, and drain on SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::http::{self, AppState, ConnectionLimits, Listener};
use crate::metrics::Metrics;
use crate::service::Service;
use crate::settings::Settings;

/// Connections the admin port holds at once, apart from `max_connections`: enough for every
/// probe and scraper, and no way for a flood of the main port to reach it.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The admin port's header read timeout, at most: a probe or scraper sends its request as
/// soon as it connects, and a socket that holds a place without one is let go soon.
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The sockets the server serves: the main port, and the admin port's (`/health` and
/// `/metrics` alone) when there is one.
pub struct Listeners {
    pub main: TcpListener,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `host:port`, and `admin_host:admin_port` when set.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let bind = |host: &str, port: u16, what: &'static str| {
            let address = format!("{host}:{port}");
            async move {
                TcpListener::bind(&address)
                    .await
                    .map_err(|err| anyhow::anyhow!("cannot listen on {address}{what}: {err}"))
            }
        };
        let main = bind(&settings.server.host, settings.server.port, "").await?;
        let admin = match settings.server.admin_port {
            Some(port) => Some(bind(&settings.server.admin_host, port, " (admin_port)").await?),
            None => None,
        };
        Ok(Listeners { main, admin })
    }
}

/// Runs the service until SIGTERM or SIGINT, then answers what is in flight and returns.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&settings).await?;
    serve_on(listeners, settings, shutdown_signal()).await
}

/// Serves on `listeners` until `shutdown` completes, then stops accepting, answers every
/// request in flight and returns. The model loads in the background meanwhile.
pub async fn serve_on(
    listeners: Listeners,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners { main, admin } = listeners;
    if let Some(admin) = &admin {
        tracing::info!(address = %admin.local_addr()?, "admin listener: /health and /metrics");
    }
    http::ensure_open_file_limit(
        settings.server.max_connections + admin.as_ref().map_or(0, |_| ADMIN_MAX_CONNECTIONS),
    )?;
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(AppState::new(settings.clone(), metrics.clone()));
    tracing::info!(address = %main.local_addr()?, "listening; /health answers 503 until the model is ready");

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
    let mut listeners = vec![Listener {
        socket: main,
        app: http::router(state.clone()),
        max_connections: settings.server.max_connections,
        header_read_timeout: limits.header_read_timeout,
        evict_idle: false,
    }];
    listeners.extend(admin.map(|socket| Listener {
        socket,
        app: http::admin_router(state.clone()),
        max_connections: ADMIN_MAX_CONNECTIONS,
        header_read_timeout: limits.header_read_timeout.min(ADMIN_HEADER_READ_TIMEOUT),
        // Every probe must get in: the cap holds only probes and scrapers, each done in
        // milliseconds, so an idle place is one held against them.
        evict_idle: true,
    }));
    let server = http::serve_connections(listeners, limits, metrics, shutdown);
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
