//! Encoder cross-encoders (BERT, RoBERTa, XLM-RoBERTa, ModernBERT), each against Sentence
//! Transformers 6.2's `CrossEncoder.predict` on its fixture (scripts/make_encoder_fixtures.py):
//! the pair's token ids, the logit within 1e-4, pairs past the model's length cut as
//! `longest_first` cuts them. Then what the engine promises every encoder: batched equals
//! alone, bf16 stays near f32, long documents in windows, and the refusals.

mod common;

use std::collections::HashMap;

use common::{fixture, load, options};
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
