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

/// A Hub id resolves from a warm `HF_HOME` cache with the network off, sharded weights too.
#[test]
fn a_hub_id_loads_offline_from_a_warm_cache() {
    let home = tempfile::tempdir().unwrap();
    let repo = home
        .path()
        .join("hub")
        .join("models--zeroentropy--zerank-test");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    for entry in std::fs::read_dir(fixture("sharded")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    let input = home.path().join("pairs.jsonl");
    let goldens = goldens();
    let pair = &goldens.pairs[0];
    std::fs::write(
        &input,
        serde_json::json!({ "query": pair.query, "document": pair.document }).to_string(),
    )
    .unwrap();

    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_zerank-server"))
            .args([
                "score",
                "--model",
                model,
                "--device",
                "cpu",
                "--input",
                input.to_str().unwrap(),
            ])
            .env("HF_HOME", home.path())
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("HF_TOKEN")
            .output()
            .unwrap()
    };
    let output = run("zeroentropy/zerank-test");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let score: f32 = String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((score - goldens.models["sharded"].score[0]).abs() <= 2e-5);

    let missing = run("zeroentropy/not-cached");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("zeroentropy/not-cached") && stderr.contains("HF_HUB_OFFLINE"),
        "{stderr}"
    );
}

/// A native checkpoint (module folder included) from the Hub cache at a pinned revision, with
/// an instruction: the score of Sentence Transformers' `predict`.
#[test]
fn a_native_checkpoint_loads_from_the_hub_cache_at_a_revision() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub").join("models--org--native-test");
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(snapshot.join("1_LogitScore")).unwrap();
    for entry in std::fs::read_dir(fixture("native-yes-no")).unwrap() {
        let entry = entry.unwrap();
        let source = std::fs::canonicalize(entry.path()).unwrap();
        if source.is_file() {
            std::fs::copy(&source, snapshot.join(entry.file_name())).unwrap();
        }
    }
    std::fs::copy(
        fixture("native-yes-no")
            .join("1_LogitScore")
            .join("config.json"),
        snapshot.join("1_LogitScore").join("config.json"),
    )
    .unwrap();
    let goldens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("native_goldens.json")).unwrap())
            .unwrap();
    let pair = &goldens["pairs"][0];
    let input = home.path().join("pairs.jsonl");
    std::fs::write(
        &input,
        serde_json::json!({ "query": pair["query"], "document": pair["document"] }).to_string(),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_zerank-server"))
        .args([
            "score",
            "--model",
            "org/native-test",
            "--revision",
            commit,
            "--instruction",
            goldens["instruction"].as_str().unwrap(),
            "--device",
            "cpu",
            "--input",
            input.to_str().unwrap(),
        ])
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let score: f64 = String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let expected = goldens["models"]["native-yes-no"]["instructed"]["predict"][0]
        .as_f64()
        .unwrap();
    assert!((score - expected).abs() <= 2e-5, "{score} vs {expected}");
}
