//! Settings, each declared once: its flag, environment variable, default and help, and its
//! key in the settings file. Those of the models and their batching ([`ScoringSettings`]) are
//! shared by `serve` and `score`; the server's own ([`ServerSettings`]) belong to `serve`
//! alone. Precedence: defaults < `config/default.toml` (or `--config FILE`) < `ZERANK_*`
//! environment < command-line flags.

mod models;
mod scoring;
mod server;
#[cfg(test)]
mod tests;
mod validation;
mod words;

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use models::{ModelSettings, NameList};
pub use scoring::{DEFAULT_MODEL, ScoringSettings};
pub use server::{LongDocuments, ModelNamePolicy, ServerSettings};

const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

/// Every setting of `serve`: the models' and the server's.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Settings file (TOML) [default: config/default.toml when present].
    #[arg(long, env = "ZERANK_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub scoring: ScoringSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerSettings,
}

#[derive(Parser, Debug)]
#[command(
    name = "zerank-server",
    version,
    about = "Serves rerankers (zerank, Qwen3-Reranker and the other causal-LM rerankers, BERT, XLM-RoBERTa and ModernBERT cross-encoders) over HTTP (POST /rerank)",
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

/// `score` takes the files, the settings file and the models' settings; the server's are
/// refused as unknown arguments (and ignored in the shared settings file).
#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub files: ScoreFiles,
    /// Settings file (TOML) [default: config/default.toml when present].
    #[arg(long, env = "ZERANK_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub scoring: ScoringSettings,
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
// One per process: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Invocation {
    Serve(Settings),
    Score(ScoreFiles, ScoringSettings),
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
                let ScoreArgs {
                    files,
                    config,
                    scoring,
                } = *args;
                let scoring = ScoringSettings::resolve(scoring, config.as_deref(), matches)?;
                Ok(Invocation::Score(files, scoring))
            }
            Some(Command::Openapi) => Ok(Invocation::Openapi),
            None => Ok(Invocation::Serve(Settings::resolve(cli.settings, matches)?)),
        }
    }
}

/// Parses the process's arguments; on a bad value that came from the environment, says so
/// (clap names only the flag), then exits as clap does.
pub fn parse_args() -> ArgMatches {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    command_for(&args)
        .try_get_matches_from(args)
        .unwrap_or_else(|err| {
            if let Some(variable) = environment_source(&err) {
                eprintln!("note: the value comes from the environment variable {variable}");
            }
            err.exit()
        })
}

/// The command line's parser. Under a subcommand the server's settings are not in use, so
/// their environment variables are not read: a container's `ZERANK_PORT` has no say in
/// `score`.
fn command_for(args: &[std::ffi::OsString]) -> clap::Command {
    let command = Cli::command();
    let subcommand = args
        .get(1)
        .and_then(|arg| arg.to_str())
        .is_some_and(|arg| command.find_subcommand(arg).is_some());
    if subcommand {
        command.mut_args(|arg| arg.env(None::<&str>))
    } else {
        command
    }
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
        declared_defaults()
    }
}

/// The declared defaults of a group of settings, with neither file nor environment.
fn declared_defaults<T: Args + FromArgMatches>() -> T {
    let command =
        T::augment_args(clap::Command::new("zerank-server")).mut_args(|arg| arg.env(None::<&str>));
    let matches = command
        .try_get_matches_from(["zerank-server"])
        .expect("the declared defaults parse");
    T::from_arg_matches(&matches).expect("the declared defaults parse")
}

impl Settings {
    /// `parsed` (defaults, environment, flags) with the settings file's values put under the
    /// environment's and the flags'; then checked.
    pub fn resolve(parsed: Settings, matches: &ArgMatches) -> anyhow::Result<Self> {
        // Before the merge: JSON has no infinities to carry them through.
        parsed.server.check_durations()?;
        let file = read_file(parsed.config.as_deref())?;
        let file_path = file.as_ref().map(|(path, _)| path.clone());
        let mut settings = with_file(&parsed, file, matches, &serde_json::Map::new())?;
        // The file read, named whether it was given or found: the start-up log shows it.
        settings.config = file_path;
        // A trailing newline from a mounted secret is not part of the key.
        settings.server.api_key = settings.server.api_key.map(|key| key.trim().to_owned());
        settings.validate()?;
        Ok(settings)
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

    /// For the start-up log: the API key never appears.
    pub fn redacted(&self) -> Self {
        let mut redacted = self.clone();
        redacted.server.api_key = self.server.api_key.as_ref().map(|_| "<redacted>".into());
        redacted
    }
}

/// The environment variable of the setting `key`.
fn environment_variable(key: &str) -> String {
    format!("ZERANK_{}", key.to_ascii_uppercase())
}

impl ScoringSettings {
    /// As [`Settings::resolve`], for `score`: the keys of the server's settings in the file
    /// are passed over (the file is shared with `serve`).
    pub fn resolve(
        parsed: ScoringSettings,
        config: Option<&Path>,
        matches: &ArgMatches,
    ) -> anyhow::Result<Self> {
        let serde_json::Value::Object(server_keys) =
            serde_json::to_value(ServerSettings::default())?
        else {
            unreachable!("settings serialize as a map")
        };
        let settings = with_file(&parsed, read_file(config)?, matches, &server_keys)?;
        settings.validate()?;
        Ok(settings)
    }
}

/// `parsed` with the settings file's values put under those that came from the command line
/// or the environment; the file's keys in `passed_over` are not read, any other unknown key
/// is an error.
fn with_file<T: Serialize + DeserializeOwned + Default>(
    parsed: &T,
    file: Option<(PathBuf, toml::Table)>,
    matches: &ArgMatches,
    passed_over: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<T> {
    let mut merged = serde_json::to_value(parsed)?;
    let Some((path, file)) = file else {
        return Ok(serde_json::from_value(merged)?);
    };
    let known = serde_json::to_value(T::default())?;
    let known = known.as_object().expect("settings serialize as a map");
    for (key, value) in file {
        if passed_over.contains_key(&key) {
            continue;
        }
        anyhow::ensure!(
            known.contains_key(&key),
            "settings file {}: unknown key `{key}`",
            path.display()
        );
        let value = serde_json::to_value(value)?;
        // Checked alone among the defaults, so that a bad value is reported with its key
        // (serde's message names only the type) and the file's name.
        let mut alone = known.clone();
        alone.insert(key.clone(), value.clone());
        serde_json::from_value::<T>(serde_json::Value::Object(alone))
            .map_err(|err| anyhow::anyhow!("settings file {}: {key}: {err}", path.display()))?;
        let given = matches!(
            matches.value_source(&key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            merged[&key] = value;
        }
    }
    Ok(serde_json::from_value(merged)?)
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
