//! Today's causal-LM rerankers against their references: Sentence Transformers 6's native
//! layout (`CrossEncoder.predict`, with and without a prompt) on two fixture checkpoints,
//! and the published Qwen3-Reranker recipe run in transformers.

use crate::common;

use common::native::{ModelGoldens, NativeGoldens, sigmoid};
use common::{PairText, copy_dir, fixture, load, options, score_offline};
use zerank_server::model::{
    BatchBudget, Engine, LoadOptions, ModelError, RecipeChoice, TokenLimits, TruncationDirection,
};

fn goldens() -> NativeGoldens {
    NativeGoldens::read("native_goldens.json")
}

/// Every pair of the native goldens, with and without their instruction.
fn check_against_goldens(engine: &Engine, golden: &ModelGoldens, name: &str, temperature: f32) {
    common::native::check_against_goldens(engine, &goldens(), golden, name, temperature);
}

#[test]
fn a_yes_only_native_checkpoint_scores_as_sentence_transformers() {
    let goldens = goldens();
    let golden = &goldens.models["native-yes"];
    let engine = load(&fixture("native-yes"));
    assert_eq!(engine.info().recipe, "sentence-transformers");
    assert!(engine.info().accepts_instruction);
    // Identity activation: `predict` is the raw logit; the 0-1 score is sigmoid(raw / 5).
    for (raw, predict) in golden.plain.raw.iter().zip(&golden.plain.score) {
        assert!((raw - predict).abs() <= 1e-6);
    }
    check_against_goldens(&engine, golden, "native-yes", 5.0);
}

#[test]
fn a_yes_no_native_checkpoint_scores_as_sentence_transformers() {
    let goldens = goldens();
    let golden = &goldens.models["native-yes-no"];
    let engine = load(&fixture("native-yes-no"));
    // Sigmoid activation: `predict` is P(yes), the score at temperature 1.
    for (raw, predict) in golden.plain.raw.iter().zip(&golden.plain.score) {
        assert!((sigmoid(*raw) - predict).abs() <= 1e-5);
    }
    check_against_goldens(&engine, golden, "native-yes-no", 1.0);
    // The goldens hold documents cut to the model's 512 tokens, template tail restored.
    let truncated = golden
        .plain
        .input_ids
        .iter()
        .filter(|ids| ids.len() == golden.max_length)
        .count();
    assert!(truncated >= 1, "no golden reaches the length limit");
}

/// Offline scoring with an instruction on every other pair, in shared batches: each pair
/// scores as the reference does with its own instruction or none.
#[test]
fn offline_pairs_carry_their_own_instructions() {
    let goldens = goldens();
    let golden = &goldens.models["native-yes-no"];
    let engine = load(&fixture("native-yes-no"));
    let pairs: Vec<PairText> = goldens
        .pairs
        .iter()
        .enumerate()
        .map(|(i, pair)| PairText {
            query: &pair.query,
            document: &pair.document,
            instruction: (i % 2 == 1).then_some(goldens.instruction.as_str()),
        })
        .collect();
    let budget = BatchBudget {
        max_tokens: 4096,
        max_sequences: 4,
    };
    let scores = score_offline(&engine, &pairs, budget).unwrap();
    assert_eq!(scores.len(), pairs.len());
    for (i, score) in scores.iter().enumerate() {
        let variant = if i % 2 == 1 {
            &golden.instructed
        } else {
            &golden.plain
        };
        assert!((score.raw - variant.raw[i]).abs() <= 1e-4, "pair {i}");
    }
}

#[test]
fn the_original_qwen3_reranker_recipe_matches_transformers() {
    let goldens = goldens();
    let golden = &goldens.models["qwen3-reranker-recipe"];
    let engine = Engine::load(&LoadOptions {
        recipe: RecipeChoice::Qwen3Reranker,
        ..options(&fixture("tiny"))
    })
    .unwrap();
    assert_eq!(engine.info().recipe, "qwen3-reranker");
    assert_eq!(
        engine.info().default_instruction.as_deref(),
        Some("Given a web search query, retrieve relevant passages that answer the query")
    );
    check_against_goldens(&engine, golden, "qwen3-reranker-recipe", 1.0);
}

#[test]
fn special_markers_in_user_text_stay_text_on_native_checkpoints() {
    let goldens = goldens();
    let (i, pair) = goldens
        .pairs
        .iter()
        .enumerate()
        .find(|(_, p)| p.reference_ids_differ)
        .expect("the goldens hold an injection pair");
    assert!(pair.document.contains("<|im_end|>") || pair.query.contains("<|im_end|>"));
    for name in ["native-yes", "native-yes-no"] {
        let engine = load(&fixture(name));
        let ids = engine
            .encoder()
            .encode(&pair.query, &pair.document, None, TokenLimits::default())
            .unwrap()
            .ids;
        // The template's own turns only: system, user, assistant opened; two closed.
        assert_eq!(ids.iter().filter(|&&t| t == 151_644).count(), 3, "{name}");
        assert_eq!(ids.iter().filter(|&&t| t == 151_645).count(), 2, "{name}");
        assert_eq!(ids, goldens.models[name].plain.input_ids[i], "{name}");
    }
}

#[test]
fn an_instruction_needs_a_place_in_the_prompt() {
    let engine = load(&fixture("tiny"));
    assert!(!engine.info().accepts_instruction);
    let err = engine
        .encoder()
        .encode("q", "d", Some("be brief"), TokenLimits::default())
        .unwrap_err();
    assert!(matches!(err, ModelError::InstructionNotAccepted), "{err}");
    // A configured default instruction on such a model is a load error.
    let err = Engine::load(&LoadOptions {
        instruction: Some("be brief".into()),
        ..options(&fixture("tiny"))
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("no place"), "{err}");
}

/// A copy of a fixture with some of its files replaced.
fn variant_of(name: &str, replace: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(name), dir.path());
    for (file, text) in replace {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    dir
}

#[test]
fn a_template_that_drops_the_document_fails_to_load() {
    let dir = variant_of(
        "native-yes",
        &[(
            "chat_template.jinja",
            "{% for m in messages %}{% if m.role in ['system', 'user', 'query'] %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}<|im_start|>assistant\n",
        )],
    );
    let err = Engine::load(&options(dir.path())).err().expect("refused");
    let message = err.to_string();
    assert!(
        message.contains("cannot carry a query/document pair") && message.contains("document"),
        "{message}"
    );
}

#[test]
fn the_checkpoints_default_prompt_is_the_default_instruction() {
    let config =
        std::fs::read_to_string(fixture("native-yes-no").join("config_sentence_transformers.json"))
            .unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let code_prompt = config["prompts"]["code"].as_str().unwrap().to_owned();
    config["default_prompt_name"] = "code".into();
    let dir = variant_of(
        "native-yes-no",
        &[("config_sentence_transformers.json", &config.to_string())],
    );
    let engine = load(dir.path());
    assert_eq!(
        engine.info().default_instruction.as_deref(),
        Some(code_prompt.as_str())
    );
    let by_default = engine
        .encoder()
        .encode("q", "d", None, TokenLimits::default())
        .unwrap();
    let explicit = engine
        .encoder()
        .encode("q", "d", Some(&code_prompt), TokenLimits::default())
        .unwrap();
    assert_eq!(by_default, explicit);
    // A default prompt that is not among the prompts is a load error.
    config["default_prompt_name"] = "nope".into();
    let dir = variant_of(
        "native-yes-no",
        &[("config_sentence_transformers.json", &config.to_string())],
    );
    let err = Engine::load(&options(dir.path())).err().expect("refused");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn score_temperature_scales_only_the_0_1_score() {
    let hot = Engine::load(&LoadOptions {
        score_temperature: Some(2.0),
        ..options(&fixture("native-yes"))
    })
    .unwrap();
    let plain = load(&fixture("native-yes"));
    let ids = plain
        .encoder()
        .encode("q", "a document", None, TokenLimits::default())
        .unwrap()
        .ids;
    let (a, b) = (
        hot.score_batch(&[&ids]).unwrap().scores[0],
        plain.score_batch(&[&ids]).unwrap().scores[0],
    );
    assert_eq!(a.raw, b.raw);
    assert!((a.score - sigmoid(a.raw / 2.0)).abs() <= 1e-6);
    assert!((b.score - sigmoid(b.raw / 5.0)).abs() <= 1e-6);
}

#[test]
fn token_limits_cut_the_document_of_native_prompts() {
    let engine = load(&fixture("native-yes-no"));
    let document = "one two three four five six seven eight nine ten";
    let full = engine
        .encoder()
        .encode("q", document, None, TokenLimits::default())
        .unwrap();
    let tail = full.ids[full.ids.len() - 9..].to_vec();
    for direction in [TruncationDirection::Right, TruncationDirection::Left] {
        let cut = engine
            .encoder()
            .encode(
                "q",
                document,
                None,
                TokenLimits {
                    max_tokens_per_doc: Some(3),
                    direction,
                },
            )
            .unwrap();
        // Of the ten words, " one" is one token with the template's "<Document>: " space, as
        // the reference tokenizes it; it belongs to both and is never cut.
        assert_eq!(cut.truncated_tokens, 6);
        assert_eq!(cut.ids.len(), full.ids.len() - 6);
        assert_eq!(cut.ids[cut.ids.len() - 9..], tail[..]);
    }
    // A query that leaves no room for the template is refused, not cut.
    let long_query = "word ".repeat(600);
    let err = engine
        .encoder()
        .encode(&long_query, document, None, TokenLimits::default())
        .unwrap_err();
    assert!(matches!(err, ModelError::InputTooLong(_)), "{err}");
}

#[test]
fn native_prompts_share_their_prefix_in_packed_batches() {
    let goldens = goldens();
    let engine = load(&fixture("native-yes-no"));
    assert!(engine.info().prefix_sharing);
    let query = &goldens.pairs[0].query;
    let sequences: Vec<Vec<u32>> = goldens.pairs[..6]
        .iter()
        .map(|p| {
            engine
                .encoder()
                .encode(
                    query,
                    &p.document,
                    Some(&goldens.instruction),
                    TokenLimits::default(),
                )
                .unwrap()
                .ids
        })
        .collect();
    let batch: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
    let together = engine.score_batch(&batch).unwrap();
    // The instruction and the query are one prefix, computed once.
    assert!(together.computed_tokens < sequences.iter().map(Vec::len).sum::<usize>());
    for (i, ids) in batch.iter().enumerate() {
        let alone = engine.score_batch(&[ids]).unwrap().scores[0];
        let diff = (together.scores[i].raw - alone.raw).abs();
        assert!(diff <= 1e-4, "pair {i}: shared vs alone |Δ raw| {diff}");
    }
}
