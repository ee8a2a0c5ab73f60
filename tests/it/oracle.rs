//! An independent oracle: candle-transformers' own Qwen3, Qwen2 and Gemma (generation models:
//! unpacked, one sequence at a time, the full-vocabulary head) score the fixture checkpoints,
//! and the packed scoring forward must agree with them.

use crate::common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{gemma, qwen2, qwen3};
use common::{fixture, goldens, load, model_config};
use zerank_server::model::{Engine, TokenLimits};

/// candle-transformers' Qwen3 on a fixture's weights.
fn oracle(name: &str) -> qwen3::ModelForCausalLM {
    let c = model_config(&fixture(name));
    let config = qwen3::Config {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        head_dim: c.head_dim,
        attention_bias: c.attention_bias,
        num_key_value_heads: c.num_key_value_heads,
        max_position_embeddings: c.max_position_embeddings,
        sliding_window: None,
        max_window_layers: c.num_hidden_layers,
        tie_word_embeddings: c.tie_word_embeddings,
        rope_theta: c.rope_theta,
        rms_norm_eps: c.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    };
    qwen3::ModelForCausalLM::new(&config, mmaped(name)).unwrap()
}

/// The last position's logits over the whole vocabulary.
fn full_logits(model: &mut qwen3::ModelForCausalLM, ids: &[u32]) -> Vec<f32> {
    model.clear_kv_cache();
    flat(model.forward(&input(ids), 0).unwrap())
}

fn weights(name: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixture(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

/// The golden pairs the oracles score: a few short ones.
fn short_pairs(goldens: &common::Goldens) -> Vec<&common::GoldenPair> {
    let pairs: Vec<_> = goldens
        .pairs
        .iter()
        .filter(|p| p.input_ids.len() <= 300)
        .take(6)
        .collect();
    assert!(pairs.len() >= 4);
    pairs
}

/// The engine's packed margins of `pairs` against the oracle's `full_logits` of each alone.
fn assert_agrees(
    name: &str,
    engine: &Engine,
    pairs: &[&common::GoldenPair],
    mut full_logits: impl FnMut(&[u32]) -> Vec<f32>,
) {
    let info = engine.info();
    let sequences: Vec<Vec<u32>> = pairs
        .iter()
        .map(|p| {
            engine
                .encoder()
                .encode(&p.query, &p.document, None, TokenLimits::default())
                .unwrap()
                .ids
        })
        .collect();
    let batch: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
    let packed = engine.score_batch(&batch).unwrap().scores;
    for (i, ids) in sequences.iter().enumerate() {
        let logits = full_logits(ids);
        let expected = logits[info.true_token_id.expect("a decoder has a true token") as usize]
            - info.false_token_id.map_or(0.0, |id| logits[id as usize]);
        let diff = (packed[i].margin - expected).abs();
        assert!(
            diff <= 1e-4,
            "{name} pair {i}: packed {} vs candle-transformers {expected} (|Δ| {diff})",
            packed[i].margin
        );
    }
}

fn input(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn flat(logits: Tensor) -> Vec<f32> {
    logits.flatten_all().unwrap().to_vec1().unwrap()
}

fn mmaped(name: &str) -> VarBuilder<'static> {
    // SAFETY: the fixture files are not modified while the test runs.
    unsafe { VarBuilder::from_mmaped_safetensors(&weights(name), DType::F32, &Device::Cpu) }
        .unwrap()
}

#[test]
fn the_packed_forward_agrees_with_candle_transformers_qwen3() {
    let goldens = goldens();
    let pairs = short_pairs(&goldens);
    // zerank on a tied and on an untied, sharded checkpoint; yes minus no on a native one.
    for name in ["tiny", "sharded", "native-yes-no"] {
        let engine = load(&fixture(name));
        let mut model = oracle(name);
        assert_agrees(name, &engine, &pairs, |ids| full_logits(&mut model, ids));
    }
}

#[test]
fn qwen2_and_gemma_agree_with_candle_transformers() {
    let goldens = goldens();
    let pairs = short_pairs(&goldens);
    let engine = load(&fixture("qwen2"));
    let c = model_config(&fixture("qwen2"));
    let config = qwen2::Config {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        num_key_value_heads: c.num_key_value_heads,
        max_position_embeddings: c.max_position_embeddings,
        // No window within the context: full attention, as the checkpoint has.
        sliding_window: c.max_position_embeddings,
        max_window_layers: c.num_hidden_layers,
        tie_word_embeddings: c.tie_word_embeddings,
        rope_theta: c.rope_theta,
        rms_norm_eps: c.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    };
    let mut model = qwen2::ModelForCausalLM::new(&config, mmaped("qwen2")).unwrap();
    assert_agrees("qwen2", &engine, &pairs, |ids| {
        model.clear_kv_cache();
        flat(model.forward(&input(ids), 0).unwrap())
    });

    let engine = load(&fixture("gemma"));
    let c = model_config(&fixture("gemma"));
    let config = gemma::Config {
        attention_bias: c.attention_bias,
        head_dim: c.head_dim,
        hidden_act: Some(candle_nn::Activation::GeluPytorchTanh),
        hidden_activation: None,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_attention_heads: c.num_attention_heads,
        num_hidden_layers: c.num_hidden_layers,
        num_key_value_heads: c.num_key_value_heads,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta,
        vocab_size: c.vocab_size,
        max_position_embeddings: c.max_position_embeddings,
    };
    let mut model = gemma::Model::new(false, &config, mmaped("gemma")).unwrap();
    assert_agrees("gemma", &engine, &pairs, |ids| {
        model.clear_kv_cache();
        flat(model.forward(&input(ids), 0).unwrap())
    });
}
