//! Settings, each declared once below: its flag, environment variable, default and help, and
//! its key in the settings file. Precedence: defaults < `config/default.toml` (or `--config
//! FILE`) < `ZERANK_*` environment < command-line flags.

mod models;
#[cfg(test)]
mod tests;
mod validation;
mod words;

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::model::{BatchBudget, Chunking, CpuLibrary, DTypeSpec, DeviceSpec};
use crate::telemetry::LogFormat;
pub use models::{ModelSettings, NameList};
use models::{name_groups, one_or_many};

pub const DEFAULT_MODEL: &str = "zeroentropy/zerank-1-small";
const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

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

/// Every setting of the service. The file keys are the field names.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Settings file (TOML) [default: config/default.toml when present].
    #[arg(long, env = "ZERANK_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Local checkpoint directory or Hugging Face Hub id; repeat (or comma-separate) to serve
    /// several models. Requests without `model` go to the first.
    #[arg(long, env = "ZERANK_MODEL", value_delimiter = ',', default_value = DEFAULT_MODEL)]
    #[serde(deserialize_with = "one_or_many")]
    pub model: Vec<String>,
    /// Hub revision (branch, tag or commit): one for every model, or one per model [default: main].
    #[arg(long, env = "ZERANK_REVISION", value_delimiter = ',')]
    #[serde(deserialize_with = "one_or_many")]
    pub revision: Vec<String>,
    /// Scoring recipe: auto (Sentence Transformers' native layout when the checkpoint has it,
    /// else bge-gemma for a Gemma, else zerank), zerank, sentence-transformers, qwen3-reranker
    /// (the original Qwen3-Reranker prompt), bge-gemma (FlagEmbedding's prompt), mxbai-rerank
    /// (mxbai-rerank-v2's library prompt); one for every model, or one per model [default: auto].
    #[arg(long, env = "ZERANK_RECIPE", value_delimiter = ',', ignore_case = true)]
    #[serde(deserialize_with = "one_or_many")]
    pub recipe: Vec<crate::model::RecipeChoice>,
    /// Instruction used when a request brings none: one for every model, or repeat the flag
    /// once per model [default: the checkpoint's own default prompt, if any].
    #[arg(long, env = "ZERANK_INSTRUCTION")]
    #[serde(deserialize_with = "one_or_many")]
    pub instruction: Vec<String>,
    /// score = sigmoid(margin / T): one for every model, or one per model [default: 5 for a
    /// lone "Yes" logit (zerank), 1 for yes/no log-odds (Qwen3-Reranker)].
    #[arg(long, env = "ZERANK_SCORE_TEMPERATURE", value_delimiter = ',')]
    #[serde(deserialize_with = "one_or_many")]
    pub score_temperature: Vec<f32>,
    /// Compute dtype: auto (bf16 on GPUs and on CPUs with AVX512-BF16 or AMX where a bf16 GEMM
    /// library loads, else f32), f32, bf16, f16 (GPUs only).
    #[arg(long, env = "ZERANK_DTYPE", default_value = "auto", ignore_case = true)]
    pub dtype: DTypeSpec,
    /// Device: auto, cpu, cuda[:N], metal[:N].
    #[arg(long, env = "ZERANK_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
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
    /// Most prompt tokens in one forward pass (batches are packed, no padding).
    #[arg(long, env = "ZERANK_MAX_BATCH_TOKENS", default_value_t = 16_384)]
    pub max_batch_tokens: usize,
    /// Most pairs in one forward pass.
    #[arg(long, env = "ZERANK_MAX_BATCH_PAIRS", default_value_t = 64)]
    pub max_batch_pairs: usize,
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
    /// Cut documents to this many tokens (after the zerank recipe's 10,000-character cut).
    #[arg(long, env = "ZERANK_MAX_TOKENS_PER_DOC")]
    pub max_tokens_per_doc: Option<usize>,
    /// Cap on a whole prompt in tokens [default: the recipe's, at most the model's
    /// max_position_embeddings].
    #[arg(long, env = "ZERANK_MAX_LENGTH")]
    pub max_length: Option<usize>,
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
    /// Compute the query prefix that a request's documents share once; a bare switch means true.
    #[arg(long, env = "ZERANK_PREFIX_SHARING", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub prefix_sharing: bool,
    /// CPU f32 matmuls: auto (an installed OpenBLAS, BLIS or MKL, else candle's gemm), off
    /// (candle's gemm), or a BLAS library name or path.
    #[arg(long, env = "ZERANK_CPU_BLAS", default_value = "auto")]
    pub cpu_blas: CpuLibrary,
    /// CPU bf16 matmuls under bf16: auto (MKL, libmkl_rt.so.3, else oneDNN, libdnnl.so.3 or
    /// .so.2, where the CPU has AVX512-BF16 or AMX; else bf16 weights widened to f32 for each
    /// matmul), off (always widen), or an MKL or oneDNN library name or path.
    #[arg(
        long,
        alias = "cpu-onednn",
        env = "ZERANK_CPU_BF16_GEMM",
        default_value = "auto"
    )]
    #[serde(alias = "cpu_onednn")]
    pub cpu_bf16_gemm: CpuLibrary,
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

#[derive(Parser, Debug)]
#[command(
    name = "zerank-server",
    version,
    about = "Serves causal-LM rerankers (zerank-1, zerank-2, Qwen3-Reranker) over HTTP (POST /rerank)",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Score (query, document) pairs from a JSONL file, one score per output line, with the
    /// first model.
    Score(Box<ScoreArgs>),
    /// Print the OpenAPI document of the HTTP API (YAML).
    Openapi,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub files: ScoreFiles,
    #[command(flatten)]
    pub settings: Settings,
}

/// What offline scoring reads and writes.
#[derive(Args, Debug, Clone)]
pub struct ScoreFiles {
    /// JSONL file with one {"query", "document"} object per line, and an optional
    /// "instruction"; blank lines are skipped. `-` reads stdin.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the scores, one per pair, with the settings that decide them in
    /// `<output>.settings.json` beside it [default: stdout].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write raw scores (see README: the reference's unscaled score) instead of 0-1 scores.
    #[arg(long)]
    pub raw: bool,
    /// Prompt tokens in one forward pass [default: max_batch_tokens].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_BATCH_TOKENS))]
    pub batch_tokens: Option<usize>,
    /// Continue an interrupted run: keep the scores already in --output and append those
    /// of the remaining pairs. Refused when the settings recorded in `<output>.settings.json`
    /// differ from this run's (batch sizes aside), the input's first lines are not those
    /// scored, or the output has more scores than the input has pairs.
    #[arg(long)]
    pub resume: bool,
}

/// What the command line asks for, with its settings resolved.
pub enum Invocation {
    Serve(Settings),
    Score(ScoreFiles, Settings),
    Openapi,
}

impl Invocation {
    /// The settings of parsed arguments: the file's under the environment's and the flags'.
    pub fn resolve(matches: &ArgMatches) -> anyhow::Result<Self> {
        let cli = Cli::from_arg_matches(matches)?;
        match cli.command {
            Some(Command::Score(args)) => {
                let matches = matches
                    .subcommand_matches("score")
                    .expect("the score subcommand was parsed");
                let ScoreArgs { files, settings } = *args;
                let settings = Settings::resolve(settings, matches)?;
                Ok(Invocation::Score(files, settings))
            }
            Some(Command::Openapi) => Ok(Invocation::Openapi),
            None => Ok(Invocation::Serve(Settings::resolve(cli.settings, matches)?)),
        }
    }
}

/// Parses the process's arguments; on a bad value that came from the environment, says so
/// (clap names only the flag), then exits as clap does.
pub fn parse_args() -> ArgMatches {
    Cli::command().try_get_matches().unwrap_or_else(|err| {
        if let Some(variable) = environment_source(&err) {
            eprintln!("note: the value comes from the environment variable {variable}");
        }
        err.exit()
    })
}

/// The environment variable behind an invalid value, when the flag itself was not given.
fn environment_source(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let command = Cli::command();
    let variable = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    let flag = format!("--{long}");
    let flag_given = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    (!flag_given && std::env::var_os(&variable).is_some()).then_some(variable)
}

impl Default for Settings {
    /// The declared defaults, with neither file nor environment.
    fn default() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            settings: Settings,
        }
        let command = Defaults::command().mut_args(|arg| arg.env(None::<&str>));
        let matches = command
            .try_get_matches_from(["zerank-server"])
            .expect("the declared defaults parse");
        Defaults::from_arg_matches(&matches)
            .expect("the declared defaults parse")
            .settings
    }
}

impl Settings {
    /// `parsed` (defaults, environment, flags) with the settings file's values put under the
    /// environment's and the flags'; then checked.
    pub fn resolve(parsed: Settings, matches: &ArgMatches) -> anyhow::Result<Self> {
        // Before the merge: JSON has no infinities to carry them through.
        parsed.check_durations()?;
        let mut merged = serde_json::to_value(&parsed)?;
        let file = read_file(parsed.config.as_deref())?;
        let file_path = file.as_ref().map(|(path, _)| path.clone());
        if let Some((path, file)) = file {
            let known = serde_json::to_value(Settings::default())?;
            let known = known.as_object().expect("settings serialize as a map");
            for (key, value) in file {
                anyhow::ensure!(
                    known.contains_key(&key),
                    "settings file {}: unknown key `{key}`",
                    path.display()
                );
                let value = serde_json::to_value(value)?;
                // Checked alone among the defaults, so that a bad value is reported with its
                // key (serde's message names only the type) and the file's name.
                let mut alone = known.clone();
                alone.insert(key.clone(), value.clone());
                serde_json::from_value::<Settings>(serde_json::Value::Object(alone)).map_err(
                    |err| anyhow::anyhow!("settings file {}: {key}: {err}", path.display()),
                )?;
                let given = matches!(
                    matches.value_source(&key),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                );
                if !given {
                    merged[&key] = value;
                }
            }
        }
        let mut settings: Settings = serde_json::from_value(merged)?;
        // The file read, named whether it was given or found: the start-up log shows it.
        settings.config = file_path;
        // A trailing newline from a mounted secret is not part of the key.
        settings.api_key = settings.api_key.map(|key| key.trim().to_owned());
        settings.validate()?;
        Ok(settings)
    }

    pub fn chunking(&self) -> Chunking {
        Chunking {
            overlap_tokens: self.chunk_overlap_tokens,
            max_chunks: self.max_chunks_per_document,
        }
    }

    pub fn batch_budget(&self) -> BatchBudget {
        BatchBudget {
            max_tokens: self.max_batch_tokens,
            max_sequences: self.max_batch_pairs,
        }
    }

    /// For the start-up log: each setting that is not at its built-in default, its value
    /// (the API key redacted) and where it came from: the flag, the environment variable,
    /// or the settings file. `matches` are the arguments these settings were resolved from.
    pub fn non_defaults(&self, matches: &ArgMatches) -> Vec<(String, String, String)> {
        let values = serde_json::to_value(self.redacted()).expect("settings serialize");
        let defaults = serde_json::to_value(Settings::default()).expect("settings serialize");
        let file = self
            .config
            .as_deref()
            .map_or_else(String::new, |path| path.display().to_string());
        let mut changed = Vec::new();
        for (key, value) in values.as_object().expect("settings serialize as a map") {
            if defaults.get(key) == Some(value) {
                continue;
            }
            let source = match matches.value_source(key) {
                Some(ValueSource::CommandLine) => format!("--{}", key.replace('_', "-")),
                Some(ValueSource::EnvVariable) => environment_variable(key),
                _ => file.clone(),
            };
            changed.push((key.clone(), value.to_string(), source));
        }
        changed
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

    /// For the start-up log: the API key never appears.
    pub fn redacted(&self) -> Self {
        Settings {
            api_key: self.api_key.as_ref().map(|_| "<redacted>".into()),
            ..self.clone()
        }
    }
}

/// The environment variable of the setting `key`.
fn environment_variable(key: &str) -> String {
    format!("ZERANK_{}", key.to_ascii_uppercase())
}

/// The largest batch budget in tokens: far past what any device runs in one pass.
const MAX_BATCH_TOKENS: u64 = 1 << 24;

/// The settings file's keys and values: the one named, or `config/default.toml` if present.
fn read_file(explicit: Option<&Path>) -> anyhow::Result<Option<(PathBuf, toml::Table)>> {
    let path = match explicit {
        Some(path) => path.to_owned(),
        None if Path::new(DEFAULT_CONFIG_FILE).is_file() => DEFAULT_CONFIG_FILE.into(),
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|err| anyhow::anyhow!("settings file {}: {err}", path.display()))?;
    let table = text
        .parse::<toml::Table>()
        .map_err(|err| anyhow::anyhow!("settings file {}: {err}", path.display()))?;
    Ok(Some((path, table)))
}
