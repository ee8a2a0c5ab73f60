//! Encoder cross-encoders (BERT, RoBERTa, XLM-RoBERTa, ModernBERT), each against Sentence
//! Transformers 6.2's `CrossEncoder.predict` on its fixture (scripts/make_encoder_fixtures.py):
//! the pair's token ids, the logit within 1e-4, pairs past the model's length cut as
//! `longest_first` cuts them. Then what the engine promises every encoder: batched equals
//! alone, bf16 stays near f32, long documents in windows, and the refusals.

use crate::common;

use std::collections::HashMap;

use common::server::{DOCUMENTS, QUERY, TestServer, close, engine_scores, fixture_path};
use common::{fixture, load, options};
use serde_json::json;
use zerank_server::model::{
    BatchBudget, Chunking, DTypeSpec, Engine, ModelError, RecipeChoice, TokenLimits,
    TruncationDirection,
};

/// Each fixture and the class name `/info` reports.
const FIXTURES: [(&str, &str); 6] = [
    ("bert", "BertForSequenceClassification"),
    ("bert-st", "BertForSequenceClassification"),
    ("xlm-roberta", "XLMRobertaForSequenceClassification"),
    ("roberta", "RobertaForSequenceClassification"),
    ("modernbert", "ModernBertForSequenceClassification"),
    ("modernbert-cls", "ModernBertForSequenceClassification"),
];

/// Against `predict` without activation, in f32.
const RAW_TOLERANCE: f32 = 1e-4;

#[derive(serde::Deserialize)]
struct Golden {
    max_length: usize,
    activation: String,
    pairs: Vec<GoldenPair>,
    /// `predict` of all pairs in one padded batch, without activation.
    batched: Vec<f32>,
    /// `predict` with the checkpoint's own activation, one pair at a time.
    predict: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct GoldenPair {
    query: String,
    document: String,
    input_ids: Vec<u32>,
    raw: f32,
}

fn goldens() -> HashMap<String, Golden> {
    let text = std::fs::read_to_string(fixture("encoder_goldens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn encode(engine: &Engine, query: &str, document: &str) -> Vec<u32> {
    engine
        .encoder()
        .encode(query, document, None, TokenLimits::default())
        .unwrap()
        .ids
}

fn score_alone(engine: &Engine, ids: &[u32]) -> f32 {
    engine.score_batch(&[ids]).unwrap().scores[0].raw
}

#[test]
fn each_encoder_matches_sentence_transformers_predict() {
    let goldens = goldens();
    for (name, class) in FIXTURES {
        let golden = &goldens[name];
        let engine = load(&fixture(name));
        let info = engine.info();
        assert_eq!(info.architecture, class, "{name}");
        assert_eq!(info.recipe, "cross-encoder", "{name}");
        assert_eq!(info.max_length, golden.max_length, "{name}");
        assert!(
            info.activation
                .as_deref()
                .unwrap()
                .ends_with(&golden.activation),
            "{name}: {:?} vs {}",
            info.activation,
            golden.activation
        );
        assert!(!info.prefix_sharing && !info.accepts_instruction, "{name}");
        assert_eq!(info.true_token_id, None, "{name}");
        for (i, pair) in golden.pairs.iter().enumerate() {
            let ids = encode(&engine, &pair.query, &pair.document);
            assert_eq!(ids, pair.input_ids, "{name} pair {i}");
            let score = engine.score_batch(&[&ids]).unwrap().scores[0];
            assert!(
                (score.raw - pair.raw).abs() < RAW_TOLERANCE,
                "{name} pair {i}: raw {} vs predict {}",
                score.raw,
                pair.raw
            );
            // The score clients expect: sigmoid of the logit, whatever `predict` applies.
            let sigmoid = 1.0 / (1.0 + (-pair.raw).exp());
            assert!(
                (score.score - sigmoid).abs() < RAW_TOLERANCE,
                "{name} pair {i}"
            );
        }
    }
}

#[test]
fn the_goldens_cover_truncation_an_empty_query_and_non_ascii_text() {
    let goldens = goldens();
    let bert = &goldens["bert"];
    assert!(bert.pairs.iter().any(|p| p.query.is_empty()));
    assert!(bert.pairs.iter().any(|p| !p.query.is_ascii()));
    let engine = load(&fixture("bert"));
    let separator = engine.encoder().pair_separator().unwrap();
    // Past the length: a long document cut alone, and a long query cut too (`longest_first`).
    let query_tokens_kept =
        |p: &GoldenPair| p.input_ids.iter().position(|&id| id == separator).unwrap() - 1;
    let cut: Vec<&GoldenPair> = bert
        .pairs
        .iter()
        .filter(|p| p.input_ids.len() == bert.max_length)
        .collect();
    let query_tokens = |p: &GoldenPair| encode(&engine, &p.query, "").len() - 3;
    assert!(cut.iter().any(|p| query_tokens_kept(p) == query_tokens(p)));
    assert!(cut.iter().any(|p| query_tokens_kept(p) < query_tokens(p)));
}

#[test]
fn batched_equals_alone_and_the_padded_reference() {
    let goldens = goldens();
    for (name, _) in FIXTURES {
        let golden = &goldens[name];
        let engine = load(&fixture(name));
        let sequences: Vec<Vec<u32>> = golden
            .pairs
            .iter()
            .map(|p| encode(&engine, &p.query, &p.document))
            .collect();
        let batch: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let scored = engine.score_batch(&batch).unwrap();
        // Packed: every token once, no padding.
        assert_eq!(
            scored.computed_tokens,
            sequences.iter().map(Vec::len).sum::<usize>()
        );
        for (i, ids) in sequences.iter().enumerate() {
            let alone = score_alone(&engine, ids);
            let batched = scored.scores[i].raw;
            assert!(
                (batched - alone).abs() < 1e-5,
                "{name} pair {i}: batched {batched} vs alone {alone}"
            );
            assert!(
                (batched - golden.batched[i]).abs() < RAW_TOLERANCE,
                "{name} pair {i}: {batched} vs predict's padded batch {}",
                golden.batched[i]
            );
        }
    }
}

/// What `--dtype bf16` may add to an encoder's raw score on the fixtures: 0.009 to 0.019
/// measured (their random weights, std 0.2, are larger than trained ones).
const BF16_MAX_RAW_DIFF: f32 = 0.03;

#[test]
fn bf16_stays_near_f32_on_every_encoder() {
    let goldens = goldens();
    for (name, _) in FIXTURES {
        let rounded = Engine::load(&zerank_server::model::LoadOptions {
            dtype: DTypeSpec::Bf16,
            ..options(&fixture(name))
        })
        .unwrap();
        assert_eq!(rounded.info().dtype, "bf16");
        let sequences: Vec<Vec<u32>> = goldens[name]
            .pairs
            .iter()
            .map(|p| p.input_ids.clone())
            .collect();
        let batch: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let scores = rounded.score_batch(&batch).unwrap().scores;
        let max = goldens[name]
            .pairs
            .iter()
            .zip(&scores)
            .map(|(golden, score)| (golden.raw - score.raw).abs())
            .fold(0.0, f32::max);
        println!("{name}: bf16 max |Δ raw| {max}");
        assert!(max <= BF16_MAX_RAW_DIFF, "{name}: max |Δ raw| {max}");
        assert!(max > 1e-6, "{name}: bf16 scores equal f32's exactly");
    }
}

/// The document's tokens of an encoded pair: between the first separator and the last token.
fn document_tokens(ids: &[u32], separator: u32, separators_between: usize) -> &[u32] {
    let first = ids.iter().position(|&id| id == separator).unwrap();
    &ids[first + separators_between..ids.len() - 1]
}

#[test]
fn max_tokens_per_doc_keeps_either_end_of_the_document() {
    for (name, between) in [("bert", 1), ("xlm-roberta", 2)] {
        let engine = load(&fixture(name));
        let separator = engine.encoder().pair_separator().unwrap();
        let (query, document) = (
            "capital",
            "Paris is the capital and most populous city of France.",
        );
        let whole = encode(&engine, query, document);
        let all = document_tokens(&whole, separator, between).to_vec();
        assert!(all.len() > 6, "{name}");
        for (direction, kept) in [
            (TruncationDirection::Right, &all[..5]),
            (TruncationDirection::Left, &all[all.len() - 5..]),
        ] {
            let cut = engine
                .encoder()
                .encode(
                    query,
                    document,
                    None,
                    TokenLimits {
                        max_tokens_per_doc: Some(5),
                        direction,
                    },
                )
                .unwrap();
            assert_eq!(
                document_tokens(&cut.ids, separator, between),
                kept,
                "{name} {direction:?}"
            );
            assert_eq!(cut.truncated_tokens, all.len() - 5);
            assert!(!cut.over_max_length);
            // The template around the document stays whole.
            assert_eq!(
                cut.ids[..whole.len() - all.len() - 1],
                whole[..whole.len() - all.len() - 1]
            );
        }
    }
}

#[test]
fn a_long_document_in_windows_scores_each_window_as_its_own_pair() {
    let goldens = goldens();
    for name in ["bert", "xlm-roberta", "modernbert"] {
        let engine = load(&fixture(name));
        let long = goldens[name]
            .pairs
            .iter()
            .find(|p| p.document.len() > 2_000)
            .unwrap();
        let windows = engine
            .encoder()
            .encode_windows(
                &long.query,
                &long.document,
                None,
                TokenLimits::default(),
                Chunking {
                    overlap_tokens: 4,
                    max_chunks: 200,
                },
            )
            .unwrap();
        assert!(windows.len() >= 5, "{name}: {} windows", windows.len());
        assert_eq!(windows[0].chars.start, 0);
        assert_eq!(
            windows.last().unwrap().chars.end,
            long.document.chars().count()
        );
        let text: Vec<char> = long.document.chars().collect();
        for window in &windows {
            assert_eq!(window.encoded.truncated_tokens, 0, "{name}: a window fits");
            assert!(window.encoded.ids.len() <= goldens[name].max_length);
            // The window is scored as `predict` scores (query, window text): that pair's ids.
            let window_text: String = text[window.chars.clone()].iter().collect();
            assert_eq!(
                window.encoded.ids,
                encode(&engine, &long.query, &window_text),
                "{name}"
            );
        }
    }
}

fn load_error(dir: &std::path::Path) -> ModelError {
    match Engine::load(&options(dir)) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(err) => err,
    }
}

/// A copy of the BERT fixture with `edit` applied to its config.json.
fn edited_bert(
    work: &tempfile::TempDir,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let dir = work.path().join("bert");
    common::copy_dir(&fixture("bert"), &dir);
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

#[test]
fn more_than_one_label_is_refused_saying_why() {
    let work = tempfile::tempdir().unwrap();
    let dir = edited_bert(&work, |config| {
        config["id2label"] = serde_json::json!({"0": "irrelevant", "1": "relevant"});
    });
    let message = load_error(&dir).to_string();
    assert!(
        message.contains("2 labels") && message.contains("one logit"),
        "{message}"
    );
}

#[test]
fn deberta_v2_is_refused_with_its_own_reason() {
    let work = tempfile::tempdir().unwrap();
    let dir = edited_bert(&work, |config| {
        config["architectures"] = serde_json::json!(["DebertaV2ForSequenceClassification"]);
        config["model_type"] = "deberta-v2".into();
    });
    let message = load_error(&dir).to_string();
    assert!(
        message.contains("DebertaV2ForSequenceClassification"),
        "{message}"
    );
    assert!(message.contains("disentangled attention"), "{message}");
}

#[test]
fn pickle_weights_alone_are_refused_with_how_to_convert() {
    let work = tempfile::tempdir().unwrap();
    let dir = edited_bert(&work, |_| {});
    std::fs::rename(dir.join("model.safetensors"), dir.join("pytorch_model.bin")).unwrap();
    let err = load_error(&dir);
    assert!(matches!(err, ModelError::PickleWeights), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("model.safetensors") && message.contains("save_pretrained"),
        "{message}"
    );
}

#[test]
fn instructions_and_decoder_recipes_are_refused() {
    let engine = load(&fixture("bert"));
    let err = engine
        .encoder()
        .encode("q", "d", Some("judge relevance"), TokenLimits::default())
        .unwrap_err();
    assert!(matches!(err, ModelError::InstructionNotAccepted), "{err}");
    let configured = Engine::load(&zerank_server::model::LoadOptions {
        instruction: Some("judge relevance".into()),
        ..options(&fixture("bert"))
    });
    assert!(configured.is_err(), "a default instruction was accepted");
    let zerank = Engine::load(&zerank_server::model::LoadOptions {
        recipe: RecipeChoice::Zerank,
        ..options(&fixture("bert"))
    });
    let message = zerank.err().expect("the zerank recipe loaded").to_string();
    assert!(message.contains("encoder"), "{message}");
    // Prefix sharing is off for an encoder even where the settings turn it on.
    assert!(options(&fixture("bert")).prefix_sharing);
    assert!(!engine.info().prefix_sharing);
}

#[test]
fn offline_batches_score_as_each_pair_alone() {
    let goldens = goldens();
    let engine = load(&fixture("modernbert"));
    let pairs: Vec<common::PairText> = goldens["modernbert"]
        .pairs
        .iter()
        .map(|p| common::PairText {
            query: &p.query,
            document: &p.document,
            instruction: None,
        })
        .collect();
    let budget = BatchBudget {
        max_tokens: 150,
        max_sequences: 4,
    };
    let scores = common::score_offline(&engine, &pairs, budget).unwrap();
    for (score, golden) in scores.iter().zip(&goldens["modernbert"].pairs) {
        assert!((score.raw - golden.raw).abs() < RAW_TOLERANCE);
    }
}

const ENCODERS: [&str; 3] = ["bert", "xlm-roberta", "modernbert"];

/// A Qwen3 reranker (tiny) and three encoders in one process.
fn mixed_server() -> TestServer {
    TestServer::start(|settings| {
        settings.scoring.model = std::iter::once("tiny")
            .chain(ENCODERS)
            .map(fixture_path)
            .collect();
        // The fixtures' windows are 48 to 64 tokens: the default overlap of 64 is too long.
        settings.server.chunk_overlap_tokens = 4;
        settings.server.max_chunks_per_document = 64;
    })
}

fn by_index(results: &serde_json::Value, field: &str) -> Vec<f64> {
    let mut scored: Vec<(usize, f64)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap() as usize,
                r[field].as_f64().unwrap(),
            )
        })
        .collect();
    scored.sort_by_key(|(index, _)| *index);
    scored.into_iter().map(|(_, score)| score).collect()
}

fn assert_close(name: &str, shape: &str, got: &[f64], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name} {shape}");
    for (i, (got, want)) in got.iter().zip(want).enumerate() {
        assert!(
            close(*got, *want),
            "{name} {shape} doc {i}: {got} vs {want}"
        );
    }
}

#[test]
fn one_server_routes_a_decoder_and_encoders_through_every_shape() {
    let server = mixed_server();
    let info = server.get("/info").json();
    let models = info["models"].as_array().unwrap();
    assert_eq!(models.len(), 4);
    assert_eq!(models[0]["model"]["share_prefixes"], true);
    for entry in &models[1..] {
        assert_eq!(entry["model"]["recipe"], "cross-encoder", "{entry}");
        assert_eq!(entry["model"]["share_prefixes"], false, "{entry}");
        assert_eq!(entry["model"]["accepts_instruction"], false, "{entry}");
    }
    for name in std::iter::once("tiny").chain(ENCODERS) {
        let expected = engine_scores(&load(&fixture(name)), QUERY, &DOCUMENTS);
        let scores: Vec<f32> = expected.iter().map(|e| e.0).collect();
        let raw: Vec<f32> = expected.iter().map(|e| e.1).collect();
        // Cohere v1 and Jina (one shape), Cohere v2, ZeroEntropy.
        for path in ["/v1/rerank", "/v2/rerank", "/v1/models/rerank"] {
            let reply = server.post(
                path,
                &json!({ "model": name, "query": QUERY, "documents": DOCUMENTS }),
            );
            assert_eq!(reply.status, 200, "{name} {path}: {}", reply.text);
            assert_close(
                name,
                path,
                &by_index(&reply.json()["results"], "relevance_score"),
                &scores,
            );
        }
        // TEI: a bare array; `score` is the raw score on request.
        let tei = server
            .post(
                "/rerank",
                &json!({ "model": name, "query": QUERY, "texts": DOCUMENTS, "raw_scores": true }),
            )
            .json();
        assert_close(name, "tei", &by_index(&tei, "score"), &raw);
        // vLLM: input order.
        let vllm = server
            .post(
                "/score",
                &json!({ "model": name, "text_1": QUERY, "text_2": DOCUMENTS }),
            )
            .json();
        assert_eq!(vllm["model"], name);
        assert_close(name, "vllm", &by_index(&vllm["data"], "score"), &scores);
    }
    // An encoder's prompt has no place for an instruction.
    server
        .post(
            "/v1/rerank",
            &json!({ "model": "bert", "query": QUERY, "documents": DOCUMENTS, "instruction": "be brief" }),
        )
        .assert_error(400, "instruction_not_accepted");
}

#[test]
fn a_long_document_over_http_gets_its_best_windows_score() {
    let server = mixed_server();
    let goldens = goldens();
    for name in ENCODERS {
        let long = goldens[name]
            .pairs
            .iter()
            .find(|p| p.document.len() > 2_000)
            .unwrap();
        let reply = server.post(
            "/rerank",
            &json!({ "model": name, "query": long.query, "documents": [long.document], "long_documents": "chunk" }),
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
        let result = &reply.json()["results"][0];
        let chunk = &result["chunk"];
        let (start, end) = (
            chunk["start"].as_u64().unwrap() as usize,
            chunk["end"].as_u64().unwrap() as usize,
        );
        assert!(chunk["count"].as_u64().unwrap() > 1, "{name}: {chunk}");
        let best_text: String = long
            .document
            .chars()
            .skip(start)
            .take(end - start)
            .collect();
        let alone = engine_scores(&load(&fixture(name)), &long.query, &[best_text.as_str()]);
        let score = result["relevance_score"].as_f64().unwrap();
        assert!(
            close(score, alone[0].0),
            "{name}: {score} vs its window alone {:?}",
            alone[0]
        );
        // The whole document cut to the model's length scores differently: windows ran.
        let truncated = server
            .post(
                "/v1/rerank",
                &json!({ "model": name, "query": long.query, "documents": [long.document] }),
            )
            .json();
        let cut = truncated["results"][0]["relevance_score"].as_f64().unwrap();
        let predict = 1.0 / (1.0 + (-long.raw).exp());
        assert!(
            close(cut, predict),
            "{name}: truncated {cut} vs predict {predict}"
        );
    }
}

#[test]
fn the_offline_scorer_writes_predicts_scores() {
    let goldens = goldens();
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    let golden = &goldens["bert-st"];
    let lines: Vec<String> = golden
        .pairs
        .iter()
        .map(|p| json!({ "query": p.query, "document": p.document }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    for raw in [false, true] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_zerank-server"));
        command.args([
            "score",
            "--model",
            &fixture_path("bert-st"),
            "--device",
            "cpu",
        ]);
        command.args(["--dtype", "f32", "--input", input.to_str().unwrap()]);
        if raw {
            command.arg("--raw");
        }
        let scores = common::offline_scores(&mut command);
        assert_eq!(scores.len(), golden.pairs.len());
        for (i, (score, pair)) in scores.iter().zip(&golden.pairs).enumerate() {
            // bert-st's activation is Sigmoid: predict's own score is the server's score.
            let want = match raw {
                true => pair.raw,
                false => golden.predict[i],
            };
            assert!((score - want).abs() <= 2e-5, "line {i}: {score} vs {want}");
        }
    }
}
