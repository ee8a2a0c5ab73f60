//! The server's own settings: how it listens, admits and answers requests, authenticates,
//! and reports. `score` has none of them.

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::models::{NameList, name_groups};
use crate::model::Chunking;
use crate::telemetry::LogFormat;

/// What a request naming a model that is not served gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelNamePolicy {
    /// The first model serves it, and the answer names that model: clients that send a
    /// default name of their own (`rerank-english-v3.0`, `jina-reranker-v1-base-en`) work
    /// unchanged.
    Any,
    /// 404 naming the served models: a mistyped name never scores with another model.
    #[default]
    Strict,
}

/// What happens to a document longer than the model's prompt has room for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LongDocuments {
    /// Cut it to the room (the reference's behaviour).
    #[default]
    Truncate,
    /// Score it whole: windows of the room, each scored as its own pair; the document gets
    /// the best window's score.
    Chunk,
}

/// Listening, admission, requests, connections, authentication and telemetry. The file keys
/// are the field names.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Server")]
#[serde(default)]
pub struct ServerSettings {
    /// Address to listen on.
    #[arg(long, env = "ZERANK_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "ZERANK_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Also serve /health and /metrics on this port, with its own 64 connections apart from
    /// `max_connections`: probes and scrapers still get through when the main port is full
    /// [default: off].
    #[arg(long, env = "ZERANK_ADMIN_PORT")]
    pub admin_port: Option<u16>,
    /// Address the admin port listens on: loopback keeps /metrics off the network; a probe
    /// from outside the pod or host needs 0.0.0.0 (the Docker image's setting).
    #[arg(long, env = "ZERANK_ADMIN_HOST", default_value = "127.0.0.1")]
    pub admin_host: String,
    /// Model names clients may send, comma-separated; repeat the flag (or separate lists with
    /// `;`) for the second model and on. They replace a model's default names: a Hub id and
    /// its last component, or a local directory's name.
    #[arg(long, env = "ZERANK_SERVED_MODEL_NAMES", value_delimiter = ';')]
    #[serde(deserialize_with = "name_groups")]
    pub served_model_names: Vec<NameList>,
    /// A request naming a model that is not served: `strict` answers 404 naming the served
    /// models; `any` serves it with the first model (and says so in the answer).
    #[arg(long, env = "ZERANK_MODEL_NAME_POLICY", value_enum, default_value_t = ModelNamePolicy::Strict)]
    pub model_name_policy: ModelNamePolicy,
    /// Requests served at once; more get 429.
    #[arg(long, env = "ZERANK_MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Prompt tokens waiting in a model's queue; a request that would pass it gets 429, one
    /// over it alone 413.
    #[arg(long, env = "ZERANK_MAX_QUEUED_TOKENS", default_value_t = 2_000_000)]
    pub max_queued_tokens: usize,
    /// Documents (or score pairs) in one request; more get 413.
    #[arg(
        long,
        env = "ZERANK_MAX_DOCUMENTS_PER_REQUEST",
        default_value_t = 1_000
    )]
    pub max_documents_per_request: usize,
    /// A document over the prompt's room: `truncate` cuts it; `chunk` scores windows of it
    /// and takes the best. Requests may choose with `long_documents`.
    #[arg(long, env = "ZERANK_LONG_DOCUMENTS", value_enum, default_value_t = LongDocuments::Truncate)]
    pub long_documents: LongDocuments,
    /// Tokens a chunk window repeats from the end of the one before (at most half a window).
    #[arg(long, env = "ZERANK_CHUNK_OVERLAP_TOKENS", default_value_t = 64)]
    pub chunk_overlap_tokens: usize,
    /// Most windows per document under `chunk`; a document that needs more gets 413.
    #[arg(long, env = "ZERANK_MAX_CHUNKS_PER_DOCUMENT", default_value_t = 16)]
    pub max_chunks_per_document: usize,
    /// Memory for each model's score cache, in bytes (about 92 per score); 0 turns it off.
    #[arg(long, env = "ZERANK_SCORE_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub score_cache_bytes: usize,
    /// Memory the tokenizers of all requests together may take, in bytes (estimated per
    /// request from its longest text); requests over it wait their turn.
    #[arg(
        long,
        env = "ZERANK_TOKENIZING_MEMORY_BYTES",
        default_value_t = 1024 * 1024 * 1024
    )]
    pub tokenizing_memory_bytes: usize,
    /// Largest request body in bytes; larger gets 413.
    #[arg(long, env = "ZERANK_PAYLOAD_LIMIT_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub payload_limit_bytes: usize,
    /// Memory the bodies of all requests being read or served may take together, in bytes,
    /// counted as they arrive; a body that would pass it gets 503 with Retry-After.
    #[arg(
        long,
        env = "ZERANK_REQUEST_BODY_MEMORY_BYTES",
        default_value_t = 256 * 1024 * 1024
    )]
    pub request_body_memory_bytes: usize,
    /// Seconds a request may take, queue included, before it fails with 504.
    #[arg(long, env = "ZERANK_REQUEST_TIMEOUT_SECS", default_value_t = 60.0)]
    pub request_timeout_secs: f64,
    /// Open connections at once; more are closed on accept.
    #[arg(long, env = "ZERANK_MAX_CONNECTIONS", default_value_t = 1_024)]
    pub max_connections: usize,
    /// Requests one HTTP/2 connection may have open at once; more are refused by the protocol
    /// (the client waits for a stream to end).
    #[arg(
        long,
        env = "ZERANK_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 16
    )]
    pub http2_max_concurrent_streams: u32,
    /// Seconds a connection has to send a request's headers, once open or idle after a
    /// response (the keep-alive limit too; HTTP/2: with no open stream, and the ping interval).
    #[arg(long, env = "ZERANK_HEADER_READ_TIMEOUT_SECS", default_value_t = 10.0)]
    pub header_read_timeout_secs: f64,
    /// Seconds a request's body has to arrive once its headers have; later: 408.
    #[arg(long, env = "ZERANK_BODY_READ_TIMEOUT_SECS", default_value_t = 30.0)]
    pub body_read_timeout_secs: f64,
    /// Seconds a response may wait for a client that stops reading: a write that makes no
    /// progress this long (or an HTTP/2 client taking under 1 KiB of its answers in this time)
    /// closes the connection and frees its buffers.
    #[arg(
        long,
        env = "ZERANK_RESPONSE_WRITE_TIMEOUT_SECS",
        default_value_t = 30.0
    )]
    pub response_write_timeout_secs: f64,
    /// Largest request line plus headers in bytes; larger gets 431.
    #[arg(long, env = "ZERANK_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Seconds SIGTERM waits for requests in flight before closing what is left.
    #[arg(long, env = "ZERANK_DRAIN_DEADLINE_SECS", default_value_t = 20.0)]
    pub drain_deadline_secs: f64,
    /// Require `Authorization: Bearer <key>` (or the bare key) on scoring routes; an empty or
    /// blank key refuses to start.
    #[arg(long, env = "ZERANK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Require the API key on /health and /metrics too; a bare switch means true.
    #[arg(long, env = "ZERANK_PROTECT_HEALTH_AND_METRICS", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub protect_health_and_metrics: bool,
    /// Serve the API reference and playground page at GET /docs (open to all: it holds no
    /// data, and its calls carry the API key typed into it); false answers 404. A bare
    /// switch means true.
    #[arg(long, env = "ZERANK_DOCS_PAGE", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub docs_page: bool,
    /// Log format.
    #[arg(long, env = "ZERANK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Export traces to this OpenTelemetry collector over OTLP/HTTP (protobuf), e.g.
    /// http://otel-collector:4318 (`/v1/traces` is added to a URL without a path) [default:
    /// off].
    #[arg(long, env = "ZERANK_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported traces.
    #[arg(
        long,
        env = "ZERANK_OTLP_SERVICE_NAME",
        default_value = "zerank-server"
    )]
    pub otlp_service_name: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        super::declared_defaults()
    }
}

impl ServerSettings {
    pub fn chunking(&self) -> Chunking {
        Chunking {
            overlap_tokens: self.chunk_overlap_tokens,
            max_chunks: self.max_chunks_per_document,
        }
    }

    /// For the start-up log: a warning when the service answers beyond this machine with no
    /// API key, so that anyone who reaches the port can score and read `/info`.
    pub fn open_listener_warning(&self) -> Option<String> {
        let loopback = self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|address| address.is_loopback());
        (!loopback && self.api_key.is_none()).then(|| {
            format!(
                "listening on {} with no API key: anyone who reaches port {} can score \
                 and read /info; set --api-key (ZERANK_API_KEY), or --host 127.0.0.1 \
                 behind a proxy that authenticates",
                self.host, self.port
            )
        })
    }
}
