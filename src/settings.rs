//! Settings: built-in defaults < `config/default.toml` (or `--config FILE`) < `ZERANK_*`
//! environment < command-line flags.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::model::{BatchBudget, CpuBlas, DTypeSpec, DeviceSpec, LoadOptions, RecipeChoice};

pub const DEFAULT_MODEL: &str = "zeroentropy/zerank-1-small";
const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Every setting of the service, with its built-in default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The models served, each a local directory or a Hub id; requests without `model` go
    /// to the first.
    #[serde(deserialize_with = "one_or_many")]
    pub model: Vec<String>,
    /// Per model (one value for all, or one per model in `model`'s order), like `recipe`,
    /// `instruction` and `score_temperature`.
    #[serde(deserialize_with = "one_or_many")]
    pub revision: Vec<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub recipe: Vec<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub instruction: Vec<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub score_temperature: Vec<f32>,
    pub dtype: String,
    pub device: String,
    pub host: String,
    pub port: u16,
    /// Names clients may put in `model`, one list per model in order; a model without one
    /// answers to its default names.
    #[serde(deserialize_with = "name_groups")]
    pub served_model_names: Vec<Vec<String>>,
    pub max_batch_tokens: usize,
    pub max_batch_pairs: usize,
    pub max_concurrent_requests: usize,
    pub max_queued_tokens: usize,
    pub max_documents_per_request: usize,
    pub max_tokens_per_doc: Option<usize>,
    pub max_length: Option<usize>,
    /// Compute a query prefix that several pairs of one batch share once.
    pub prefix_sharing: bool,
    /// The CPU's f32 matmul: auto, off, or a BLAS library.
    pub cpu_blas: String,
    pub payload_limit_bytes: usize,
    pub request_timeout_secs: f64,
    /// Open connections at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a connection has to send a request's headers, once open or done with its
    /// previous response (so also the idle keep-alive limit).
    pub header_read_timeout_secs: f64,
    /// Time a request's whole body has to arrive once its headers have.
    pub body_read_timeout_secs: f64,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// After SIGTERM, requests in flight have this long to finish before the rest close.
    pub drain_deadline_secs: f64,
    pub api_key: Option<String>,
    /// Whether `/health` and `/metrics` also need the API key.
    pub protect_health_and_metrics: bool,
    pub log_format: LogFormat,
}

impl Default for Settings {
    fn default() -> Self {
        let budget = BatchBudget::default();
        Settings {
            model: vec![DEFAULT_MODEL.into()],
            revision: Vec::new(),
            recipe: Vec::new(),
            instruction: Vec::new(),
            score_temperature: Vec::new(),
            dtype: "auto".into(),
            device: "auto".into(),
            host: "0.0.0.0".into(),
            port: 8080,
            served_model_names: Vec::new(),
            max_batch_tokens: budget.max_tokens,
            max_batch_pairs: budget.max_sequences,
            max_concurrent_requests: 256,
            max_queued_tokens: 2_000_000,
            max_documents_per_request: 1_000,
            max_tokens_per_doc: None,
            max_length: None,
            prefix_sharing: true,
            cpu_blas: "auto".into(),
            payload_limit_bytes: 8 * 1024 * 1024,
            request_timeout_secs: 60.0,
            max_connections: 1_024,
            header_read_timeout_secs: 10.0,
            body_read_timeout_secs: 30.0,
            max_header_bytes: 32 * 1024,
            drain_deadline_secs: 20.0,
            api_key: None,
            protect_health_and_metrics: false,
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "zerank-server",
    version,
    about = "Serves zerank-1 rerankers over HTTP (POST /rerank)",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Score (query, document) pairs from a JSONL file, one score per output line.
    Score(ScoreArgs),
}

/// Model selection, shared by serving and offline scoring.
#[derive(Args, Debug, Default, Clone)]
pub struct ModelArgs {
    /// Settings file (TOML) [default: config/default.toml when present].
    #[arg(long, env = "ZERANK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Local checkpoint directory or Hugging Face Hub id; repeat (or comma-separate) to serve
    /// several models [default: zeroentropy/zerank-1-small].
    #[arg(long, env = "ZERANK_MODEL", value_delimiter = ',')]
    pub model: Vec<String>,
    /// Hub revision (branch, tag or commit): one for every model, or one per model [default: main].
    #[arg(long, env = "ZERANK_REVISION", value_delimiter = ',')]
    pub revision: Vec<String>,
    /// Scoring recipe: auto (Sentence Transformers' native layout when the checkpoint has it,
    /// else zerank), zerank, sentence-transformers, qwen3-reranker (the original
    /// Qwen3-Reranker prompt); one for every model, or one per model [default: auto].
    #[arg(long, env = "ZERANK_RECIPE", value_delimiter = ',')]
    pub recipe: Vec<String>,
    /// Instruction used when a request brings none (one for every model, or repeat the flag
    /// once per model) [default: the checkpoint's own default prompt, if any].
    #[arg(long, env = "ZERANK_INSTRUCTION")]
    pub instruction: Vec<String>,
    /// score = sigmoid(margin / T): one for every model, or one per model [default: 5 for a
    /// lone "Yes" logit (zerank), 1 for yes/no log-odds (Qwen3-Reranker)].
    #[arg(long, env = "ZERANK_SCORE_TEMPERATURE", value_delimiter = ',')]
    pub score_temperature: Vec<f32>,
    /// Compute dtype: auto (f32 on CPU, bf16 on GPU), f32, bf16, f16.
    #[arg(long, env = "ZERANK_DTYPE")]
    pub dtype: Option<String>,
    /// Device: auto, cpu, cuda[:N], metal[:N].
    #[arg(long, env = "ZERANK_DEVICE")]
    pub device: Option<String>,
    /// Most prompt tokens in one forward pass [default: 16384].
    #[arg(long, env = "ZERANK_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Most pairs in one forward pass [default: 64].
    #[arg(long, env = "ZERANK_MAX_BATCH_PAIRS")]
    pub max_batch_pairs: Option<usize>,
    /// Cut documents to this many tokens (after the reference's 10,000-character cut).
    #[arg(long, env = "ZERANK_MAX_TOKENS_PER_DOC")]
    pub max_tokens_per_doc: Option<usize>,
    /// Cap on a whole prompt in tokens [default: the model's max_position_embeddings].
    #[arg(long, env = "ZERANK_MAX_LENGTH")]
    pub max_length: Option<usize>,
    /// Compute the query prefix that a request's documents share once; a bare switch means
    /// true [default: true].
    #[arg(long, env = "ZERANK_PREFIX_SHARING", num_args = 0..=1, default_missing_value = "true")]
    pub prefix_sharing: Option<bool>,
    /// CPU f32 matmuls: auto (an installed OpenBLAS, BLIS or MKL, else candle's gemm), off
    /// (candle's gemm), or a BLAS library name or path [default: auto].
    #[arg(long, env = "ZERANK_CPU_BLAS")]
    pub cpu_blas: Option<String>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long, env = "ZERANK_HOST")]
    pub host: Option<String>,
    /// Port to listen on [default: 8080].
    #[arg(long, env = "ZERANK_PORT")]
    pub port: Option<u16>,
    /// Model names clients may send, comma-separated; repeat the flag (or separate lists with
    /// `;`) for the second model and on. They replace a model's default names: a Hub id and
    /// its last component, or a local directory's name.
    #[arg(long, env = "ZERANK_SERVED_MODEL_NAMES")]
    pub served_model_names: Vec<String>,
    /// Requests served at once; more get 429 [default: 256].
    #[arg(long, env = "ZERANK_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Tokens waiting in the queue; a request that would exceed it gets 429 [default: 2000000].
    #[arg(long, env = "ZERANK_MAX_QUEUED_TOKENS")]
    pub max_queued_tokens: Option<usize>,
    /// Documents in one request; more get 413 [default: 1000].
    #[arg(long, env = "ZERANK_MAX_DOCUMENTS_PER_REQUEST")]
    pub max_documents_per_request: Option<usize>,
    /// Largest request body in bytes; larger get 413 [default: 8388608].
    #[arg(long, env = "ZERANK_PAYLOAD_LIMIT_BYTES")]
    pub payload_limit_bytes: Option<usize>,
    /// Seconds a request may take, queue included, before it fails with 504 [default: 60].
    #[arg(long, env = "ZERANK_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<f64>,
    /// Open connections at once; more are closed on accept [default: 1024].
    #[arg(long, env = "ZERANK_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a connection has to send a request's headers, once open or idle after a
    /// response (the keep-alive limit too) [default: 10].
    #[arg(long, env = "ZERANK_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<f64>,
    /// Seconds a request's body has to arrive once its headers have [default: 30].
    #[arg(long, env = "ZERANK_BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<f64>,
    /// Largest request line plus headers in bytes; larger gets 431 [default: 32768].
    #[arg(long, env = "ZERANK_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Seconds SIGTERM waits for requests in flight before closing what is left [default: 20].
    #[arg(long, env = "ZERANK_DRAIN_DEADLINE_SECS")]
    pub drain_deadline_secs: Option<f64>,
    /// Require `Authorization: Bearer <key>` (or the bare key) on scoring routes.
    #[arg(long, env = "ZERANK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Require the API key on /health and /metrics too; a bare switch means true
    /// [default: false].
    #[arg(
        long,
        env = "ZERANK_PROTECT_HEALTH_AND_METRICS",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub protect_health_and_metrics: Option<bool>,
    /// Log format.
    #[arg(long, env = "ZERANK_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL file with one {"query", "document"} object per line; `-` reads stdin.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the scores, one per line [default: stdout].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write raw scores (see README: the reference's unscaled score) instead of 0-1 scores.
    #[arg(long)]
    pub raw: bool,
}

impl Settings {
    /// Defaults overlaid with the settings file, then with environment and flags.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let mut settings = Self::from_file(args.model.config.as_deref())?;
        settings.apply_model_args(&args.model);
        set(&mut settings.host, &args.host);
        set(&mut settings.port, &args.port);
        if !args.served_model_names.is_empty() {
            settings.served_model_names = args
                .served_model_names
                .iter()
                .flat_map(|value| value.split(';'))
                .map(split_names)
                .collect();
        }
        set(
            &mut settings.max_concurrent_requests,
            &args.max_concurrent_requests,
        );
        set(&mut settings.max_queued_tokens, &args.max_queued_tokens);
        set(
            &mut settings.max_documents_per_request,
            &args.max_documents_per_request,
        );
        set(&mut settings.payload_limit_bytes, &args.payload_limit_bytes);
        set(
            &mut settings.request_timeout_secs,
            &args.request_timeout_secs,
        );
        set(&mut settings.max_connections, &args.max_connections);
        set(
            &mut settings.header_read_timeout_secs,
            &args.header_read_timeout_secs,
        );
        set(
            &mut settings.body_read_timeout_secs,
            &args.body_read_timeout_secs,
        );
        set(&mut settings.max_header_bytes, &args.max_header_bytes);
        set(&mut settings.drain_deadline_secs, &args.drain_deadline_secs);
        set(
            &mut settings.protect_health_and_metrics,
            &args.protect_health_and_metrics,
        );
        set(&mut settings.log_format, &args.log_format);
        set_some(&mut settings.api_key, &args.api_key);
        // A trailing newline from a mounted secret is not part of the key.
        settings.api_key = settings.api_key.map(|key| key.trim().to_owned());
        settings.validate()?;
        Ok(settings)
    }

    /// Settings for offline scoring: the file and the model flags.
    pub fn resolve_model(args: &ModelArgs) -> anyhow::Result<Self> {
        let mut settings = Self::from_file(args.config.as_deref())?;
        settings.apply_model_args(args);
        settings.validate()?;
        Ok(settings)
    }

    fn from_file(explicit: Option<&Path>) -> anyhow::Result<Self> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => DEFAULT_CONFIG_FILE.into(),
            None => return Ok(Settings::default()),
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|err| anyhow::anyhow!("settings file {}: {err}", path.display()))?;
        toml::from_str(&text)
            .map_err(|err| anyhow::anyhow!("settings file {}: {err}", path.display()))
    }

    fn apply_model_args(&mut self, args: &ModelArgs) {
        set_list(&mut self.model, &args.model);
        set_list(&mut self.revision, &args.revision);
        set_list(&mut self.recipe, &args.recipe);
        set_list(&mut self.instruction, &args.instruction);
        set_list(&mut self.score_temperature, &args.score_temperature);
        set(&mut self.dtype, &args.dtype);
        set(&mut self.device, &args.device);
        set(&mut self.max_batch_tokens, &args.max_batch_tokens);
        set(&mut self.max_batch_pairs, &args.max_batch_pairs);
        set_some(&mut self.max_tokens_per_doc, &args.max_tokens_per_doc);
        set_some(&mut self.max_length, &args.max_length);
        set(&mut self.prefix_sharing, &args.prefix_sharing);
        set(&mut self.cpu_blas, &args.cpu_blas);
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.device
            .parse::<DeviceSpec>()
            .map_err(anyhow::Error::msg)?;
        self.dtype
            .parse::<DTypeSpec>()
            .map_err(anyhow::Error::msg)?;
        self.cpu_blas
            .parse::<CpuBlas>()
            .map_err(anyhow::Error::msg)?;
        let counts = [
            ("max_batch_tokens", self.max_batch_tokens, 1_usize << 24),
            ("max_batch_pairs", self.max_batch_pairs, 1 << 16),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests,
                1 << 20,
            ),
            ("max_queued_tokens", self.max_queued_tokens, 1 << 40),
            (
                "max_documents_per_request",
                self.max_documents_per_request,
                1 << 20,
            ),
            ("payload_limit_bytes", self.payload_limit_bytes, 1 << 32),
            ("max_connections", self.max_connections, 1 << 20),
            ("max_header_bytes", self.max_header_bytes, 1 << 20),
        ];
        for (name, value, most) in counts {
            anyhow::ensure!(
                (1..=most).contains(&value),
                "{name} must be between 1 and {most}; got {value}"
            );
        }
        if let Some(n) = self.max_tokens_per_doc {
            anyhow::ensure!(n > 0, "max_tokens_per_doc must be positive");
        }
        if let Some(n) = self.max_length {
            anyhow::ensure!(n > 0, "max_length must be positive");
        }
        let durations = [
            ("request_timeout_secs", self.request_timeout_secs),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("body_read_timeout_secs", self.body_read_timeout_secs),
            ("drain_deadline_secs", self.drain_deadline_secs),
        ];
        for (name, value) in durations {
            anyhow::ensure!(
                value.is_finite() && value > 0.0 && value <= MAX_DURATION_SECS,
                "{name} must be above 0 and at most {MAX_DURATION_SECS} (a day); got {value}"
            );
        }
        if let Some(key) = &self.api_key {
            anyhow::ensure!(
                !key.trim().is_empty(),
                "api_key is empty: set a key, or leave ZERANK_API_KEY / --api-key unset to serve without one"
            );
        }
        self.models()?;
        Ok(())
    }

    /// Every served model with its own settings, in order.
    pub fn models(&self) -> anyhow::Result<Vec<ModelSettings>> {
        let count = self.model.len();
        anyhow::ensure!(count > 0, "no model to serve: `model` is empty");
        let revisions = per_model("revision", &self.revision, count)?;
        let recipes = per_model("recipe", &self.recipe, count)?;
        let instructions = per_model("instruction", &self.instruction, count)?;
        let temperatures = per_model("score_temperature", &self.score_temperature, count)?;
        anyhow::ensure!(
            self.served_model_names.len() <= count,
            "served_model_names has {} lists of names for {count} models",
            self.served_model_names.len()
        );
        let mut models = Vec::with_capacity(count);
        for (i, model) in self.model.iter().enumerate() {
            let recipe = match &recipes[i] {
                Some(recipe) => recipe.parse::<RecipeChoice>().map_err(anyhow::Error::msg)?,
                None => RecipeChoice::default(),
            };
            if let Some(t) = temperatures[i] {
                anyhow::ensure!(
                    t.is_finite() && t > 0.0,
                    "score_temperature must be a positive number; got {t}"
                );
            }
            let names = match self.served_model_names.get(i) {
                Some(names) if !names.is_empty() => names.clone(),
                _ => default_names(model),
            };
            models.push(ModelSettings {
                load: LoadOptions {
                    model: model.clone(),
                    revision: revisions[i].clone(),
                    // Checked by `validate` before.
                    device: self.device.parse().unwrap_or_default(),
                    dtype: self.dtype.parse().unwrap_or_default(),
                    max_length: self.max_length,
                    share_prefixes: self.prefix_sharing,
                    cpu_blas: self.cpu_blas.parse().unwrap_or_default(),
                    recipe,
                    score_temperature: temperatures[i],
                    instruction: instructions[i].clone().filter(|s| !s.is_empty()),
                },
                served_names: names,
            });
        }
        let mut seen = std::collections::HashSet::new();
        for name in models.iter().flat_map(|m| &m.served_names) {
            anyhow::ensure!(
                seen.insert(name.as_str()),
                "the served model name `{name}` is given to two models; set served_model_names to tell them apart"
            );
        }
        Ok(models)
    }

    pub fn connection_limits(&self) -> crate::http::ConnectionLimits {
        use std::time::Duration;
        crate::http::ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs_f64(self.header_read_timeout_secs),
            // hyper's buffer is the hard stop; the router answers 431 in JSON below it.
            max_head_bytes: (self.max_header_bytes * 4).max(64 * 1024),
            drain_deadline: Duration::from_secs_f64(self.drain_deadline_secs),
        }
    }

    pub fn batch_budget(&self) -> BatchBudget {
        BatchBudget {
            max_tokens: self.max_batch_tokens,
            max_sequences: self.max_batch_pairs,
        }
    }

    /// For the start-up log: the API key never appears.
    pub fn redacted(&self) -> Self {
        Settings {
            api_key: self.api_key.as_ref().map(|_| "<redacted>".into()),
            ..self.clone()
        }
    }
}

/// A day: a longer duration setting is a typo.
const MAX_DURATION_SECS: f64 = 86_400.0;

/// One served model: what to load, and the names requests may use for it.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub load: LoadOptions,
    pub served_names: Vec<String>,
}

/// The names a model answers to by default: a Hub id and its last component
/// (`zeroentropy/zerank-1-small`, `zerank-1-small`); for a local directory only its name, so
/// that no path shows in responses.
fn default_names(model: &str) -> Vec<String> {
    let short = model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(model)
        .to_owned();
    if std::path::Path::new(model).is_dir() || short == model {
        vec![short]
    } else {
        vec![model.to_owned(), short]
    }
}

/// A per-model setting: none, one for every model, or one per model.
fn per_model<T: Clone>(name: &str, values: &[T], count: usize) -> anyhow::Result<Vec<Option<T>>> {
    match values.len() {
        0 => Ok(vec![None; count]),
        1 => Ok(vec![Some(values[0].clone()); count]),
        n if n == count => Ok(values.iter().cloned().map(Some).collect()),
        n => anyhow::bail!(
            "`{name}` has {n} values for {count} models: give one for every model, or one per model"
        ),
    }
}

fn split_names(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A single value or a list.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(value) => vec![value],
        OneOrMany::Many(values) => values,
    })
}

/// A list of names (the first model's), or a list of lists (one per model).
fn name_groups<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Groups {
        One(Vec<String>),
        Many(Vec<Vec<String>>),
    }
    Ok(match Groups::deserialize(d)? {
        Groups::One(names) if names.is_empty() => Vec::new(),
        Groups::One(names) => vec![names],
        Groups::Many(groups) => groups,
    })
}

/// A list given on a higher layer replaces the one below.
fn set_list<T: Clone>(target: &mut Vec<T>, value: &[T]) {
    if !value.is_empty() {
        *target = value.to_vec();
    }
}

/// A setting given on a higher layer replaces the one below.
fn set<T: Clone>(target: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *target = v.clone();
    }
}

fn set_some<T: Clone>(target: &mut Option<T>, value: &Option<T>) {
    if value.is_some() {
        *target = value.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            "port = 9000\nmax_batch_pairs = 8\nhost = \"127.0.0.1\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "zerank-server",
            "--config",
            file.to_str().unwrap(),
            "--port",
            "9100",
            "--api-key",
            "s3cret",
        ])
        .unwrap();
        let settings = Settings::resolve(&cli.serve).unwrap();
        assert_eq!(settings.port, 9100);
        assert_eq!(settings.max_batch_pairs, 8);
        assert_eq!(settings.host, "127.0.0.1");
        assert_eq!(
            settings.max_batch_tokens,
            Settings::default().max_batch_tokens
        );
        assert_eq!(settings.model, vec![DEFAULT_MODEL.to_owned()]);
        assert!(!format!("{:?}", settings.redacted()).contains("s3cret"));
    }

    #[test]
    fn per_model_settings_take_one_value_or_one_per_model() {
        let cli = Cli::try_parse_from([
            "zerank-server",
            "--model",
            "org/a,org/b",
            "--recipe",
            "zerank,qwen3-reranker",
            "--score-temperature",
            "2",
            "--served-model-names",
            "first,alias",
            "--served-model-names",
            "second",
        ])
        .unwrap();
        let models = Settings::resolve(&cli.serve).unwrap().models().unwrap();
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].load.recipe, RecipeChoice::Zerank);
        assert_eq!(models[1].load.recipe, RecipeChoice::Qwen3Reranker);
        assert_eq!(models[0].load.score_temperature, Some(2.0));
        assert_eq!(models[1].load.score_temperature, Some(2.0));
        assert_eq!(models[0].served_names, vec!["first", "alias"]);
        assert_eq!(models[1].served_names, vec!["second"]);

        let three = Cli::try_parse_from([
            "zerank-server",
            "--model",
            "org/a,org/b",
            "--recipe",
            "zerank,zerank,zerank",
        ])
        .unwrap();
        let err = Settings::resolve(&three.serve).unwrap_err().to_string();
        assert!(err.contains("3 values for 2 models"), "{err}");

        let clash = Cli::try_parse_from(["zerank-server", "--model", "a/x,b/x"]).unwrap();
        let err = Settings::resolve(&clash.serve).unwrap_err().to_string();
        assert!(err.contains("`x`"), "{err}");
    }

    #[test]
    fn default_names_hide_local_paths() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("my-reranker");
        std::fs::create_dir(&local).unwrap();
        assert_eq!(default_names(local.to_str().unwrap()), vec!["my-reranker"]);
        assert_eq!(
            default_names("zeroentropy/zerank-1-small"),
            vec!["zeroentropy/zerank-1-small", "zerank-1-small"]
        );
    }

    #[test]
    fn absurd_settings_are_refused() {
        for flag in [
            "--request-timeout-secs",
            "--header-read-timeout-secs",
            "--body-read-timeout-secs",
            "--drain-deadline-secs",
        ] {
            for bad in ["1e20", "0", "-1", "inf", "NaN"] {
                let arg = format!("{flag}={bad}");
                let cli = Cli::try_parse_from(["zerank-server", arg.as_str()]).unwrap();
                let err = Settings::resolve(&cli.serve).unwrap_err().to_string();
                assert!(
                    err.contains(&flag[2..].replace('-', "_")),
                    "{flag} {bad}: {err}"
                );
            }
        }
        for (flag, bad) in [
            ("--max-connections", "0"),
            ("--max-batch-tokens", "99999999999"),
            ("--max-header-bytes", "0"),
        ] {
            let cli = Cli::try_parse_from(["zerank-server", flag, bad]).unwrap();
            assert!(Settings::resolve(&cli.serve).is_err(), "{flag} {bad}");
        }
    }

    #[test]
    fn boolean_settings_are_switches_too() {
        let bare = Cli::try_parse_from([
            "zerank-server",
            "--protect-health-and-metrics",
            "--prefix-sharing",
        ])
        .unwrap();
        assert_eq!(bare.serve.protect_health_and_metrics, Some(true));
        assert_eq!(bare.serve.model.prefix_sharing, Some(true));
        let explicit = Cli::try_parse_from(["zerank-server", "--prefix-sharing=false"]).unwrap();
        assert_eq!(explicit.serve.model.prefix_sharing, Some(false));
    }

    #[test]
    fn an_empty_or_blank_api_key_refuses_to_start() {
        for key in ["", "   ", "\n"] {
            let cli = Cli::try_parse_from(["zerank-server", "--api-key", key]).unwrap();
            let err = Settings::resolve(&cli.serve).unwrap_err().to_string();
            assert!(err.contains("api_key is empty"), "{key:?}: {err}");
        }
        let cli = Cli::try_parse_from(["zerank-server", "--api-key", "s3cret\n"]).unwrap();
        assert_eq!(
            Settings::resolve(&cli.serve).unwrap().api_key.as_deref(),
            Some("s3cret")
        );
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "prot = 9000\n").unwrap();
        let args = ServeArgs {
            model: ModelArgs {
                config: Some(file.clone()),
                ..ModelArgs::default()
            },
            ..ServeArgs::default()
        };
        let err = Settings::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
        std::fs::write(&file, "device = \"tpu\"\n").unwrap();
        assert!(
            Settings::resolve(&args)
                .unwrap_err()
                .to_string()
                .contains("tpu")
        );
    }

    #[test]
    fn the_shipped_config_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let shipped: Settings = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(shipped, Settings::default());
    }
}
