//! Trace export over OTLP/HTTP (the `otlp` feature).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;

use super::{TraceExport, traces_url};

/// Whether spans are exported: only then is an incoming `traceparent` read.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The exporter; dropping it sends the spans still buffered.
pub(super) struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    pub(super) fn start(export: TraceExport) -> anyhow::Result<Self> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(export.endpoint)?)
            .build()
            .context("cannot build the OTLP exporter")?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(export.service_name.to_owned())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// This crate's spans, whatever `RUST_LOG` says.
    pub(super) fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("zerank-server"))
            .with_filter(Targets::new().with_target("zerank_server", Level::INFO))
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        EXPORTING.store(false, Ordering::SeqCst);
        if let Err(err) = self.provider.shutdown() {
            eprintln!("warning: traces still buffered at exit were not exported: {err}");
        }
    }
}

pub(super) fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, Ordering::SeqCst);
}

/// Makes the caller's trace (a W3C `traceparent`) the span's parent while spans are exported.
pub(super) fn join_callers_trace(span: &tracing::Span, headers: &HeaderMap) {
    if EXPORTING.load(Ordering::Relaxed) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let parent =
            TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        // Fails only when the span is disabled, and then there is nothing to link.
        let _ = span.set_parent(parent);
    }
}
