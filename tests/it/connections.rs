//! Connections that hold the server without using it: HTTP/2 connections that send nothing,
//! a main port full of connections while probes keep coming, clients that never read.

use crate::common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::server::{
    TestServer, get_on, http2_connect, read_until_closed, spawn_binary, wait_until,
};
use serde_json::json;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn idle_http2_connections_are_closed_within_the_idle_limit() {
    let server = TestServer::start(|settings| settings.server.header_read_timeout_secs = 1.0);
    // The preface and nothing more: no handshake, no stream.
    let mut preface_only = TcpStream::connect(server.address).unwrap();
    preface_only.write_all(PREFACE).unwrap();
    let (_, lasted) = read_until_closed(&mut preface_only, Duration::from_secs(20));
    // The 1 s limit, the 1 s grace for a GOAWAY, and a loaded machine's slack.
    assert!(lasted < Duration::from_secs(5), "preface only: {lasted:?}");

    // A real HTTP/2 client: served, then closed once it has had no stream open for the limit.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, idle_for) = runtime.block_on(async {
        let (mut sender, connection) = http2_connect(server.address).await;
        let request = hyper::Request::get(format!("http://{}/health", server.address))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
            .await
            .unwrap();
        let answered = Instant::now();
        tokio::time::timeout(Duration::from_secs(20), connection)
            .await
            .expect("the idle HTTP/2 connection stayed open")
            .unwrap()
            .unwrap();
        (status, answered.elapsed())
    });
    assert_eq!(status, 200);
    assert!(idle_for < Duration::from_secs(5), "idle h2: {idle_for:?}");
    assert!(server.metric("zerank_connection_errors_total") >= 2.0);
}

#[test]
fn an_http2_client_that_never_opens_its_flow_control_window_is_closed() {
    let server = TestServer::start(|settings| settings.server.response_write_timeout_secs = 1.0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lasted = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(server.address)
            .await
            .unwrap();
        // HTTP/2's smallest windows, and a body that is never read: the client answers pings
        // and reads the socket, but never takes more than the first 64 KiB.
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(65_535)
                .initial_connection_window_size(65_535)
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let document = "lorem ipsum dolor sit amet ".repeat(40_000);
        let body = json!({ "query": "q", "documents": [document], "return_documents": true });
        let request = hyper::Request::post(format!("http://{}/rerank", server.address))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let answered = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(30), connection).await;
        assert!(ended.is_ok(), "the stalled HTTP/2 connection stayed open");
        drop(response);
        answered.elapsed()
    });
    // Within two write timeouts of 1 s, and a loaded machine's slack.
    assert!(lasted < Duration::from_secs(6), "stalled h2: {lasted:?}");
    let counted = "zerank_connection_errors_total{kind=\"write_timeout\"} 1\n";
    assert!(server.get("/metrics").text.contains(counted));
}

#[test]
fn the_admin_port_answers_health_and_metrics_while_the_main_port_is_full() {
    let server = TestServer::start_with_admin(|settings| {
        settings.server.max_connections = 3;
        settings.server.header_read_timeout_secs = 30.0;
    });
    let admin_port = server.admin_address.unwrap().port();
    let admin = |path: &str| {
        common::server::Reply::from(
            ureq::get(&format!("http://127.0.0.1:{admin_port}{path}")).call(),
        )
    };
    // Fill the main port: connections that answer are held until one is refused.
    let mut held = Vec::new();
    loop {
        assert!(held.len() <= 3, "more than max_connections were served");
        let mut stream = TcpStream::connect(server.address).unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // A /health answer comes in one write, so in one read.
        let mut first = [0u8; 4096];
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match std::io::Read::read(&mut stream, &mut first) {
            Ok(n) if n > 0 => {
                assert!(first.starts_with(b"HTTP/1.1 200"));
                held.push(stream);
            }
            _ => break,
        }
    }
    // Probes and scrapes on the admin port, each on a new connection, all answered.
    for _ in 0..20 {
        let health = admin("/health");
        assert_eq!(health.status, 200, "{}", health.text);
    }
    let metrics = admin("/metrics").text;
    assert!(
        !metrics.contains("zerank_connections_refused_total 0\n"),
        "{metrics}"
    );
    // Only probes there: scoring and the rest stay on the main port.
    admin("/v1/models").assert_error(404, "not_found");
    // The main port is still full, and its held connections still answer.
    let mut refused = TcpStream::connect(server.address).unwrap();
    let (reply, _) = read_until_closed(&mut refused, Duration::from_secs(5));
    assert!(reply.is_empty(), "{reply}");
    assert!(get_on(&mut held[0], "/health").starts_with("HTTP/1.1 200"));
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024.0
}

fn metric(port: u16, line: &str) -> bool {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .is_some_and(|text| text.contains(line))
}

#[test]
fn clients_that_never_read_their_answers_are_closed_and_their_memory_freed() {
    let (mut child, port) = spawn_binary(&[
        "--response-write-timeout-secs",
        "2",
        "--payload-limit-bytes",
        "33554432",
    ]);
    let pid = child.id();
    // Answers of ~24 MB each (the documents echoed back), far past what socket buffers hold.
    let document = "lorem ipsum dolor sit amet ".repeat(300_000);
    let body = json!({
        "query": "q",
        "documents": [document.clone(), document.clone(), document],
        "return_documents": true,
    })
    .to_string();
    let clients = 6;
    let before = rss_mib(pid);
    let mut silent = Vec::new();
    for _ in 0..clients {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // Never read.
        silent.push(stream);
    }
    // The answers are made, then stall: the server holds them until the deadline.
    let mut peak = before;
    let closed = format!("zerank_connection_errors_total{{kind=\"write_timeout\"}} {clients}\n");
    wait_until(
        "the non-reading clients were not closed",
        Duration::from_secs(60),
        || {
            peak = peak.max(rss_mib(pid));
            metric(port, &closed)
        },
    );
    assert!(
        peak > before + 100.0,
        "the stalled answers never held memory: {before:.0} -> {peak:.0} MiB"
    );
    // Every stalled connection is gone, and what it held goes back (mimalloc returns memory
    // unused for 2 s, when it next allocates: the probes below keep it doing so, as a
    // kubelet's would).
    wait_until("connections stayed open", Duration::from_secs(10), || {
        metric(port, "zerank_connections_open 1\n")
    });
    let mut after = peak;
    wait_until(
        "memory of the closed connections stayed resident",
        Duration::from_secs(30),
        || {
            let _ = ureq::get(&format!("http://127.0.0.1:{port}/health")).call();
            after = rss_mib(pid);
            after < before + (peak - before) / 3.0
        },
    );
    eprintln!("RSS: {before:.0} MiB before, {peak:.0} MiB peak, {after:.0} MiB after");
    drop(silent);
    let _ = child.kill();
    let _ = child.wait();
}

/// An admin `/health` probe on a new connection, as a kubelet makes it: whether it got 200.
fn probe(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let head = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if stream.write_all(head).is_err() {
        return false;
    }
    let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(5));
    reply.starts_with("HTTP/1.1 200")
}

/// Holds every place of a listener: `sockets` connections, each reopened as soon as the
/// server closes it; with `dribble`, each sends a head a byte at a time that never ends.
fn hold_cap(
    port: u16,
    sockets: usize,
    dribble: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let open = || {
            let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_nonblocking(true).unwrap();
            stream
        };
        let mut held: Vec<TcpStream> = (0..sockets).map(|_| open()).collect();
        let (mut reopened, mut tick) = (0, 0usize);
        while !stop.load(Ordering::Relaxed) {
            tick += 1;
            for stream in &mut held {
                let mut byte = [0u8; 1024];
                let closed = match std::io::Read::read(stream, &mut byte) {
                    Ok(_) => true,
                    Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
                };
                // A byte a second: "GET / HTTP/1.1\r\nx: aaaa..." that never ends.
                let head = b"GET / HTTP/1.1\r\nx: ";
                let failed = dribble
                    && tick % 100 == 0
                    && stream
                        .write(&[*head.get(tick / 100).unwrap_or(&b'a')])
                        .is_err();
                if closed || failed {
                    *stream = open();
                    reopened += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        reopened
    })
}

#[test]
fn admin_health_stays_reachable_while_idle_sockets_or_a_slowloris_hold_the_admin_cap() {
    let server = TestServer::start_with_admin(|_| {});
    let admin_port = server.admin_address.unwrap().port();
    for dribble in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let holder = hold_cap(admin_port, 64, dribble, stop.clone());
        std::thread::sleep(Duration::from_millis(500));
        let answered = (0..20).filter(|_| probe(admin_port)).count();
        stop.store(true, Ordering::Relaxed);
        let reopened = holder.join().unwrap();
        assert_eq!(
            answered, 20,
            "slowloris: {dribble}; {reopened} sockets reopened"
        );
    }
    // The places were made by closing idle connections, and counted.
    let evicted = "zerank_connection_errors_total{kind=\"evicted\"}";
    assert!(server.get("/metrics").text.contains(evicted));
}

#[test]
fn request_bodies_in_flight_stay_within_their_memory_budget() {
    const MIB: usize = 1024 * 1024;
    let budget = 64 * MIB;
    let (mut child, port) = spawn_binary(&[
        "--request-body-memory-bytes",
        &budget.to_string(),
        // The budget, not the stream cap, is what this test shows.
        "--http2-max-concurrent-streams",
        "100",
    ]);
    let pid = child.id();
    let before = rss_mib(pid);
    // 30 HTTP/1 uploads that send 3 MB of a declared 8 MB and stall.
    let uploads: Vec<_> = (0..30)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let head = "POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8000000\r\n\r\n";
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&vec![b' '; 3 * MIB]);
                stream
            })
        })
        .collect();
    // One HTTP/2 connection with 100 streams, each sending 2 MB of a declared 8 MB.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (streams, answers) = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let (mut streams, mut answers) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            let mut client = client.clone().ready().await.unwrap();
            let request = hyper::Request::post(format!("http://127.0.0.1:{port}/rerank"))
                .header("content-type", "application/json")
                .header("content-length", "8000000")
                .body(())
                .unwrap();
            let (response, mut body) = client.send_request(request, false).unwrap();
            body.send_data(vec![b' '; 2 * MIB].into(), false).unwrap();
            streams.push(body);
            answers.push(tokio::spawn(async move {
                let response = response.await.ok()?;
                let status = response.status().as_u16();
                let retry = response.headers().contains_key("retry-after");
                let mut body = response.into_body();
                let mut text = Vec::new();
                while let Some(Ok(chunk)) = body.data().await {
                    text.extend_from_slice(&chunk);
                }
                Some((status, retry, String::from_utf8_lossy(&text).into_owned()))
            }));
        }
        (streams, answers)
    });
    // Until the server's memory stops growing: what arrived is held by the stalled bodies.
    let mut peak = before;
    let (mut last_growth, started) = (Instant::now(), Instant::now());
    while started.elapsed() < Duration::from_secs(60)
        && (started.elapsed() < Duration::from_secs(3)
            || last_growth.elapsed() < Duration::from_secs(3))
    {
        let rss = rss_mib(pid);
        if rss > peak + 1.0 {
            last_growth = Instant::now();
        }
        peak = peak.max(rss);
        std::thread::sleep(Duration::from_millis(50));
    }
    let grown = peak - before;
    eprintln!("RSS {before:.0} -> {peak:.0} MiB (+{grown:.0})");
    // The budget, and for what it does not count: hyper's buffers, HTTP/2 windows, the
    // allocator's slack.
    let overhead = 64.0;
    assert!(
        grown < (budget / MIB) as f64 + overhead,
        "bodies took {grown:.0} MiB over a budget of {} MiB",
        budget / MIB
    );
    let refused = runtime.block_on(async {
        let mut refused = 0;
        for answer in answers {
            if let Ok(Ok(Some((status, retry, text)))) =
                tokio::time::timeout(Duration::from_secs(1), answer).await
            {
                assert_eq!(status, 503, "{text}");
                assert!(retry && text.contains("\"body_memory_full\""), "{text}");
                refused += 1;
            }
        }
        refused
    });
    eprintln!("{refused} of 100 HTTP/2 bodies refused");
    assert!(refused > 0, "no body was refused");
    drop(streams);
    drop(uploads);
    let _ = child.kill();
    let _ = child.wait();
}
