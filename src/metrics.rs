//! Prometheus metrics, all prefixed `zerank_`, served as text at `/metrics`. What a model's
//! batcher and engine do carries a `model` label (its first served name).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

const MODEL: &[&str] = &["model"];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    queue_duration: HistogramVec,
    tokenization_duration: HistogramVec,
    inference_duration: HistogramVec,
    batch_pairs: HistogramVec,
    batch_requests: HistogramVec,
    multi_request_batches: IntCounterVec,
    batch_tokens: HistogramVec,
    batch_computed_tokens: HistogramVec,
    batch_shared_ratio: HistogramVec,
    queue_pairs: IntGaugeVec,
    queue_tokens: IntGaugeVec,
    pub requests_in_flight: IntGauge,
    input_tokens: HistogramVec,
    pub errors: IntCounterVec,
    model_load_seconds: GaugeVec,
    score_cache_hits: IntCounterVec,
    score_cache_misses: IntCounterVec,
    score_cache_evictions: IntCounterVec,
    score_cache_bytes: IntGaugeVec,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    pub connection_errors: IntCounterVec,
    pub client_disconnects: IntCounter,
    pub unknown_model_names: IntCounter,
}

/// One model's metrics: the `model`-labelled children, cheap to clone.
#[derive(Clone)]
pub struct ModelMetrics {
    pub queue_duration: Histogram,
    pub tokenization_duration: Histogram,
    pub inference_duration: Histogram,
    pub batch_pairs: Histogram,
    pub batch_requests: Histogram,
    pub multi_request_batches: IntCounter,
    pub batch_tokens: Histogram,
    pub batch_computed_tokens: Histogram,
    pub batch_shared_ratio: Histogram,
    pub queue_pairs: IntGauge,
    pub queue_tokens: IntGauge,
    pub input_tokens: Histogram,
    pub model_load_seconds: Gauge,
    pub score_cache_hits: IntCounter,
    pub score_cache_misses: IntCounter,
    pub score_cache_evictions: IntCounter,
    pub score_cache_bytes: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let seconds = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
        };
        let exponential = |name: &str, help: &str, start: f64, count: usize| {
            HistogramOpts::new(name, help)
                .buckets(prometheus::exponential_buckets(start, 2.0, count).expect("valid buckets"))
        };
        let metrics = Metrics {
            requests: IntCounterVec::new(
                Opts::new("zerank_requests_total", "HTTP requests by route and status"),
                &["route", "status"],
            )
            .expect("valid metric"),
            request_duration: HistogramVec::new(
                seconds("zerank_request_duration_seconds", "HTTP request duration by route"),
                &["route"],
            )
            .expect("valid metric"),
            queue_duration: HistogramVec::new(seconds(
                "zerank_queue_duration_seconds",
                "Time a request's pairs waited in the batch queue (until its last pair's batch started)",
            ), MODEL)
            .expect("valid metric"),
            tokenization_duration: HistogramVec::new(seconds(
                "zerank_tokenization_duration_seconds",
                "Time to build and tokenize one request's prompts",
            ), MODEL)
            .expect("valid metric"),
            inference_duration: HistogramVec::new(seconds(
                "zerank_inference_duration_seconds",
                "Forward-pass time of one batch",
            ), MODEL)
            .expect("valid metric"),
            batch_pairs: HistogramVec::new(exponential(
                "zerank_batch_pairs",
                "Pairs per batch",
                1.0,
                10,
            ), MODEL)
            .expect("valid metric"),
            batch_requests: HistogramVec::new(exponential(
                "zerank_batch_requests",
                "Distinct requests whose pairs share a batch",
                1.0,
                8,
            ), MODEL)
            .expect("valid metric"),
            multi_request_batches: IntCounterVec::new(
                Opts::new(
                    "zerank_multi_request_batches_total",
                    "Batches that held pairs of more than one request",
                ),
                MODEL,
            )
            .expect("valid metric"),
            batch_tokens: HistogramVec::new(exponential(
                "zerank_batch_tokens",
                "Prompt tokens per batch",
                64.0,
                12,
            ), MODEL)
            .expect("valid metric"),
            batch_computed_tokens: HistogramVec::new(exponential(
                "zerank_batch_computed_tokens",
                "Tokens the forward pass computes per batch (packed without padding, shared prefixes once)",
                64.0,
                12,
            ), MODEL)
            .expect("valid metric"),
            batch_shared_ratio: HistogramVec::new(
                HistogramOpts::new(
                    "zerank_batch_shared_ratio",
                    "Share of a batch's prompt tokens served by a shared query prefix",
                )
                .buckets(vec![0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]),
                MODEL,
            )
            .expect("valid metric"),
            queue_pairs: IntGaugeVec::new(
                Opts::new("zerank_queue_pairs", "Pairs waiting in the batch queue"),
                MODEL,
            )
            .expect("valid metric"),
            queue_tokens: IntGaugeVec::new(
                Opts::new("zerank_queue_tokens", "Tokens waiting in the batch queue"),
                MODEL,
            )
            .expect("valid metric"),
            requests_in_flight: IntGauge::new(
                "zerank_requests_in_flight",
                "Scoring requests admitted and not yet answered",
            )
            .expect("valid metric"),
            input_tokens: HistogramVec::new(exponential(
                "zerank_input_tokens",
                "Prompt tokens per pair",
                16.0,
                12,
            ), MODEL)
            .expect("valid metric"),
            errors: IntCounterVec::new(
                Opts::new("zerank_errors_total", "Failed requests by error kind"),
                &["kind"],
            )
            .expect("valid metric"),
            model_load_seconds: GaugeVec::new(
                Opts::new(
                    "zerank_model_load_seconds",
                    "Time it took to load the model and warm it up",
                ),
                MODEL,
            )
            .expect("valid metric"),
            score_cache_hits: IntCounterVec::new(
                Opts::new(
                    "zerank_score_cache_hits_total",
                    "Prompts scored from the score cache, or by another request computing them at the same time",
                ),
                MODEL,
            )
            .expect("valid metric"),
            score_cache_misses: IntCounterVec::new(
                Opts::new(
                    "zerank_score_cache_misses_total",
                    "Prompts the score cache did not hold, computed by the model",
                ),
                MODEL,
            )
            .expect("valid metric"),
            score_cache_evictions: IntCounterVec::new(
                Opts::new(
                    "zerank_score_cache_evictions_total",
                    "Scores dropped from the score cache, least recently used first, to stay within score_cache_bytes",
                ),
                MODEL,
            )
            .expect("valid metric"),
            score_cache_bytes: IntGaugeVec::new(
                Opts::new(
                    "zerank_score_cache_bytes",
                    "Memory held by the score cache's entries",
                ),
                MODEL,
            )
            .expect("valid metric"),
            connections_open: IntGauge::new("zerank_connections_open", "Open client connections")
                .expect("valid metric"),
            connections_refused: IntCounter::new(
                "zerank_connections_refused_total",
                "Connections closed at once because max_connections were open",
            )
            .expect("valid metric"),
            connection_errors: IntCounterVec::new(
                Opts::new(
                    "zerank_connection_errors_total",
                    "Connections that ended in an error, by kind (hyper's own 431/400 answers, header timeouts, aborted requests)",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            client_disconnects: IntCounter::new(
                "zerank_client_disconnects_total",
                "Scoring requests whose client went away before the answer",
            )
            .expect("valid metric"),
            unknown_model_names: IntCounter::new(
                "zerank_unknown_model_names_total",
                "Requests naming a model that is not served, served by the first model (model_name_policy = any)",
            )
            .expect("valid metric"),
            registry,
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.requests.clone()),
            Box::new(self.request_duration.clone()),
            Box::new(self.queue_duration.clone()),
            Box::new(self.tokenization_duration.clone()),
            Box::new(self.inference_duration.clone()),
            Box::new(self.batch_pairs.clone()),
            Box::new(self.batch_requests.clone()),
            Box::new(self.multi_request_batches.clone()),
            Box::new(self.batch_tokens.clone()),
            Box::new(self.batch_computed_tokens.clone()),
            Box::new(self.batch_shared_ratio.clone()),
            Box::new(self.queue_pairs.clone()),
            Box::new(self.queue_tokens.clone()),
            Box::new(self.requests_in_flight.clone()),
            Box::new(self.input_tokens.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.model_load_seconds.clone()),
            Box::new(self.score_cache_hits.clone()),
            Box::new(self.score_cache_misses.clone()),
            Box::new(self.score_cache_evictions.clone()),
            Box::new(self.score_cache_bytes.clone()),
            Box::new(self.connections_open.clone()),
            Box::new(self.connections_refused.clone()),
            Box::new(self.connection_errors.clone()),
            Box::new(self.client_disconnects.clone()),
            Box::new(self.unknown_model_names.clone()),
        ];
        for collector in collectors {
            self.registry
                .register(collector)
                .expect("metric names are unique");
        }
    }

    /// The metrics of the model served first as `name`.
    pub fn for_model(&self, name: &str) -> ModelMetrics {
        let label = &[name];
        ModelMetrics {
            queue_duration: self.queue_duration.with_label_values(label),
            tokenization_duration: self.tokenization_duration.with_label_values(label),
            inference_duration: self.inference_duration.with_label_values(label),
            batch_pairs: self.batch_pairs.with_label_values(label),
            batch_requests: self.batch_requests.with_label_values(label),
            multi_request_batches: self.multi_request_batches.with_label_values(label),
            batch_tokens: self.batch_tokens.with_label_values(label),
            batch_computed_tokens: self.batch_computed_tokens.with_label_values(label),
            batch_shared_ratio: self.batch_shared_ratio.with_label_values(label),
            queue_pairs: self.queue_pairs.with_label_values(label),
            queue_tokens: self.queue_tokens.with_label_values(label),
            input_tokens: self.input_tokens.with_label_values(label),
            model_load_seconds: self.model_load_seconds.with_label_values(label),
            score_cache_hits: self.score_cache_hits.with_label_values(label),
            score_cache_misses: self.score_cache_misses.with_label_values(label),
            score_cache_evictions: self.score_cache_evictions.with_label_values(label),
            score_cache_bytes: self.score_cache_bytes.with_label_values(label),
        }
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
