//! Prometheus metrics, all prefixed `zerank_`, served as text at `/metrics`. What a model's
//! batcher and engine do carries a `model` label (its first served name).

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

const MODEL: &[&str] = &["model"];

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn seconds(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
}

fn exponential(name: &str, help: &str, start: f64, count: usize) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .buckets(prometheus::exponential_buckets(start, 2.0, count).expect("valid buckets"))
}

/// `metric`, registered.
fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

/// Declares each per-model metric once: its field, its `model`-labelled family, the child a
/// model holds, and its name and help.
macro_rules! per_model_metrics {
    ($($field:ident: $family:ident -> $child:ident = $opts:expr,)*) => {
        /// The `model`-labelled families.
        struct ModelFamilies {
            $($field: $family,)*
        }

        /// One model's metrics: the `model`-labelled children, cheap to clone.
        #[derive(Clone)]
        pub struct ModelMetrics {
            $(pub $field: $child,)*
        }

        impl ModelFamilies {
            fn new(registry: &Registry) -> Self {
                ModelFamilies {
                    $($field: register(registry, $family::new($opts, MODEL).expect("valid metric")),)*
                }
            }

            fn for_model(&self, name: &str) -> ModelMetrics {
                ModelMetrics {
                    $($field: self.$field.with_label_values(&[name]),)*
                }
            }
        }
    };
}

per_model_metrics! {
    queue_duration: HistogramVec -> Histogram = seconds(
        "zerank_queue_duration_seconds",
        "Time a request's pairs waited in the batch queue (until its last pair's batch started)",
    ),
    tokenization_duration: HistogramVec -> Histogram = seconds(
        "zerank_tokenization_duration_seconds",
        "Time to build and tokenize one request's prompts",
    ),
    inference_duration: HistogramVec -> Histogram = seconds(
        "zerank_inference_duration_seconds",
        "Forward-pass time of one batch",
    ),
    batch_pairs: HistogramVec -> Histogram =
        exponential("zerank_batch_pairs", "Pairs per batch", 1.0, 10),
    batch_requests: HistogramVec -> Histogram = exponential(
        "zerank_batch_requests",
        "Distinct requests whose pairs share a batch",
        1.0,
        8,
    ),
    multi_request_batches: IntCounterVec -> IntCounter = Opts::new(
        "zerank_multi_request_batches_total",
        "Batches that held pairs of more than one request",
    ),
    batch_tokens: HistogramVec -> Histogram =
        exponential("zerank_batch_tokens", "Prompt tokens per batch", 64.0, 12),
    batch_computed_tokens: HistogramVec -> Histogram = exponential(
        "zerank_batch_computed_tokens",
        "Tokens the forward pass computes per batch (packed without padding, shared prefixes once)",
        64.0,
        12,
    ),
    batch_shared_ratio: HistogramVec -> Histogram = HistogramOpts::new(
        "zerank_batch_shared_ratio",
        "Share of a batch's prompt tokens served by a shared query prefix",
    )
    .buckets(vec![0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]),
    queue_pairs: IntGaugeVec -> IntGauge =
        Opts::new("zerank_queue_pairs", "Pairs waiting in the batch queue"),
    queue_tokens: IntGaugeVec -> IntGauge =
        Opts::new("zerank_queue_tokens", "Tokens waiting in the batch queue"),
    input_tokens: HistogramVec -> Histogram =
        exponential("zerank_input_tokens", "Prompt tokens per pair", 16.0, 12),
    estimated_tokens_per_second: GaugeVec -> Gauge = Opts::new(
        "zerank_estimated_tokens_per_second",
        "The rate admission plans with: units of work (prompt tokens computed after prefix sharing, longer prompts weighing more) per second",
    ),
    model_load_seconds: GaugeVec -> Gauge = Opts::new(
        "zerank_model_load_seconds",
        "Time it took to load the model and warm it up",
    ),
    score_cache_hits: IntCounterVec -> IntCounter = Opts::new(
        "zerank_score_cache_hits_total",
        "Prompts scored from the score cache, or by another request computing them at the same time",
    ),
    score_cache_misses: IntCounterVec -> IntCounter = Opts::new(
        "zerank_score_cache_misses_total",
        "Prompts the score cache did not hold, computed by the model",
    ),
    score_cache_evictions: IntCounterVec -> IntCounter = Opts::new(
        "zerank_score_cache_evictions_total",
        "Scores dropped from the score cache, least recently used first, to stay within score_cache_bytes",
    ),
    score_cache_bytes: IntGaugeVec -> IntGauge = Opts::new(
        "zerank_score_cache_bytes",
        "Memory held by the score cache's entries",
    ),
}

pub struct Metrics {
    registry: Registry,
    per_model: ModelFamilies,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub requests_in_flight: IntGauge,
    pub errors: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    pub connection_errors: IntCounterVec,
    pub client_disconnects: IntCounter,
    pub unknown_model_names: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        Metrics {
            per_model: ModelFamilies::new(r),
            requests: register(
                r,
                IntCounterVec::new(
                    Opts::new("zerank_requests_total", "HTTP requests by route and status"),
                    &["route", "status"],
                )
                .expect("valid metric"),
            ),
            request_duration: register(
                r,
                HistogramVec::new(
                    seconds("zerank_request_duration_seconds", "HTTP request duration by route"),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            requests_in_flight: register(
                r,
                IntGauge::new(
                    "zerank_requests_in_flight",
                    "Scoring requests admitted and not yet answered",
                )
                .expect("valid metric"),
            ),
            errors: register(
                r,
                IntCounterVec::new(
                    Opts::new("zerank_errors_total", "Failed requests by error kind"),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            connections_open: register(
                r,
                IntGauge::new("zerank_connections_open", "Open client connections")
                    .expect("valid metric"),
            ),
            connections_refused: register(
                r,
                IntCounter::new(
                    "zerank_connections_refused_total",
                    "Connections closed at once because max_connections were open",
                )
                .expect("valid metric"),
            ),
            connection_errors: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "zerank_connection_errors_total",
                        "Connections that ended in an error, by kind (hyper's own 431/400 answers, header timeouts, aborted requests, admin connections evicted to let a probe in)",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            client_disconnects: register(
                r,
                IntCounter::new(
                    "zerank_client_disconnects_total",
                    "Scoring requests whose client went away before the answer",
                )
                .expect("valid metric"),
            ),
            unknown_model_names: register(
                r,
                IntCounter::new(
                    "zerank_unknown_model_names_total",
                    "Requests naming a model that is not served, served by the first model (model_name_policy = any)",
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// The metrics of the model served first as `name`.
    pub fn for_model(&self, name: &str) -> ModelMetrics {
        self.per_model.for_model(name)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text encoding is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
