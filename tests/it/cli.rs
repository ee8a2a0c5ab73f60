//! `zerank-server score`: offline scoring of a JSONL file.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
            // The goldens are f32; `auto` takes bf16 on CPUs with AVX512-BF16 or AMX.
            "--dtype",
            "f32",
            "--input",
            input.to_str().unwrap(),
        ]);
        command.args(flag);
        let scores = common::offline_scores(&mut command);
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

/// `zerank-server score` of `input` on a fixture checkpoint, with `args` added.
fn score(model: &str, input: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zerank-server"))
        .args(["score", "--model", fixture(model).to_str().unwrap()])
        .args([
            "--device",
            "cpu",
            "--dtype",
            "f32",
            "--input",
            input.to_str().unwrap(),
        ])
        .args(args)
        .output()
        .unwrap()
}

fn succeeded(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn failed(output: &std::process::Output) -> String {
    assert!(!output.status.success(), "the run should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `score` takes only the settings it uses: the server's flags are refused by name, while the
/// shared settings file (whose server keys it passes over) and the server's environment
/// variables leave it working.
#[test]
fn score_refuses_the_servers_flags_and_passes_over_its_other_settings() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    std::fs::write(&input, varied_pairs(3)).unwrap();
    for server_flag in [
        &["--port", "9000"][..],
        &["--api-key", "k"],
        &["--otlp-endpoint", "http://collector:4318"],
        &["--max-connections", "5"],
    ] {
        let refused = score("tiny", &input, server_flag);
        assert_eq!(refused.status.code(), Some(2), "{server_flag:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains(&format!("unexpected argument '{}'", server_flag[0])),
            "{server_flag:?}: {stderr}"
        );
    }
    let settings_file = work.path().join("settings.toml");
    let server_keys = "port = 9000\napi_key = \"k\"\nmax_connections = 0\n";
    std::fs::write(
        &settings_file,
        format!("{server_keys}max_batch_pairs = 2\n"),
    )
    .unwrap();
    let scored = Command::new(env!("CARGO_BIN_EXE_zerank-server"))
        .args(["score", "--model", fixture("tiny").to_str().unwrap()])
        .args(["--device", "cpu", "--dtype", "f32", "--input"])
        .arg(&input)
        .arg("--config")
        .arg(&settings_file)
        // Values the server would refuse: `score` never reads them.
        .env("ZERANK_PORT", "not a port")
        .env("ZERANK_MAX_CONNECTIONS", "0")
        .output()
        .unwrap();
    assert_eq!(succeeded(&scored).lines().count(), 3);
    // A key that is no setting at all is still an error.
    std::fs::write(&settings_file, "max_batch_pairz = 2\n").unwrap();
    let refused = score(
        "tiny",
        &input,
        &["--config", settings_file.to_str().unwrap()],
    );
    let stderr = failed(&refused);
    assert!(stderr.contains("unknown key `max_batch_pairz`"), "{stderr}");
}

/// Lines of varied pairs, one blank line after every seventh.
fn varied_pairs(count: usize) -> String {
    let mut text = String::new();
    for i in 0..count {
        let pair = serde_json::json!({
            "query": format!("question {i}: what is {}?", "thing ".repeat(i % 5)),
            "document": format!("document {i} {}", "about things and more ".repeat(i % 11)),
        });
        text.push_str(&pair.to_string());
        text.push('\n');
        if i % 7 == 6 {
            text.push_str(if i % 2 == 0 { "\n" } else { "  \r\n" });
        }
    }
    text
}

#[test]
fn blank_lines_are_skipped_and_give_no_output_line() {
    let work = tempfile::tempdir().unwrap();
    let (with_blanks, without) = (work.path().join("a.jsonl"), work.path().join("b.jsonl"));
    let text = varied_pairs(15);
    std::fs::write(&with_blanks, format!("\n{text}\n \n\t\n")).unwrap();
    let dense: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    std::fs::write(&without, dense.join("\n")).unwrap();
    let output = score("tiny", &with_blanks, &[]);
    let scores = succeeded(&output);
    assert_eq!(scores.lines().count(), 15);
    // Not on a terminal, progress is a line per chunk (one here) and a closing line.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with("scored 15 pairs in "), "{stderr}");
    assert!(
        lines[1].starts_with("done: scored 15 pairs in "),
        "{stderr}"
    );
    assert_eq!(scores, succeeded(&score("tiny", &without, &[])));
}

/// An interrupted run (output cut at a line's end, inside a line, or not started), resumed,
/// leaves the bytes of one uninterrupted run.
#[test]
fn a_resumed_run_writes_what_an_uninterrupted_one_does() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    std::fs::write(&input, varied_pairs(40)).unwrap();
    // Two pairs a batch: chunks of 8 pairs, so that cuts fall inside and between chunks.
    let batching = ["--max-batch-pairs", "2"];
    let whole = work.path().join("whole.txt");
    let whole_args = [&batching[..], &["--output", whole.to_str().unwrap()]].concat();
    succeeded(&score("tiny", &input, &whole_args));
    let whole = std::fs::read(&whole).unwrap();
    assert_eq!(whole.iter().filter(|&&b| b == b'\n').count(), 40);
    let line_ends: Vec<usize> = whole
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    let cuts = [
        ("nothing written", Some(0)),
        ("13 lines", Some(line_ends[12])),
        ("16 lines, a whole chunk", Some(line_ends[15])),
        ("inside line 21", Some(line_ends[19] + 3)),
        ("just before the last newline", Some(whole.len() - 1)),
        ("everything", Some(whole.len())),
        ("no output file", None),
    ];
    let record = std::fs::read(work.path().join("whole.txt.settings.json")).unwrap();
    for (case, cut) in cuts {
        let output = work.path().join("resumed.txt");
        let _ = std::fs::remove_file(&output);
        if let Some(cut) = cut {
            // What the interrupted run left: its scores so far, and its settings' record.
            std::fs::write(&output, &whole[..cut]).unwrap();
            std::fs::write(work.path().join("resumed.txt.settings.json"), &record).unwrap();
        }
        let args = [
            &batching[..],
            &["--output", output.to_str().unwrap(), "--resume"],
        ]
        .concat();
        succeeded(&score("tiny", &input, &args));
        assert!(std::fs::read(&output).unwrap() == whole, "{case}");
    }
}

#[test]
fn resume_needs_an_output_file_of_scores_of_this_input() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    std::fs::write(&input, varied_pairs(3)).unwrap();
    let stderr = failed(&score("tiny", &input, &["--resume"]));
    assert!(
        stderr.contains("--resume") && stderr.contains("--output"),
        "{stderr}"
    );

    let output = work.path().join("scores.txt");
    // A run of these settings, for the record beside its output.
    succeeded(&score(
        "tiny",
        &input,
        &["--output", output.to_str().unwrap()],
    ));
    std::fs::write(&output, "0.5\n{\"query\": \"q\"}\n").unwrap();
    let args = ["--output", output.to_str().unwrap(), "--resume"];
    let stderr = failed(&score("tiny", &input, &args));
    assert!(stderr.contains("line 2 of"), "{stderr}");
    // More scores than the input's 3 pairs, past a chunk (256 pairs) or within the first:
    // not its output, and left as it is.
    for lines in [300, 4] {
        std::fs::write(&output, "0.5\n".repeat(lines)).unwrap();
        let stderr = failed(&score("tiny", &input, &args));
        assert!(
            stderr.contains(&format!("holds {lines} scores, but the input only 3 pairs")),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read(&output).unwrap(),
            "0.5\n".repeat(lines).as_bytes()
        );
    }
    // Read from stdin, the pairs read ahead to count them are still scored.
    std::fs::write(&output, "0.5\n".repeat(2)).unwrap();
    let mut resumed = Command::new(env!("CARGO_BIN_EXE_zerank-server"))
        .args(["score", "--model", fixture("tiny").to_str().unwrap()])
        .args(["--device", "cpu", "--dtype", "f32", "--input", "-"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let text = std::fs::read(&input).unwrap();
    resumed.stdin.take().unwrap().write_all(&text).unwrap();
    succeeded(&resumed.wait_with_output().unwrap());
    let whole = succeeded(&score("tiny", &input, &[]));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), whole);
}

/// A resumed run with other scoring settings than the output's is refused, naming each
/// difference, and leaves the output as it was; with the same settings it goes on.
#[test]
fn resume_refuses_an_output_of_other_settings() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    std::fs::write(&input, varied_pairs(12)).unwrap();
    let output = work.path().join("scores.txt");
    let out = output.to_str().unwrap();
    let raw = ["--output", out, "--raw", "--max-batch-pairs", "2"];
    let whole = succeeded(&score("tiny", &input, &raw));
    assert!(whole.is_empty());
    let whole = std::fs::read_to_string(&output).unwrap();
    let interrupted: String = whole.lines().take(9).map(|l| format!("{l}\n")).collect();
    let refusals: [(&str, &[&str], &str); 3] = [
        (
            "tiny",
            &["--max-batch-pairs", "2"],
            "--raw was true there and is false now",
        ),
        (
            "sharded",
            &["--raw", "--max-batch-pairs", "2"],
            "--model was",
        ),
        (
            "tiny",
            &[
                "--raw",
                "--max-batch-pairs",
                "2",
                "--max-tokens-per-doc",
                "5",
            ],
            "--max-tokens-per-doc was not set there and is 5 now",
        ),
    ];
    for (model, flags, named) in refusals {
        std::fs::write(&output, &interrupted).unwrap();
        let args = [&["--output", out, "--resume"][..], flags].concat();
        let stderr = failed(&score(model, &input, &args));
        assert!(
            stderr.contains(named) && stderr.contains("scores.txt.settings.json"),
            "{flags:?}: {stderr}"
        );
        assert_eq!(std::fs::read_to_string(&output).unwrap(), interrupted);
    }
    let resume = [&raw[..], &["--resume"]].concat();
    succeeded(&score("tiny", &input, &resume));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), whole);
    // Other batches give the same scores (to f32 rounding): they may change on resume.
    std::fs::write(&output, &interrupted).unwrap();
    let rebatched = ["--output", out, "--raw", "--batch-tokens", "40", "--resume"];
    succeeded(&score("tiny", &input, &rebatched));
    let parse = |text: &str| -> Vec<f32> { text.lines().map(|l| l.parse().unwrap()).collect() };
    let (whole_scores, rebatched) = (
        parse(&whole),
        parse(&std::fs::read_to_string(&output).unwrap()),
    );
    assert_eq!(rebatched.len(), whole_scores.len());
    for (a, b) in whole_scores.iter().zip(&rebatched) {
        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    }
    std::fs::write(&output, &whole).unwrap();
    succeeded(&score("tiny", &input, &resume));

    // Scores with no record of their settings cannot be vouched for.
    std::fs::remove_file(work.path().join("scores.txt.settings.json")).unwrap();
    std::fs::write(&output, &interrupted).unwrap();
    let stderr = failed(&score("tiny", &input, &resume));
    assert!(
        stderr.contains("there is no") && stderr.contains("settings.json"),
        "{stderr}"
    );
    // An empty output holds nothing to mix with: it is started whatever its record says.
    std::fs::write(&output, "").unwrap();
    succeeded(&score("tiny", &input, &resume));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), whole);
}

/// The record holds a digest of the input lines scored: the same pairs in another order, or
/// another line among them, are refused, and the output is left as it was.
#[test]
fn resume_refuses_other_input_lines_of_the_same_count() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    let text = varied_pairs(20);
    std::fs::write(&input, &text).unwrap();
    let output = work.path().join("scores.txt");
    let out = output.to_str().unwrap();
    let args = ["--output", out, "--max-batch-pairs", "2", "--resume"];
    succeeded(&score("tiny", &input, &args));
    let whole = std::fs::read_to_string(&output).unwrap();
    let interrupted: String = whole.lines().take(12).map(|l| format!("{l}\n")).collect();
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let changed_late = lines[19].replace("question", "asked");
    let swapped_late = {
        let mut late = lines.clone();
        late[19] = &changed_late;
        late.join("\n")
    };
    lines.swap(0, 1);
    for (case, other) in [("shuffled", lines.join("\n")), ("last line", swapped_late)] {
        std::fs::write(&input, other).unwrap();
        std::fs::write(&output, &interrupted).unwrap();
        let stderr = failed(&score("tiny", &input, &args));
        assert!(
            stderr.contains("first 20 pairs are not those") && stderr.contains("SHA-256"),
            "{case}: {stderr}"
        );
        assert_eq!(std::fs::read_to_string(&output).unwrap(), interrupted);
    }
    std::fs::write(&input, &text).unwrap();
    succeeded(&score("tiny", &input, &args));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), whole);
}

/// Ctrl-C stops a run with a message saying how to go on, and the run resumes from there to
/// the scores of an uninterrupted one.
#[test]
fn an_interrupted_run_says_how_to_resume_and_resumes() {
    use std::io::Write;
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    let text = varied_pairs(24);
    std::fs::write(&input, &text).unwrap();
    let output = work.path().join("scores.txt");
    let out = output.to_str().unwrap();
    let batching = ["--max-batch-pairs", "2"];
    let whole = succeeded(&score("tiny", &input, &batching));
    // From stdin, held open after its first chunk (8 pairs), so that the run waits there.
    let mut run = Command::new(env!("CARGO_BIN_EXE_zerank-server"))
        .args(["score", "--model", fixture("tiny").to_str().unwrap()])
        .args(["--device", "cpu", "--dtype", "f32", "--input", "-"])
        .args(["--output", out])
        .args(batching)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = run.stdin.take().unwrap();
    let first_chunk: String = text.lines().take(9).map(|l| format!("{l}\n")).collect();
    stdin.write_all(first_chunk.as_bytes()).unwrap();
    common::server::wait_until("no chunk scored", Duration::from_secs(60), || {
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .count()
            >= 8
    });
    common::server::send_signal(&run, libc::SIGINT);
    let stopped = run.wait_with_output().unwrap();
    drop(stdin);
    let stderr = failed(&stopped);
    assert!(
        stderr.contains("interrupted after 8 pairs scored")
            && stderr.contains("run the same command with --resume"),
        "{stderr}"
    );
    let resume = [&batching[..], &["--output", out, "--resume"]].concat();
    let resumed = score("tiny", &input, &resume);
    succeeded(&resumed);
    assert!(
        String::from_utf8_lossy(&resumed.stderr)
            .contains("done, resumed after 8 pairs: scored 16 pairs"),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap(), whole);
}

/// Each bad line is named once, with its number (blank lines counted) and its field.
#[test]
fn a_bad_line_is_named_once_with_its_field() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    let good = r#"{"query":"q","document":"d"}"#;
    for (bad, expected) in [
        (r#"{"query":"q"}"#, r#"line 3: missing field "document""#),
        (
            r#"{"query":7,"document":"d"}"#,
            r#"line 3, field "query": expected a string, got a number"#,
        ),
        (
            r#"{"query":"q","document":null}"#,
            r#"line 3, field "document": expected a string, got null"#,
        ),
        (
            r#"{"query":"q","document":"d","instruction":["x"]}"#,
            r#"line 3, field "instruction": expected a string, got an array"#,
        ),
        (r#"{"query":"q","#, "line 3, column 13: invalid JSON"),
        (r#"["q","d"]"#, "line 3: expected an object"),
    ] {
        std::fs::write(&input, format!("{good}\n\n{bad}\n{good}\n")).unwrap();
        let stderr = failed(&score("tiny", &input, &[]));
        assert!(stderr.contains(expected), "{bad}: {stderr}");
        assert_eq!(stderr.matches("line").count(), 1, "{bad}: {stderr}");
    }
}

#[test]
fn batch_tokens_sets_the_batches_not_the_scores() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    std::fs::write(&input, varied_pairs(12)).unwrap();
    let default = succeeded(&score("tiny", &input, &[]));
    // Under one pair's tokens: every pair runs alone.
    let small = succeeded(&score("tiny", &input, &["--batch-tokens", "8"]));
    let parse = |text: &str| -> Vec<f32> { text.lines().map(|l| l.parse().unwrap()).collect() };
    let (default, small) = (parse(&default), parse(&small));
    assert_eq!(default.len(), 12);
    for (a, b) in default.iter().zip(&small) {
        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    }
    let stderr = failed(&score("tiny", &input, &["--batch-tokens", "0"]));
    assert!(stderr.contains("--batch-tokens"), "{stderr}");
}

/// A line's `instruction` reaches a model that takes one, and only that line; a model with
/// no place for one refuses it, naming the line.
#[test]
fn an_instruction_per_line() {
    let goldens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("native_goldens.json")).unwrap())
            .unwrap();
    let instruction = goldens["instruction"].as_str().unwrap();
    let expected = &goldens["models"]["native-yes-no"];
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    let lines: Vec<String> = (0..4)
        .map(|i| {
            let pair = &goldens["pairs"][i];
            let mut line =
                serde_json::json!({ "query": pair["query"], "document": pair["document"] });
            if i % 2 == 1 {
                line["instruction"] = instruction.into();
            }
            line.to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let scores = succeeded(&score("native-yes-no", &input, &[]));
    for (i, score) in scores.lines().enumerate() {
        let score: f64 = score.parse().unwrap();
        let kind = if i % 2 == 1 { "instructed" } else { "plain" };
        let want = expected[kind]["predict"][i].as_f64().unwrap();
        assert!(
            (score - want).abs() <= 2e-5,
            "line {}: {score} vs {want} ({kind})",
            i + 1
        );
    }
    assert_eq!(scores.lines().count(), 4);

    let stderr = failed(&score("tiny", &input, &[]));
    assert!(
        stderr.contains(r#"line 2, field "instruction""#)
            && stderr.contains("no place for an instruction"),
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
            // The goldens are f32; `auto` takes bf16 on CPUs with AVX512-BF16 or AMX.
            "--dtype",
            "f32",
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
    // A mistyped local path has a Hub id's shape: the error names both readings.
    let mistyped = score_offline(home.path(), pair, &["--model", "fixtures/tiny"]);
    let stderr = String::from_utf8_lossy(&mistyped.stderr);
    assert!(
        stderr.contains("no directory `fixtures/tiny` in ")
            && stderr.contains("as a Hugging Face Hub id: could not fetch"),
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
