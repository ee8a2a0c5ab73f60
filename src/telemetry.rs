//! Logs on stderr, and traces exported over OTLP when `otlp_endpoint` is set (in a binary
//! built with the `otlp` feature: [`otlp`]). The spans are the same either way: `request`
//! (one per HTTP request, carrying its `request_id`), and inside it `tokenize`, `queue`,
//! `forward` and `respond`. Logs show them as context; exporting them is what the endpoint
//! adds. Numbers on spans are `i64`: the exporter sends unsigned ones as strings.

use anyhow::Context as _;
use axum::http::HeaderMap;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[cfg(feature = "otlp")]
mod otlp;

/// Where traces go and under what name.
pub struct TraceExport<'a> {
    pub endpoint: &'a str,
    pub service_name: &'a str,
}

/// Keeps the exporter alive; dropping it sends the spans still buffered.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    _export: Option<otlp::Export>,
}

/// Installs the global subscriber: logs filtered by `RUST_LOG` (default `info`), and, with
/// `export`, this crate's spans sent to the collector whatever `RUST_LOG` says. Call outside
/// the async runtime: the exporter's HTTP client runs on a thread of its own.
pub fn init(format: LogFormat, export: Option<TraceExport>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    }
    .with_filter(filter);
    #[cfg(feature = "otlp")]
    {
        let export = export.map(otlp::Export::start).transpose()?;
        tracing_subscriber::registry()
            .with(logs)
            .with(export.as_ref().map(otlp::Export::layer))
            .try_init()
            .context("a global tracing subscriber is already installed")?;
        otlp::set_exporting(export.is_some());
        Ok(Telemetry { _export: export })
    }
    #[cfg(not(feature = "otlp"))]
    {
        anyhow::ensure!(
            export.is_none(),
            "otlp_endpoint is set, but this binary was built without trace export: build it \
             with `cargo build --release --features otlp` (the Docker images have it)"
        );
        tracing_subscriber::registry()
            .with(logs)
            .try_init()
            .context("a global tracing subscriber is already installed")?;
        Ok(Telemetry {})
    }
}

/// The collector's traces URL: `endpoint` as given when it has a path, else with the OTLP
/// default path `/v1/traces`.
pub fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let uri: axum::http::Uri = endpoint
        .parse()
        .with_context(|| format!("otlp_endpoint `{endpoint}` is not a URL"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http") && uri.host().is_some(),
        "otlp_endpoint `{endpoint}` must be an http:// URL with a host (the exporter speaks plain \
         OTLP/HTTP; put a collector or agent beside the server for TLS)"
    );
    Ok(match uri.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        _ => endpoint.to_owned(),
    })
}

/// The span a request runs in; its parent is the caller's trace when traces are exported and
/// the request carries a W3C `traceparent`.
pub fn request_span(
    name: &str,
    method: &str,
    path: &str,
    request_id: &str,
    headers: &HeaderMap,
) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        url.path = path,
        request_id,
        http.response.status_code = tracing::field::Empty,
    );
    #[cfg(feature = "otlp")]
    otlp::join_callers_trace(&span, headers);
    #[cfg(not(feature = "otlp"))]
    let _ = headers;
    span
}

/// Records the answer's status on the request span; a 5xx marks the span as failed.
pub fn record_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}
