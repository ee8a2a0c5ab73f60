//! The decoders beside Qwen3, each against its reference on its fixtures: Qwen2 (the zerank
//! recipe on a legacy checkpoint against transformers; mxbai-rerank-v2's layout in Sentence
//! Transformers' native format against `predict`; mxbai-rerank's own prompt against
//! transformers) and Gemma (bge-reranker-v2-gemma's FlagEmbedding prompt against
//! transformers). Then what the engine promises every
//! architecture: batched equals alone, a shared prefix equals alone, bf16 stays near f32.

use crate::common;

use common::native::{NativeGoldens, check_against_goldens};
use common::{fixture, goldens, load, model_config, options};
use zerank_server::model::{DTypeSpec, Engine, LoadOptions, ModelError, RecipeChoice, TokenLimits};

/// The architectures' fixtures, with the class names `/info` reports.
const FIXTURES: [(&str, &str); 3] = [
    ("qwen2", "Qwen2ForCausalLM"),
    ("native-qwen2", "Qwen2ForCausalLM"),
    ("gemma", "GemmaForCausalLM"),
];

fn arch_goldens() -> NativeGoldens {
    NativeGoldens::read("arch_goldens.json")
}

#[derive(serde::Deserialize)]
struct Legacy {
    legacy: std::collections::HashMap<String, common::GoldenScores>,
}

#[test]
fn each_fixture_reports_its_architecture() {
    for (name, class) in FIXTURES {
        assert_eq!(load(&fixture(name)).info().architecture, class, "{name}");
    }
    assert_eq!(
        load(&fixture("tiny")).info().architecture,
        "Qwen3ForCausalLM"
    );
}

#[test]
fn a_legacy_qwen2_checkpoint_matches_transformers() {
    let goldens = goldens();
    let text = std::fs::read_to_string(fixture("arch_goldens.json")).unwrap();
    let legacy: Legacy = serde_json::from_str(&text).unwrap();
    let expected = &legacy.legacy["qwen2"];
    let engine = load(&fixture("qwen2"));
    assert_eq!(engine.info().recipe, "zerank");
    let config = model_config(&fixture("qwen2"));
    // Two heads of a hidden size of 8: head_dim is hidden / heads.
    assert_eq!((config.head_dim, config.attention_bias), (4, true));
    for (i, pair) in goldens.pairs.iter().enumerate() {
        let encoded = engine
            .encoder()
            .encode(&pair.query, &pair.document, None, TokenLimits::default())
            .unwrap();
        // The Qwen tokenizer and chat template serve Qwen2 as they serve Qwen3.
        assert_eq!(encoded.ids, pair.input_ids, "pair {i}");
        let score = engine.score_batch(&[&encoded.ids]).unwrap().scores[0];
        let diff = (score.margin - expected.yes_logit[i]).abs();
        assert!(
            diff <= 1e-4,
            "pair {i}: yes_logit {} vs transformers {} (|Δ| {diff})",
            score.margin,
            expected.yes_logit[i]
        );
        assert!((score.score - expected.score[i]).abs() <= 1e-5, "pair {i}");
    }
}

#[test]
fn a_native_qwen2_checkpoint_scores_as_sentence_transformers() {
    let goldens = arch_goldens();
    let engine = load(&fixture("native-qwen2"));
    assert_eq!(engine.info().recipe, "sentence-transformers");
    // logit("1") - logit("0"), Sigmoid: mxbai-rerank-v2's head.
    check_against_goldens(
        &engine,
        &goldens,
        &goldens.models["native-qwen2"],
        "native-qwen2",
        1.0,
    );
}

#[test]
fn a_gemma_checkpoint_scores_as_flagembedding_with_transformers() {
    let goldens = arch_goldens();
    let engine = load(&fixture("gemma"));
    let info = engine.info();
    // A Gemma without Sentence Transformers files is bge-reranker-v2-gemma's layout.
    assert_eq!(info.recipe, "bge-gemma");
    // FlagEmbedding's `prompt` replaces its fixed question: the instruction's place.
    assert!(info.accepts_instruction);
    assert!(
        info.default_instruction
            .as_deref()
            .is_some_and(|q| q.starts_with("Given a query A and a passage B"))
    );
    let golden = &goldens.models["bge-gemma"];
    // BOS first, as FlagEmbedding puts it.
    assert!(golden.plain.input_ids.iter().all(|ids| ids[0] == 2));
    check_against_goldens(&engine, &goldens, golden, "bge-gemma", 1.0);
}

#[test]
fn the_mxbai_rerank_recipe_matches_its_library_with_transformers() {
    let goldens = arch_goldens();
    let engine = Engine::load(&LoadOptions {
        recipe: RecipeChoice::MxbaiRerank,
        ..options(&fixture("qwen2"))
    })
    .unwrap();
    let info = engine.info();
    assert_eq!(info.recipe, "mxbai-rerank");
    // Its prompt has an optional "instruction: " line and no default one.
    assert!(info.accepts_instruction && info.default_instruction.is_none());
    check_against_goldens(
        &engine,
        &goldens,
        &goldens.models["mxbai-rerank-recipe"],
        "mxbai-rerank-recipe",
        1.0,
    );
}

/// Prompts of one long query over several documents.
fn one_query(engine: &Engine) -> Vec<Vec<u32>> {
    let goldens = arch_goldens();
    let query = "Which of these passages explains how a reranker scores? ".repeat(12);
    goldens
        .pairs
        .iter()
        .map(|p| p.document.as_str())
        .filter(|d| d.len() < 400)
        .take(8)
        .map(|document| {
            engine
                .encoder()
                .encode(&query, document, None, TokenLimits::default())
                .unwrap()
                .ids
        })
        .collect()
}

#[test]
fn batches_and_shared_prefixes_score_as_each_pair_alone() {
    for (name, _) in FIXTURES {
        let shared = load(&fixture(name));
        let unshared = Engine::load(&LoadOptions {
            prefix_sharing: false,
            ..options(&fixture(name))
        })
        .unwrap();
        let sequences = one_query(&shared);
        let batch: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let total: usize = batch.iter().map(|s| s.len()).sum();
        let packed = unshared.score_batch(&batch).unwrap();
        let prefixed = shared.score_batch(&batch).unwrap();
        assert_eq!(packed.computed_tokens, total, "{name}");
        assert!(
            prefixed.computed_tokens < total * 2 / 3,
            "{name}: the query prefix was not shared ({} of {total})",
            prefixed.computed_tokens
        );
        for (i, ids) in batch.iter().enumerate() {
            let alone = unshared.score_batch(&[ids]).unwrap().scores[0];
            let batched = (packed.scores[i].margin - alone.margin).abs();
            assert!(
                batched <= 1e-5,
                "{name} pair {i}: batched vs alone {batched}"
            );
            let prefix = (prefixed.scores[i].margin - alone.margin).abs();
            assert!(prefix <= 1e-4, "{name} pair {i}: shared vs alone {prefix}");
        }
    }
}

/// tests/engine.rs's bound on what `--dtype bf16` adds to a raw score on the fixtures.
const BF16_MAX_RAW_DIFF: f32 = 0.01;

#[test]
fn bf16_stays_near_f32_on_every_architecture() {
    for (name, _) in FIXTURES {
        let f32_engine = load(&fixture(name));
        let bf16_engine = Engine::load(&LoadOptions {
            dtype: DTypeSpec::Bf16,
            ..options(&fixture(name))
        })
        .unwrap();
        assert_eq!(bf16_engine.info().dtype, "bf16");
        let sequences = one_query(&f32_engine);
        let batch: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let exact = f32_engine.score_batch(&batch).unwrap().scores;
        let rounded = bf16_engine.score_batch(&batch).unwrap().scores;
        let max = exact
            .iter()
            .zip(&rounded)
            .map(|(a, b)| (a.raw - b.raw).abs())
            .fold(0.0, f32::max);
        println!("{name}: bf16 max |Δ raw| {max}");
        assert!(max <= BF16_MAX_RAW_DIFF, "{name}: max |Δ raw| {max}");
        assert!(max > 1e-6, "{name}: bf16 scores equal f32's exactly");
    }
}

#[test]
fn an_unsupported_architecture_is_refused_at_load_naming_it() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("gemma2");
    common::copy_dir(&fixture("gemma"), &dir);
    let config_path = dir.join("config.json");
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("GemmaForCausalLM", "Gemma2ForCausalLM")
        .replace(r#""model_type": "gemma""#, r#""model_type": "gemma2""#);
    std::fs::write(&config_path, config).unwrap();
    let err = match Engine::load(&options(&dir)) {
        Ok(_) => panic!("a Gemma2 checkpoint loaded"),
        Err(err) => err,
    };
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture { .. }),
        "{err}"
    );
    let message = err.to_string();
    for name in [
        "Gemma2ForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen2ForCausalLM",
        "GemmaForCausalLM",
    ] {
        assert!(message.contains(name), "`{message}` lacks {name}");
    }
}
