//! Hostile and careless clients: silent or slow connections, stalled bodies, too many
//! connections, oversized requests, compressed bodies, huge headers, HTTP/2, SIGTERM with a
//! request half sent, and settings that must not start a server.

use crate::common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::server::{
    DOCUMENTS, QUERY, TestServer, fixture_path, get_on, http2_connect, read_until_closed,
    spawn_binary, terminate, wait_until,
};
use serde_json::json;

fn quick_timeouts() -> TestServer {
    TestServer::start(|settings| {
        settings.server.header_read_timeout_secs = 1.0;
        settings.server.body_read_timeout_secs = 1.0;
    })
}

#[test]
fn silent_and_slow_connections_are_closed_in_time() {
    let server = quick_timeouts();
    // Sends nothing at all.
    let mut silent = TcpStream::connect(server.address).unwrap();
    let (_, lasted) = read_until_closed(&mut silent, Duration::from_secs(10));
    assert!(lasted < Duration::from_secs(4), "silent: {lasted:?}");

    // Sends its headers a byte every half second: 17 s for the whole head, against a 1 s
    // header read timeout.
    let mut slow = TcpStream::connect(server.address).unwrap();
    let started = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    for byte in head {
        // The server's close shows as a failed write once the reset comes back.
        if slow.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (reply, _) = read_until_closed(&mut slow, Duration::from_secs(5));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slow headers kept the connection for {:?}",
        started.elapsed()
    );
    assert!(
        !reply.contains("200 OK"),
        "slow headers were served: {reply}"
    );
    assert!(server.metric("zerank_connection_errors_total") >= 1.0);

    // Sends its headers, then stalls in the body: 408 in the one error shape.
    let mut stalled = TcpStream::connect(server.address).unwrap();
    stalled
        .write_all(
            b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\"",
        )
        .unwrap();
    let (reply, lasted) = read_until_closed(&mut stalled, Duration::from_secs(10));
    assert!(lasted < Duration::from_secs(5), "stalled body: {lasted:?}");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"error_type\":\"body_timeout\""), "{reply}");

    // An idle keep-alive connection is closed too, after a request.
    let mut idle = TcpStream::connect(server.address).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (reply, lasted) = read_until_closed(&mut idle, Duration::from_secs(10));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(lasted < Duration::from_secs(4), "idle: {lasted:?}");
}

#[test]
fn past_the_connection_cap_new_connections_are_refused_and_open_ones_still_answer() {
    let server = TestServer::start(|settings| {
        settings.server.max_connections = 3;
        settings.server.header_read_timeout_secs = 30.0;
    });
    // Wait until this connection is the only one open: the start-up health probes' have
    // been closed on the server's side too, so exactly three connections fill the cap.
    let mut first = TcpStream::connect(server.address).unwrap();
    wait_until(
        "other connections stay open",
        Duration::from_secs(30),
        || get_on(&mut first, "/metrics").contains("zerank_connections_open 1\n"),
    );
    let mut open = vec![first];
    open.extend((0..2).map(|_| TcpStream::connect(server.address).unwrap()));
    wait_until(
        "the three connections were never all open",
        Duration::from_secs(30),
        || get_on(&mut open[0], "/metrics").contains("zerank_connections_open 3\n"),
    );
    let mut refused = TcpStream::connect(server.address).unwrap();
    let (reply, lasted) = read_until_closed(&mut refused, Duration::from_secs(5));
    assert!(
        reply.is_empty() && lasted < Duration::from_secs(2),
        "{reply} {lasted:?}"
    );
    // The open connections still answer, /health included, and /metrics counts the refusal.
    assert!(get_on(&mut open[0], "/metrics").contains("zerank_connections_refused_total 1\n"));
    assert!(get_on(&mut open[1], "/health").starts_with("HTTP/1.1 200"));
    // Once connections close, new ones are served again.
    drop(open);
    wait_until(
        "no connection after the others closed",
        Duration::from_secs(30),
        || ureq::get(&server.url("/health")).call().is_ok(),
    );
}

#[test]
fn an_oversized_request_gets_413_at_once_while_a_small_one_is_served() {
    let server = TestServer::start(|settings| {
        settings.server.max_queued_tokens = 3_000;
    });
    let big: Vec<String> = (0..40)
        .map(|i| format!("document {i} {}", "many words of text ".repeat(20)))
        .collect();
    let small = std::thread::spawn({
        let url = server.url("/v1/rerank");
        move || {
            ureq::post(&url)
                .send_json(json!({ "query": QUERY, "documents": DOCUMENTS }))
                .map(|r| r.status())
                .map_err(|e| e.to_string())
        }
    });
    let started = Instant::now();
    let reply = server.post("/v1/rerank", &json!({ "query": QUERY, "documents": big }));
    let body = reply.assert_error(413, "request_too_large");
    assert!(started.elapsed() < Duration::from_secs(5));
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("3000") && message.contains("max_queued_tokens"),
        "{message}"
    );
    assert_eq!(small.join().unwrap(), Ok(200));
}

#[test]
fn every_answer_of_the_server_is_a_counted_json_error() {
    let server = TestServer::start(|settings| {
        settings.server.max_header_bytes = 4_096;
    });
    // Headers over the limit: 431 in JSON.
    let reply = common::server::Reply::from(
        ureq::get(&server.url("/health"))
            .set("x-padding", &"a".repeat(8_000))
            .call(),
    );
    reply.assert_error(431, "headers_too_large");
    // A compressed body: 415, not a JSON parse error.
    let reply = common::server::Reply::from(
        ureq::post(&server.url("/rerank"))
            .set("content-type", "application/json")
            .set("content-encoding", "gzip")
            .send_bytes(&[0x1f, 0x8b, 0x08, 0x00]),
    );
    reply.assert_error(415, "unsupported_encoding");
    // A declared body over the payload limit: 413 before any of it is read.
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream
        .write_all(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{}")
        .unwrap();
    let started = Instant::now();
    let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // A head past even hyper's buffer: hyper answers, and the connection error is counted.
    let mut stream = TcpStream::connect(server.address).unwrap();
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nx-padding: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = stream.write_all(huge.as_bytes());
    let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(5));
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    let metrics = server.get("/metrics").text;
    for kind in [
        "headers_too_large",
        "unsupported_encoding",
        "payload_too_large",
    ] {
        assert!(
            metrics.contains(&format!("zerank_errors_total{{kind=\"{kind}\"}} 1")),
            "{kind}"
        );
    }
    // The connection's task counts its error as it ends, which may be just after the reply.
    let counted = "zerank_connection_errors_total{kind=\"head_too_large\"} 1";
    wait_until(counted, Duration::from_secs(5), || {
        metrics.contains(counted) || server.get("/metrics").text.contains(counted)
    });
}

#[test]
fn http2_with_prior_knowledge_is_served() {
    let server = TestServer::start(|_| {});
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = runtime.block_on(async {
        let (mut sender, _connection) = http2_connect(server.address).await;
        let request = hyper::Request::post(format!("http://{}/v1/rerank", server.address))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                json!({ "query": QUERY, "documents": DOCUMENTS }).to_string(),
            ))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
            .await
            .unwrap();
        (status, body)
    });
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["results"].as_array().unwrap().len(), DOCUMENTS.len());
    assert!(
        server
            .get("/metrics")
            .text
            .contains("zerank_requests_total{route=\"/v1/rerank\",status=\"200\"} 1")
    );
}

#[test]
fn sigterm_with_a_stalled_request_exits_zero_within_the_drain_deadline() {
    let (child, port) = spawn_binary(&[
        "--drain-deadline-secs",
        "2",
        "--body-read-timeout-secs",
        "120",
    ]);
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled
        .write_all(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"query\":")
        .unwrap();
    // The stalled connection is open once a probe on a second one counts two.
    let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    wait_until(
        "the stalled request never arrived",
        Duration::from_secs(10),
        || get_on(&mut probe, "/metrics").contains("zerank_connections_open 2\n"),
    );
    drop(probe);
    let signalled = Instant::now();
    // Within 15 s, against a 2 s drain deadline.
    let status = terminate(child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    // The stalled request held the server for the whole drain deadline, and no longer.
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(6)).contains(&signalled.elapsed()),
        "{:?}",
        signalled.elapsed()
    );
}

#[test]
fn settings_that_would_break_every_request_refuse_to_start() {
    for (args, env, needle) in [
        (
            vec!["--request-timeout-secs", "1e20"],
            None,
            "request_timeout_secs",
        ),
        (vec![], Some(("ZERANK_API_KEY", "")), "api_key is empty"),
        (vec!["--api-key", "   "], None, "api_key is empty"),
        // Accepted once, and then no probe could get a head through or no request finish.
        (
            vec!["--max-header-bytes", "10"],
            None,
            "max_header_bytes must be between 1024",
        ),
        (
            vec!["--request-timeout-secs", "1e-9"],
            None,
            "request_timeout_secs must be between 0.1",
        ),
        (
            vec!["--response-write-timeout-secs", "0"],
            None,
            "response_write_timeout_secs must be between 1",
        ),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_zerank-server"));
        command
            .args(["--model", &fixture_path("tiny"), "--port", "0"])
            .args(&args);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn a_client_that_aborts_its_body_is_counted_as_a_disconnect_not_as_bad_json() {
    let server = TestServer::start(|_| {});
    let wait_for = |name: &str| {
        let mut metrics = String::new();
        wait_until(name, Duration::from_secs(10), || {
            metrics = server.get("/metrics").text;
            metrics.contains(name)
        });
        metrics
    };
    // Half the declared body, then the connection closes.
    let mut aborted = TcpStream::connect(server.address).unwrap();
    aborted
        .write_all(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"query\": \"q\", \"documents\": [")
        .unwrap();
    drop(aborted);
    let metrics = wait_for("zerank_errors_total{kind=\"client_disconnect\"} 1\n");
    assert!(!metrics.contains("kind=\"invalid_json\""), "{metrics}");
    assert_eq!(server.metric("zerank_client_disconnects_total"), 1.0);
    // A body that is all there but not JSON is still the client's error.
    server
        .post_raw("/rerank", "application/json", "{\"query\": ")
        .assert_error(400, "invalid_json");
}

#[test]
fn an_http2_client_that_resets_its_stream_mid_body_is_counted_as_a_disconnect() {
    let server = TestServer::start(|_| {});
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.address)
            .await
            .unwrap();
        let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
        let mut ping_pong = connection.ping_pong().expect("a ping handle");
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = hyper::Request::post(format!("http://{}/rerank", server.address))
            .header("content-type", "application/json")
            .header("content-length", "1000")
            .body(())
            .unwrap();
        let (_response, mut body) = client.send_request(request, false).unwrap();
        // Half the declared body, then two pings: a server answers a ping once it has read
        // the frames before it, and the second goes out after the data (pings may overtake
        // data waiting in the same write), so its answer means the server holds the stream
        // and its data. Then the stream is reset.
        body.send_data(
            b"{\"query\": \"q\", \"documents\": [".as_slice().into(),
            false,
        )
        .unwrap();
        ping_pong.ping(h2::Ping::opaque()).await.unwrap();
        ping_pong.ping(h2::Ping::opaque()).await.unwrap();
        body.send_reset(h2::Reason::CANCEL);
        // The connection's task runs only inside this block: a ping flushes the reset.
        ping_pong.ping(h2::Ping::opaque()).await.unwrap();
    });
    let counted = "zerank_errors_total{kind=\"client_disconnect\"} 1\n";
    let mut metrics = String::new();
    wait_until(counted, Duration::from_secs(10), || {
        metrics = server.get("/metrics").text;
        metrics.contains(counted)
    });
    assert!(!metrics.contains("kind=\"invalid_json\""), "{metrics}");
}

#[test]
fn http1_and_http2_take_the_same_header_limit_and_answer_it_in_json() {
    // max_header_bytes is 32 KiB by default: 20 KiB of headers pass, 40 KiB get the JSON 431.
    let server = TestServer::start(|_| {});
    let cases = [(20 * 1024, 200), (40 * 1024, 431), (20 * 1024, 200)];
    for (size, status) in cases {
        let reply = common::server::Reply::from(
            ureq::get(&server.url("/health"))
                .set("x-padding", &"a".repeat(size))
                .call(),
        );
        match status {
            200 => assert_eq!(reply.status, 200, "HTTP/1, {size} bytes: {}", reply.text),
            _ => drop(reply.assert_error(status, "headers_too_large")),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // One connection for every case: a head over the limit fails its own stream only.
        let (mut sender, connection) = http2_connect(server.address).await;
        for (size, status) in cases {
            let request = hyper::Request::get(server.url("/health"))
                .header("x-padding", "a".repeat(size))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), status, "HTTP/2, {size} bytes");
            let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
                .await
                .unwrap();
            if status == 431 {
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(body["error_type"], "headers_too_large", "{body}");
            }
        }
        assert!(
            !connection.is_finished(),
            "the HTTP/2 connection was closed"
        );
    });
}

/// CPU seconds (user and system) process `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name: state is the first field, utime the 12th and stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf reads a constant of the system.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn a_request_of_digits_that_will_be_refused_costs_little_cpu() {
    let (mut child, port) = spawn_binary(&["--max-queued-tokens", "20000"]);
    // 8 MB of digits, each its own token: 8M tokens against a queue of 20,000.
    let documents: Vec<String> = (0..800)
        .map(|i| {
            (0..10_000)
                .map(|k| char::from(b'0' + ((i * 7 + k * 3) % 10) as u8))
                .collect()
        })
        .collect();
    let body = json!({ "query": "q", "documents": documents }).to_string();
    let before = cpu_secs(child.id());
    let started = Instant::now();
    let reply = common::server::Reply::from(
        ureq::post(&format!("http://127.0.0.1:{port}/rerank"))
            .set("content-type", "application/json")
            .send_string(&body),
    );
    let used = cpu_secs(child.id()) - before;
    let _ = child.kill();
    let _ = child.wait();
    reply.assert_error(413, "request_too_large");
    eprintln!(
        "refused in {:?}, {used:.2} CPU seconds of the server",
        started.elapsed()
    );
    // Parsing the body is most of it; tokenizing all of it takes many seconds (debug build).
    assert!(used < 2.0, "{used:.2} CPU seconds to refuse");
}
