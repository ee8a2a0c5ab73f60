//! Goldens in the layout of native_goldens.json: pairs, and per model the prompt ids and
//! reference scores without and with an instruction.

use std::collections::HashMap;

use serde::Deserialize;
use zerank_server::model::{Engine, TokenLimits};

use super::fixture;

#[derive(Deserialize)]
pub struct NativeGoldens {
    pub instruction: String,
    pub pairs: Vec<Pair>,
    pub models: HashMap<String, ModelGoldens>,
}

#[derive(Deserialize)]
pub struct Pair {
    pub query: String,
    pub document: String,
    pub reference_ids_differ: bool,
}

#[derive(Deserialize)]
pub struct ModelGoldens {
    pub true_token_id: u32,
    pub false_token_id: Option<u32>,
    pub max_length: usize,
    pub plain: Variant,
    pub instructed: Variant,
}

/// `predict` (with the checkpoint's activation) or `score` (the recipe's P(yes)).
#[derive(Deserialize)]
pub struct Variant {
    pub input_ids: Vec<Vec<u32>>,
    pub raw: Vec<f32>,
    #[serde(alias = "predict")]
    pub score: Vec<f32>,
}

impl NativeGoldens {
    /// A goldens file of this layout among the fixtures.
    pub fn read(name: &str) -> NativeGoldens {
        let text = std::fs::read_to_string(fixture(name)).expect("native goldens");
        serde_json::from_str(&text).expect("native goldens parse")
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Every pair, with and without the instruction: the prompt ids the reference fed its model,
/// `raw` within 1e-4 of it, and the 0-1 score by the model's rule.
pub fn check_against_goldens(
    engine: &Engine,
    goldens: &NativeGoldens,
    golden: &ModelGoldens,
    name: &str,
    temperature: f32,
) {
    let info = engine.info();
    assert_eq!(info.true_token_id, Some(golden.true_token_id), "{name}");
    assert_eq!(info.false_token_id, golden.false_token_id, "{name}");
    assert_eq!(info.max_length, golden.max_length, "{name}");
    for (variant, instruction) in [
        (&golden.plain, None),
        (&golden.instructed, Some(goldens.instruction.as_str())),
    ] {
        for (i, pair) in goldens.pairs.iter().enumerate() {
            let encoded = engine
                .encoder()
                .encode(
                    &pair.query,
                    &pair.document,
                    instruction,
                    TokenLimits::default(),
                )
                .unwrap();
            assert_eq!(
                encoded.ids, variant.input_ids[i],
                "{name} pair {i} (instruction {instruction:?}): prompt ids"
            );
            let score = engine.score_batch(&[&encoded.ids]).unwrap().scores[0];
            let diff = (score.raw - variant.raw[i]).abs();
            assert!(
                diff <= 1e-4,
                "{name} pair {i} (instruction {instruction:?}): raw {} vs {} (|Δ| {diff})",
                score.raw,
                variant.raw[i]
            );
            let expected = sigmoid(variant.raw[i] / temperature);
            assert!(
                (score.score - expected).abs() <= 1e-5,
                "{name} pair {i}: score {} vs sigmoid(raw / {temperature}) {expected}",
                score.score
            );
        }
    }
}
