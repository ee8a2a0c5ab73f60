//! `zerank-server score`: offline scoring of a JSONL file.

mod common;

use std::path::Path;
use std::process::Command;

use common::{copy_dir, fixture, goldens};

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

/// A Hub repository in the `HF_HOME` cache `home`, at `commit`, holding the files of a
/// fixture (folders included, symlinks followed); `main` names the commit when `as_main`.
fn cache_repo(home: &Path, repo: &str, commit: &str, fixture_dir: &Path, as_main: bool) {
    let folder = home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    copy_dir(fixture_dir, &folder.join("snapshots").join(commit));
    if as_main {
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs").join("main"), commit).unwrap();
    }
}

/// `zerank-server score` of one pair with the network off and `home` as `HF_HOME`.
fn score_offline(home: &Path, pair: (&str, &str), args: &[&str]) -> std::process::Output {
    let input = home.join("pairs.jsonl");
    std::fs::write(
        &input,
        serde_json::json!({ "query": pair.0, "document": pair.1 }).to_string(),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_zerank-server"))
        .args([
            "score",
            "--device",
            "cpu",
            "--input",
            input.to_str().unwrap(),
        ])
        .args(args)
        .env("HF_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_TOKEN")
        .output()
        .unwrap()
}

fn parsed_score(output: &std::process::Output) -> f64 {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// A Hub id resolves from a warm `HF_HOME` cache with the network off, sharded weights too.
#[test]
fn a_hub_id_loads_offline_from_a_warm_cache() {
    let home = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    cache_repo(
        home.path(),
        "zeroentropy/zerank-test",
        commit,
        &fixture("sharded"),
        true,
    );
    let goldens = goldens();
    let pair = (
        goldens.pairs[0].query.as_str(),
        goldens.pairs[0].document.as_str(),
    );
    let score = parsed_score(&score_offline(
        home.path(),
        pair,
        &["--model", "zeroentropy/zerank-test"],
    ));
    assert!((score - goldens.models["sharded"].score[0] as f64).abs() <= 2e-5);

    let missing = score_offline(home.path(), pair, &["--model", "zeroentropy/not-cached"]);
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
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    cache_repo(
        home.path(),
        "org/native-test",
        commit,
        &fixture("native-yes-no"),
        false,
    );
    let goldens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("native_goldens.json")).unwrap())
            .unwrap();
    let pair = &goldens["pairs"][0];
    let score = parsed_score(&score_offline(
        home.path(),
        (
            pair["query"].as_str().unwrap(),
            pair["document"].as_str().unwrap(),
        ),
        &[
            "--model",
            "org/native-test",
            "--revision",
            commit,
            "--instruction",
            goldens["instruction"].as_str().unwrap(),
        ],
    ));
    let expected = goldens["models"]["native-yes-no"]["instructed"]["predict"][0]
        .as_f64()
        .unwrap();
    assert!((score - expected).abs() <= 2e-5, "{score} vs {expected}");
}
