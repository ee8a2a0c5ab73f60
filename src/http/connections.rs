//! Connections: accepted within a cap, served by hyper (HTTP/1.1, and HTTP/2 over cleartext
//! with prior knowledge) with a header-read timeout, and drained on shutdown up to a deadline.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Limits on connections, each a setting.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// A request's headers must arrive within this time of the connection being ready for
    /// them: opened, or done with its previous response. This bounds idle keep-alive too.
    pub header_read_timeout: Duration,
    /// hyper's own buffer for a request head; the router answers 431 well below it.
    pub max_head_bytes: usize,
    /// After the shutdown signal, connections still open this long are closed.
    pub drain_deadline: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets open
/// connections finish for up to the drain deadline, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes);
    builder.http2().timer(TokioTimer::new());
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Closed at once: the client sees a refusal, not a hang.
            metrics.connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let metrics = metrics.clone();
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            metrics.connections_open.inc();
            // hyper's header timeout starts once it knows the protocol; until then, ours.
            if !tokio::time::timeout(header_read_timeout, protocol_known(&stream))
                .await
                .unwrap_or(false)
            {
                metrics
                    .connection_errors
                    .with_label_values(&["header_timeout"])
                    .inc();
                metrics.connections_open.dec();
                return;
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection).await {
                let kind = classify(err.as_ref());
                tracing::debug!(error = %err, kind, "connection ended with an error");
                metrics.connection_errors.with_label_values(&[kind]).inc();
            }
            metrics.connections_open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        deadline_secs = limits.drain_deadline.as_secs_f64(),
        "shutdown: no new connections; draining open ones"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(limits.drain_deadline) => {
            tracing::warn!("drain deadline passed; closing the connections still open");
        }
    }
    Ok(())
}

/// Waits until the client has sent enough to tell HTTP/1.1 from HTTP/2's preface; false
/// when it closes first.
async fn protocol_known(stream: &tokio::net::TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut start = [0u8; PREFACE.len()];
    loop {
        match stream.peek(&mut start).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n == PREFACE.len() || start[..n] != PREFACE[..n] => return true,
            // Part of the preface: peeking again would return at once with the same bytes.
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The `kind` label of `zerank_connection_errors_total`: what hyper answered on its own
/// (431, 400) or why the connection ended early.
fn classify(err: &(dyn std::error::Error + 'static)) -> &'static str {
    match err.downcast_ref::<hyper::Error>() {
        Some(e) if e.is_parse_too_large() => "head_too_large",
        Some(e) if e.is_parse() || e.is_parse_status() => "malformed_request",
        Some(e) if e.is_timeout() => "header_timeout",
        Some(e) if e.is_incomplete_message() => "incomplete_request",
        Some(e) if e.is_canceled() || e.is_closed() => "closed",
        Some(_) => "protocol",
        None => "io",
    }
}

/// File descriptors the server needs besides its connections: the listener, model files,
/// logs, the runtime's own.
const RESERVED_FILES: u64 = 64;

/// Raises the open-file limit to its hard limit if needed, and refuses `max_connections`
/// that it cannot hold: past the limit, every new connection, `/health` included, would
/// time out instead of being refused.
pub fn ensure_open_file_limit(max_connections: usize) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let needed = max_connections as u64 + RESERVED_FILES;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write the struct they are given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Ok(());
        }
        if limit.rlim_cur < needed && limit.rlim_max > limit.rlim_cur {
            let raised = libc::rlimit {
                rlim_cur: needed.min(limit.rlim_max),
                rlim_max: limit.rlim_max,
            };
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit.rlim_cur = raised.rlim_cur;
            }
        }
        anyhow::ensure!(
            limit.rlim_cur >= needed,
            "max_connections = {max_connections} needs {needed} open files, but the limit is {} (hard {}): lower max_connections or raise `ulimit -n`",
            limit.rlim_cur,
            limit.rlim_max
        );
    }
    Ok(())
}
