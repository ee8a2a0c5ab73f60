use zerank_server::settings::Invocation;
use zerank_server::telemetry::{self, LogFormat, TraceExport};

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
    let arguments = zerank_server::settings::parse_args();
    match Invocation::resolve(&arguments)? {
        Invocation::Openapi => {
            print!("{}", zerank_server::http::openapi::generate());
            Ok(())
        }
        Invocation::Score(args, settings) => {
            let _telemetry = telemetry::init(LogFormat::Text, None)?;
            zerank_server::offline::score_file(&args, &settings)
        }
        Invocation::Serve(settings) => {
            // Before the runtime: the trace exporter's client must not live inside it.
            let export = settings
                .server
                .otlp_endpoint
                .as_deref()
                .map(|endpoint| TraceExport {
                    endpoint,
                    service_name: &settings.server.otlp_service_name,
                });
            // Dropped last, after the runtime: the spans still buffered are sent on the way out.
            let _telemetry = telemetry::init(settings.server.log_format, export)?;
            tracing::info!("starting zerank-server {}", env!("CARGO_PKG_VERSION"));
            let file = settings.config.as_deref();
            tracing::info!(
                "settings file: {}",
                file.map_or("none".into(), |path| path.display().to_string())
            );
            for (setting, value, source) in settings.non_defaults(&arguments) {
                tracing::info!(%value, %source, "setting {setting}");
            }
            if let Some(warning) = settings.server.open_listener_warning() {
                tracing::warn!("{warning}");
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let served = runtime.block_on(zerank_server::server::serve(settings));
            // Blocking work still running (a model load, a tokenization) does not hold the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            served
        }
    }
}
