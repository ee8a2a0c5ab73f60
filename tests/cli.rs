//! `zerank-server score`: offline scoring of a JSONL file.

mod common;

use std::process::Command;

use common::{fixture, goldens};

#[test]
fn score_writes_one_golden_score_per_line() {
    let goldens = goldens();
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    let pairs: Vec<_> = goldens.pairs.iter().take(8).collect();
    let lines: Vec<String> = pairs
        .iter()
        .map(|p| serde_json::json!({ "query": p.query, "document": p.document }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    for (flag, expected) in [
        (None, &goldens.models["sharded"].score),
        (Some("--raw"), &goldens.models["sharded"].yes_logit),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zerank-server"));
        command.args([
            "score",
            "--model",
            fixture("sharded").to_str().unwrap(),
            "--device",
            "cpu",
            "--input",
            input.to_str().unwrap(),
        ]);
        command.args(flag);
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let scores: Vec<f32> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(scores.len(), pairs.len());
        for (i, score) in scores.iter().enumerate() {
            let want = if flag.is_some() {
                expected[i] / 5.0
            } else {
                expected[i]
            };
            assert!((score - want).abs() <= 2e-5, "line {i}: {score} vs {want}");
        }
    }
}

#[test]
fn a_bad_line_is_named() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    std::fs::write(
        &input,
        "{\"query\":\"q\",\"document\":\"d\"}\n{\"query\":\"q\"}\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_zerank-server"))
        .args([
            "score",
            "--model",
            fixture("tiny").to_str().unwrap(),
            "--device",
            "cpu",
            "--input",
            input.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("document"),
        "{stderr}"
    );
}
