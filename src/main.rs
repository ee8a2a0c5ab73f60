use tracing_subscriber::EnvFilter;
use zerank_server::settings::{Invocation, LogFormat};

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
            init_logging(LogFormat::Text);
            zerank_server::offline::score_file(&args, &settings)
        }
        Invocation::Serve(settings) => {
            init_logging(settings.log_format);
            tracing::info!(settings = ?settings.redacted(), "starting zerank-server {}", env!("CARGO_PKG_VERSION"));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let served = runtime.block_on(zerank_server::http::serve(settings));
            // Blocking work still running (a model load, a tokenization) does not hold the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            served
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
