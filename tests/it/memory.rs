//! Memory bounded before tokenizing: a 7.5 MB document, in each mode and recipe, is refused
//! at once or scored from a bounded piece, by the server and the offline scorer, and their
//! peak memory shows it. In a process of its own, so that no other test's allocations share
//! the peak.

use crate::common;

use std::time::Instant;

use common::server::TestServer;
use serde_json::json;
use zerank_server::model::RecipeChoice;
use zerank_server::settings::LongDocuments;

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// The largest peak resident memory of the child processes waited for.
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), 0);
        usage
    };
    usage.ru_maxrss as u64 * 1024
}

/// The peak resident memory above the present while `work` runs.
fn peak_growth(work: impl FnOnce()) -> u64 {
    // Writing 5 resets the peak (VmHWM) to the present resident size.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_bytes("VmRSS:");
    work();
    status_bytes("VmHWM:").saturating_sub(before)
}

#[test]
fn a_7_5_mb_document_is_refused_or_scored_in_bounded_memory() {
    // Peaks are measured with nothing else running.
    if !common::in_a_process_of_its_own(
        "memory::a_7_5_mb_document_is_refused_or_scored_in_bounded_memory",
    ) {
        return;
    }
    // Words of a few letters: about 4 characters a token, as the attack's document.
    let document: String = (0..1_500_000)
        .map(|i| ["lorem ", "ipsa ", "dolo "][i % 3])
        .collect();
    assert!(document.len() >= 7_500_000);
    let body =
        serde_json::to_vec(&json!({"query": "what is it", "documents": [document]})).unwrap();
    let mut line =
        serde_json::to_vec(&json!({"query": "what is it", "document": document})).unwrap();
    line.push(b'\n');
    drop(document);
    const MIB: u64 = 1024 * 1024;
    // Before the bound, the tokenizer alone took 856 MiB (chunk) and 1,028 MiB (truncate)
    // for this document. The body is held a few times over (read, parsed): about 40 MiB.
    const BOUND: u64 = 160 * MIB;
    // zerank's chunk mode: more than 16 windows of 10,000 characters hold, refused before
    // tokenizing. The Qwen3-Reranker recipe cuts the document to a piece in truncate mode,
    // and in chunk mode, allowed windows enough, tokenizes it a window at a time until its
    // tokens pass the queue's budget.
    let cases = [
        (RecipeChoice::Zerank, LongDocuments::Chunk, 16, 413),
        (
            RecipeChoice::Qwen3Reranker,
            LongDocuments::Truncate,
            16,
            200,
        ),
        (RecipeChoice::Qwen3Reranker, LongDocuments::Chunk, 512, 413),
    ];
    // The offline scorer (truncate mode), on a line of that document: the peak of the
    // process, the only child this test waits for.
    let input = std::env::temp_dir().join(format!("zerank-memory-{}.jsonl", std::process::id()));
    std::fs::write(&input, line).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_zerank-server"))
        .args(["score", "--input"])
        .arg(&input)
        .args([
            "--recipe",
            "qwen3-reranker",
            "--max-length",
            "512",
            "--model",
        ])
        .arg(common::fixture("tiny"))
        .output()
        .unwrap();
    std::fs::remove_file(&input).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8(output.stdout).unwrap().lines().count(), 1);
    let peak = children_peak_rss();
    eprintln!("offline: a peak of {} MiB", peak / MIB);
    assert!(peak < 2 * BOUND, "offline: a peak of {} MiB", peak / MIB);

    for (recipe, long_documents, max_chunks, status) in cases {
        let server = TestServer::start(|s| {
            s.scoring.recipe = vec![recipe];
            s.server.long_documents = long_documents;
            s.server.max_chunks_per_document = max_chunks;
            s.server.max_queued_tokens = 100_000;
            // Short prompts: the forward's own memory stays small beside the document's.
            s.scoring.max_length = Some(512);
            s.server.payload_limit_bytes = 16 * 1024 * 1024;
        });
        // Warm: the first request's allocations (pools, the forward's buffers) are not the
        // document's.
        let small = server.post("/rerank", &json!({"query": "q", "documents": ["d"]}));
        assert_eq!(small.status, 200, "{}", small.text);
        let mut reply = None;
        let growth = peak_growth(|| {
            reply = Some(server.post_raw(
                "/rerank",
                "application/json",
                std::str::from_utf8(&body).unwrap(),
            ));
        });
        let reply = reply.unwrap();
        assert_eq!(
            reply.status, status,
            "{recipe:?} {long_documents:?}: {}",
            reply.text
        );
        eprintln!(
            "{recipe:?} {long_documents:?}: {} with the peak {} MiB above the start",
            reply.status,
            growth / MIB
        );
        assert!(
            growth < BOUND,
            "{recipe:?} {long_documents:?}: the peak grew by {} MiB",
            growth / MIB
        );
    }
}

#[test]
fn requests_over_the_tokenizing_budget_take_turns() {
    // 1 KiB: every request's estimate is over it, so each takes the whole budget in turn
    // rather than waiting for more than there is.
    let server = TestServer::start(|s| {
        s.server.tokenizing_memory_bytes = 1024;
        s.server.request_timeout_secs = 120.0;
    });
    let started = Instant::now();
    std::thread::scope(|scope| {
        let replies: Vec<_> = (0..6)
            .map(|i| {
                let server = &server;
                scope.spawn(move || {
                    let documents: Vec<String> = (0..3)
                        .map(|d| {
                            format!(
                                "document {d} of request {i} {}",
                                "lorem ipsum ".repeat(4_000)
                            )
                        })
                        .collect();
                    server.post("/rerank", &json!({"query": "q", "documents": documents}))
                })
            })
            .collect();
        for reply in replies {
            let reply = reply.join().unwrap();
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    // In turns, the six tokenizations fit one after another within the requests' time;
    // side by side, their times would add up to more than it.
    let tokenizing = server.metric("zerank_tokenization_duration_seconds_sum");
    assert_eq!(
        server.metric("zerank_tokenization_duration_seconds_count"),
        6.0
    );
    assert!(
        tokenizing <= elapsed,
        "{tokenizing:.3} s of tokenizing within {elapsed:.3} s: not in turns"
    );
}
