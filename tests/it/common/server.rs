//! A server on a real TCP port for the HTTP tests, and what they compare it with.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zerank_server::model::{Engine, TokenLimits};
use zerank_server::server::Listeners;
use zerank_server::settings::{ScoringSettings, ServerSettings, Settings};

use super::fixture;

pub struct TestServer {
    pub address: SocketAddr,
    /// The admin port's address, when started with one.
    pub admin_address: Option<SocketAddr>,
    api_key: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub fn start(configure: impl FnOnce(&mut Settings)) -> Self {
        Self::launch(configure, false)
    }

    /// With an admin port (`/health` and `/metrics` alone) on a loopback port of its own.
    pub fn start_with_admin(configure: impl FnOnce(&mut Settings)) -> Self {
        Self::launch(configure, true)
    }

    fn launch(configure: impl FnOnce(&mut Settings), with_admin: bool) -> Self {
        let mut settings = Settings {
            scoring: ScoringSettings {
                model: vec![fixture("tiny").to_string_lossy().into_owned()],
                device: zerank_server::model::DeviceSpec::Cpu,
                // The goldens are f32; `auto` takes bf16 on CPUs with AVX512-BF16 or AMX.
                dtype: zerank_server::model::DTypeSpec::F32,
                ..ScoringSettings::default()
            },
            server: ServerSettings {
                host: "127.0.0.1".into(),
                port: 0,
                // Off: a test that compares scores must have them computed; tests/cache.rs
                // turns it on.
                score_cache_bytes: 0,
                ..ServerSettings::default()
            },
            ..Settings::default()
        };
        configure(&mut settings);
        let api_key = settings.server.api_key.clone();
        // Bound here and handed over: the port is known before the server starts, and no
        // other process can take it in between.
        let bind = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            listener
        };
        let std_listener = bind();
        let address = std_listener.local_addr().unwrap();
        let std_admin = with_admin.then(bind);
        let admin_address = std_admin.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listeners = Listeners {
                    main: tokio::net::TcpListener::from_std(std_listener)?,
                    admin: std_admin
                        .map(tokio::net::TcpListener::from_std)
                        .transpose()?,
                };
                zerank_server::server::serve_on(listeners, settings, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let server = TestServer {
            address,
            admin_address,
            api_key,
            stop: Some(stop),
            thread: Some(thread),
        };
        server.wait_healthy();
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn wait_healthy(&self) {
        // The status of the first answer; ureq reports other than 2xx as errors.
        let mut status = None;
        wait_until(
            "the server did not become healthy",
            Duration::from_secs(60),
            || {
                let mut probe = ureq::get(&self.url("/health"));
                if let Some(key) = &self.api_key {
                    probe = probe.set("authorization", &format!("Bearer {key}"));
                }
                status = probe.call().ok().map(|response| response.status());
                status.is_some()
            },
        );
        assert_eq!(status, Some(200));
    }

    /// POSTs a JSON body; any status comes back with its headers and JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, "application/json", &body.to_string())
    }

    pub fn post_raw(&self, path: &str, content_type: &str, body: &str) -> Reply {
        let result = ureq::post(&self.url(path))
            .set("content-type", content_type)
            .send_string(body);
        Reply::from(result)
    }

    pub fn get(&self, path: &str) -> Reply {
        Reply::from(ureq::get(&self.url(path)).call())
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text;
        text.lines()
            .find(|line| line.split([' ', '{']).next() == Some(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not in /metrics"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Reply {
    pub fn from(result: Result<ureq::Response, ureq::Error>) -> Self {
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(err) => panic!("transport error: {err}"),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .map(|name| {
                let value = response.header(&name).unwrap_or("").to_owned();
                (name, value)
            })
            .collect();
        let text = response.into_string().unwrap();
        Reply {
            status,
            headers,
            text,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// An error reply in the one error shape, of this status.
    pub fn assert_error(&self, status: u16, error_type: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        let body = self.json();
        assert_eq!(body["error_type"], error_type, "{body}");
        for field in ["error", "message", "detail"] {
            assert!(
                body[field].as_str().is_some_and(|s| !s.is_empty()),
                "{body}"
            );
        }
        body
    }
}

pub const QUERY: &str = "What is the capital of France?";
pub const DOCUMENTS: [&str; 5] = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "The Eiffel Tower is in Paris.",
    "",
    "France is a country in Western Europe; its capital is Paris.",
];

/// Scores of the engine itself, one pair alone.
pub fn engine_scores(engine: &Engine, query: &str, documents: &[&str]) -> Vec<(f32, f32)> {
    documents
        .iter()
        .map(|d| {
            let ids = engine
                .encoder()
                .encode(query, d, None, TokenLimits::default())
                .unwrap()
                .ids;
            let s = engine.score_batch(&[&ids]).unwrap().scores[0];
            (s.score, s.raw)
        })
        .collect()
}

pub fn close(a: f64, b: f32) -> bool {
    (a - b as f64).abs() <= 1e-5
}

pub fn fixture_path(name: &str) -> String {
    fixture(name).to_string_lossy().into_owned()
}

/// The server binary on the tiny fixture on a loopback port of its choosing, `args` added;
/// returns the process and its port once `/health` answers 200.
pub fn spawn_binary(args: &[&str]) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zerank-server"))
        .args(["--model", &fixture_path("tiny"), "--host", "127.0.0.1"])
        .args(["--port", "0", "--device", "cpu"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The port comes from the start-up log line; the rest of the log is drained unread, so
    // that the server never blocks on a full pipe.
    let (sender, port) = std::sync::mpsc::channel();
    let log = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in log.lines().map_while(Result::ok) {
            if line.contains("listening") {
                let _ = sender.send(listening_port(&line));
            }
        }
    });
    let port = port
        .recv_timeout(Duration::from_secs(60))
        .expect("the server never logged its listening address");
    let health = format!("http://127.0.0.1:{port}/health");
    wait_until(
        "the server never became healthy",
        Duration::from_secs(60),
        || ureq::get(&health).call().is_ok(),
    );
    (child, port)
}

/// The port of `127.0.0.1:PORT` in a log line.
fn listening_port(line: &str) -> u16 {
    let (_, after) = line
        .split_once("127.0.0.1:")
        .unwrap_or_else(|| panic!("no address in `{line}`"));
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no port in `{line}`"))
}

/// Sends SIGTERM, as an orchestrator stops the server.
pub fn sigterm(child: &Child) {
    send_signal(child, libc::SIGTERM);
}

/// Sends `signal` to a process this test started.
pub fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal, to a process this test started and has not reaped.
    assert_eq!(
        unsafe { libc::kill(pid, signal) },
        0,
        "signal {signal} not sent"
    );
}

/// Stops the server with SIGTERM and waits up to `limit` for it to exit; killed and a
/// failure past that.
pub fn terminate(mut child: Child, limit: Duration) -> ExitStatus {
    sigterm(&child);
    wait_for_exit(&mut child, limit)
}

/// The exit status of a process that is exiting; killed and a failure after `limit`.
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server was still running {limit:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the server closes the connection (or `limit` passes); returns what it sent
/// and how long the connection lasted.
pub fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

/// GETs `path` over an open keep-alive connection; the whole response, read by its length.
pub fn get_on(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 65536];
    loop {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "closed");
        received.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&received);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("a content-length");
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

/// An HTTP/2 connection with prior knowledge to `address`: its request sender, and the
/// connection driven on a task of its own (it ends when the server closes it).
pub async fn http2_connect(
    address: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<axum::body::Body>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    (sender, tokio::spawn(connection))
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
