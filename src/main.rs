use std::io::{BufRead, BufWriter, Write};

use anyhow::Context;
use zerank_server::model::{Engine, TokenLimits};
use zerank_server::settings::{Invocation, LogFormat, ScoreFiles, Settings};
use zerank_server::telemetry::{self, TraceExport};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The causes on one line, no backtrace: these are errors of settings and inputs.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    zerank_server::keep_freed_memory();
    match Invocation::resolve(&zerank_server::settings::parse_args())? {
        Invocation::Openapi => {
            print!("{}", zerank_server::http::openapi::generate());
            Ok(())
        }
        Invocation::Score(args, settings) => {
            let _telemetry = telemetry::init(LogFormat::Text, None)?;
            score_file(&args, &settings)
        }
        Invocation::Serve(settings) => {
            // Before the runtime: the trace exporter's client must not live inside it.
            let export = settings
                .otlp_endpoint
                .as_deref()
                .map(|endpoint| TraceExport {
                    endpoint,
                    service_name: &settings.otlp_service_name,
                });
            let telemetry = telemetry::init(settings.log_format, export)?;
            tracing::info!(settings = ?settings.redacted(), "starting zerank-server {}", env!("CARGO_PKG_VERSION"));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let served = runtime.block_on(zerank_server::http::serve(settings));
            // Blocking work still running (a model load, a tokenization) does not hold the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            drop(telemetry);
            served
        }
    }
}

#[derive(serde::Deserialize)]
struct PairLine {
    query: String,
    document: String,
}

/// Pairs are read and scored in chunks, so that a file of any size streams through.
const PAIRS_PER_CHUNK: usize = 256;

fn score_file(args: &ScoreFiles, settings: &Settings) -> anyhow::Result<()> {
    let model = settings.models()?.swap_remove(0);
    let engine = Engine::load(&model.load)?;
    let limits = TokenLimits {
        max_document_tokens: settings.max_tokens_per_doc,
        ..TokenLimits::default()
    };
    let input: Box<dyn BufRead> = if args.input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut output: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let mut chunk: Vec<PairLine> = Vec::with_capacity(PAIRS_PER_CHUNK);
    let flush = |chunk: &mut Vec<PairLine>, output: &mut dyn Write| -> anyhow::Result<()> {
        let pairs: Vec<(&str, &str)> = chunk
            .iter()
            .map(|p| (p.query.as_str(), p.document.as_str()))
            .collect();
        for score in engine.score_pairs_offline(&pairs, None, limits, settings.batch_budget())? {
            writeln!(output, "{}", if args.raw { score.raw } else { score.score })?;
        }
        chunk.clear();
        Ok(())
    };
    for (number, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", number + 1))?;
        if line.trim().is_empty() {
            anyhow::bail!(
                "line {} is empty; every line must be a {{\"query\", \"document\"}} object",
                number + 1
            );
        }
        let pair: PairLine =
            serde_json::from_str(&line).with_context(|| format!("line {}", number + 1))?;
        chunk.push(pair);
        if chunk.len() == PAIRS_PER_CHUNK {
            flush(&mut chunk, &mut output)?;
        }
    }
    flush(&mut chunk, &mut output)?;
    output.flush()?;
    Ok(())
}
