//! Connections: accepted within a cap, served by hyper (HTTP/1.1, and HTTP/2 over cleartext
//! with prior knowledge) under a first-request and idle limit and a write deadline, and
//! drained on shutdown up to a deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use super::eviction::Connections;
use super::write_deadline::{Progress, WriteDeadline, WriteStalled};
use crate::metrics::Metrics;

/// Limits on connections, each a setting.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request's headers must arrive within this time of the connection being ready for
    /// them: opened, or done with its previous response. This bounds idle keep-alive too;
    /// an HTTP/2 connection with no open stream for this long is closed.
    pub header_read_timeout: Duration,
    /// hyper's own limit on a request head, HTTP/1's buffer and HTTP/2's header list alike;
    /// the router answers 431 in JSON well below it.
    pub max_head_bytes: usize,
    /// Requests one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// A write to the client that makes no progress for this long closes the connection; so
    /// does owing the client data through a whole such time while writing almost nothing.
    pub response_write_timeout: Duration,
    /// After the shutdown signal, connections still open this long are closed.
    pub drain_deadline: Duration,
}

impl ConnectionLimits {
    pub fn from_settings(settings: &crate::settings::Settings) -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs_f64(settings.server.header_read_timeout_secs),
            // hyper's buffer is the hard stop; the router answers 431 in JSON below it.
            max_head_bytes: (settings.server.max_header_bytes * 4).max(64 * 1024),
            http2_max_concurrent_streams: settings.server.http2_max_concurrent_streams,
            response_write_timeout: Duration::from_secs_f64(
                settings.server.response_write_timeout_secs,
            ),
            drain_deadline: Duration::from_secs_f64(settings.server.drain_deadline_secs),
        }
    }
}

/// A listening socket, what it serves and how many connections it holds at once.
pub struct Listener {
    pub socket: TcpListener,
    pub app: Router,
    pub max_connections: usize,
    /// This listener's own header read timeout (the limits' for the main port).
    pub header_read_timeout: Duration,
    /// When full, close the oldest connection with no request in progress to let a new one
    /// in, instead of refusing it.
    pub evict_idle: bool,
}

/// Bytes a connection that owes an answer must write within each response write timeout:
/// more than HTTP/2 keep-alive pings and window updates ever take, less than any answer.
const MIN_WRITE_PROGRESS: u64 = 1024;

/// Serves every listener until `shutdown` completes, then stops accepting, lets open
/// connections finish for up to the drain deadline, and returns.
pub async fn serve(
    listeners: Vec<Listener>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop, stopping) = watch::channel(false);
    let mut caps = Vec::new();
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        let open = Arc::new(Semaphore::new(listener.max_connections));
        caps.push((open.clone(), listener.max_connections));
        let limits = ConnectionLimits {
            header_read_timeout: listener.header_read_timeout,
            ..limits
        };
        let serving = Serving {
            builder: builder(limits),
            limits,
            metrics: metrics.clone(),
            stopping: stopping.clone(),
        };
        let evictable = listener.evict_idle.then(Arc::default);
        accepting.spawn(serving.accept(listener.socket, listener.app, open, evictable));
    }
    shutdown.await;
    let _ = stop.send(true);
    accepting.join_all().await;
    tracing::info!(
        deadline_secs = limits.drain_deadline.as_secs_f64(),
        "shutdown: no new connections; draining open ones"
    );
    // Each connection holds a permit of its listener's cap until it ends.
    let drained = async {
        for (open, cap) in caps {
            let _ = open.acquire_many(cap as u32).await;
        }
    };
    tokio::select! {
        _ = drained => tracing::info!("drained"),
        _ = tokio::time::sleep(limits.drain_deadline) => {
            tracing::warn!("drain deadline passed; closing the connections still open");
        }
    }
    Ok(())
}

/// hyper's settings for connections under `limits`.
fn builder(limits: ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes);
    // Pings find peers that are gone while a stream is open; the idle watch below closes
    // connections that are alive but send nothing.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout)
        // Past hyper's 16 KiB default, heads up to `max_header_bytes` are served, and larger
        // ones reach the router's JSON 431 instead of an empty one or a GOAWAY.
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_concurrent_streams);
    builder
}

/// What every connection of the server shares.
#[derive(Clone)]
struct Serving {
    builder: auto::Builder<TokioExecutor>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    stopping: watch::Receiver<bool>,
}

impl Serving {
    /// Accepts connections until the shutdown signal, each in its own task.
    async fn accept(
        self,
        listener: TcpListener,
        app: Router,
        open: Arc<Semaphore>,
        evictable: Option<Arc<Connections>>,
    ) {
        let mut stopping = self.stopping.clone();
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
                _ = stopped(&mut stopping) => return,
            };
            let permit = match (open.clone().try_acquire_owned(), &evictable) {
                (Ok(permit), _) => Some(permit),
                (Err(_), Some(connections)) => connections.make_room(&open).await,
                (Err(_), None) => None,
            };
            let Some(permit) = permit else {
                // Closed at once: the client sees a refusal, not a hang.
                self.metrics.connections_refused.inc();
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let connection = self.clone();
            let app = app.clone();
            let (requests, in_progress) = watch::channel(0usize);
            let registered = evictable.as_ref().map(|c| c.register(in_progress));
            tokio::spawn(async move {
                let metrics = connection.metrics.clone();
                metrics.connections_open.inc();
                let evicted = async {
                    match &registered {
                        Some(registered) => registered.evicted.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = connection.serve(stream, app, requests) => {}
                    _ = evicted => {
                        metrics.connection_errors.with_label_values(&["evicted"]).inc();
                    }
                }
                metrics.connections_open.dec();
                drop((permit, registered));
            });
        }
    }

    /// Serves one connection until it ends, is idle past the limit, or the server stops.
    /// `streams` counts its requests in progress.
    async fn serve(mut self, stream: TcpStream, app: Router, streams: watch::Sender<usize>) {
        let metrics = self.metrics.clone();
        let count_error = |kind: &str| metrics.connection_errors.with_label_values(&[kind]).inc();
        // hyper's header timeout starts once it knows the protocol; until then, ours.
        let protocol = tokio::time::timeout(self.limits.header_read_timeout, protocol_of(&stream));
        let Some(protocol) = protocol.await.ok().flatten() else {
            count_error("header_timeout");
            return;
        };
        let open_streams = streams.subscribe();
        let streams = Arc::new(streams);
        let progress = Arc::new(Progress::default());
        let service = {
            let progress = progress.clone();
            hyper::service::service_fn(move |request: hyper::Request<_>| {
                let stream = OpenStream::new(streams.clone());
                let progress = progress.clone();
                let response = app.clone().oneshot(request.map(axum::body::Body::new));
                async move {
                    let response = response.await?;
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        axum::body::Body::new(Tracked {
                            body,
                            _stream: stream,
                            progress,
                        })
                    }))
                }
            })
        };
        let io = WriteDeadline::new(stream, self.limits.response_write_timeout, progress.clone());
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        // HTTP/1's idle limit is hyper's header timeout; HTTP/2 has none of its own.
        let idle = async {
            match protocol {
                Protocol::Http2 => idle(open_streams, self.limits.header_read_timeout).await,
                Protocol::Http1 => std::future::pending().await,
            }
        };
        tokio::pin!(idle);
        let (mut closing, mut stop_seen) = (false, false);
        let ended = loop {
            let stall = Stall {
                progress: &progress,
                limit: self.limits.response_write_timeout,
                closing,
            };
            tokio::select! {
                ended = connection.as_mut() => break ended,
                _ = &mut idle, if !closing => {
                    count_error("header_timeout");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = stopped(&mut self.stopping), if !stop_seen => {
                    stop_seen = true;
                    connection.as_mut().graceful_shutdown();
                }
                // What the socket's own deadline cannot see: an HTTP/2 client that reads,
                // answers pings, but never opens its flow-control window, or ignores GOAWAY.
                _ = stall.wait() => {
                    count_error("write_timeout");
                    return;
                }
            }
        };
        if let Err(err) = ended {
            let kind = classify(err.as_ref());
            tracing::debug!(error = %err, kind, "connection ended with an error");
            count_error(kind);
        }
    }
}

/// Returns once the server is told to stop (or can no longer be).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Waits until the client has sent enough to tell HTTP/1.1 from HTTP/2's preface; `None`
/// when it closes first.
async fn protocol_of(stream: &TcpStream) -> Option<Protocol> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut start = [0u8; PREFACE.len()];
    loop {
        match stream.peek(&mut start).await {
            Ok(0) | Err(_) => return None,
            Ok(n) if start[..n] != PREFACE[..n] => return Some(Protocol::Http1),
            Ok(n) if n == PREFACE.len() => return Some(Protocol::Http2),
            // Part of the preface: peeking again would return at once with the same bytes.
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Returns once no stream has been open for `limit`.
async fn idle(mut open_streams: watch::Receiver<usize>, limit: Duration) {
    loop {
        let open = *open_streams.borrow_and_update();
        let changed = async {
            if open_streams.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        if open > 0 {
            changed.await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(limit) => return,
            _ = changed => {}
        }
    }
}

/// A request of a connection, from its head to the end of its response body (or until
/// either is dropped).
struct OpenStream(Arc<watch::Sender<usize>>);

impl OpenStream {
    fn new(streams: Arc<watch::Sender<usize>>) -> Self {
        streams.send_modify(|open| *open += 1);
        OpenStream(streams)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open -= 1);
    }
}

/// A connection that owes data (answers not yet written, or a GOAWAY sent) through a whole
/// write timeout and writes under [`MIN_WRITE_PROGRESS`] bytes in it.
struct Stall<'a> {
    progress: &'a Progress,
    limit: Duration,
    closing: bool,
}

impl Stall<'_> {
    /// Returns once the connection has stalled.
    async fn wait(self) {
        let written = || self.progress.written.load(Ordering::Relaxed);
        let owes = || self.closing || self.progress.handed.load(Ordering::Relaxed) > written();
        loop {
            let (owed, before) = (owes(), written());
            tokio::time::sleep(self.limit).await;
            if owed && owes() && written() - before < MIN_WRITE_PROGRESS {
                return;
            }
        }
    }
}

/// A response body that keeps its stream counted as open until it is sent or dropped, and
/// counts the bytes it hands over.
struct Tracked {
    body: axum::body::Body,
    _stream: OpenStream,
    progress: Arc<Progress>,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(data) = frame.data_ref()
        {
            let handed = data.len() as u64;
            self.progress.handed.fetch_add(handed, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The `kind` label of `zerank_connection_errors_total`: what hyper answered on its own
/// (431, 400) or why the connection ended early.
fn classify(err: &(dyn std::error::Error + 'static)) -> &'static str {
    if write_stalled(err) {
        return "write_timeout";
    }
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

/// Whether `err` comes from a write past its deadline. (`io::Error` hides its payload from
/// `source()`, so each link's is looked into.)
fn write_stalled(err: &(dyn std::error::Error + 'static)) -> bool {
    let stalled =
        |io: &std::io::Error| io.get_ref().is_some_and(|inner| inner.is::<WriteStalled>());
    let mut link = Some(err);
    while let Some(err) = link {
        // h2's errors have no `source()` either: their io error is asked for.
        if err.downcast_ref::<std::io::Error>().is_some_and(stalled)
            || err
                .downcast_ref::<h2::Error>()
                .and_then(h2::Error::get_io)
                .is_some_and(stalled)
        {
            return true;
        }
        link = err.source();
    }
    false
}

/// File descriptors the server needs besides its connections: the listener, model files,
/// logs, the runtime's own.
const RESERVED_FILES: u64 = 64;

/// Raises the open-file limit to its hard limit if needed, and refuses `connections` (every
/// listener's cap together) that it cannot hold: past the limit, every new connection,
/// `/health` included, would time out instead of being refused.
pub fn ensure_open_file_limit(connections: usize) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let needed = connections as u64 + RESERVED_FILES;
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
            "{connections} connections (max_connections, and the admin port's 64 if set) need {needed} open files, but the limit is {} (hard {}): lower max_connections or raise `ulimit -n`",
            limit.rlim_cur,
            limit.rlim_max
        );
    }
    Ok(())
}
