//! An independent oracle: candle-transformers' own Qwen3 (a generation model: unpacked, one
//! sequence at a time, the full-vocabulary head) scores the fixture checkpoints, and the
//! packed scoring forward must agree with it.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3;
use common::{fixture, goldens, load};
use zerank_server::model::{Engine, TokenLimits};

fn oracle(engine: &Engine, weights: &[std::path::PathBuf]) -> qwen3::ModelForCausalLM {
    let c = engine.config();
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
    // SAFETY: the fixture files are not modified while the test runs.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(weights, DType::F32, &Device::Cpu) }.unwrap();
    qwen3::ModelForCausalLM::new(&config, vb).unwrap()
}

/// The last position's logits over the whole vocabulary.
fn full_logits(model: &mut qwen3::ModelForCausalLM, ids: &[u32]) -> Vec<f32> {
    model.clear_kv_cache();
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&input, 0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
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

#[test]
fn the_packed_forward_agrees_with_candle_transformers_qwen3() {
    let goldens = goldens();
    let pairs: Vec<_> = goldens
        .pairs
        .iter()
        .filter(|p| p.input_ids.len() <= 300)
        .take(6)
        .collect();
    assert!(pairs.len() >= 4);
    // zerank on a tied and on an untied, sharded checkpoint; yes minus no on a native one.
    for name in ["tiny", "sharded", "native-yes-no"] {
        let engine = load(&fixture(name));
        let mut model = oracle(&engine, &weights(name));
        let info = engine.info();
        let sequences: Vec<Vec<u32>> = pairs
            .iter()
            .map(|p| {
                engine
                    .encode(&p.query, &p.document, None, TokenLimits::default())
                    .unwrap()
                    .ids
            })
            .collect();
        let batch: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let packed = engine.score_batch(&batch).unwrap().scores;
        for (i, ids) in sequences.iter().enumerate() {
            let logits = full_logits(&mut model, ids);
            let expected = logits[info.true_token_id as usize]
                - info.false_token_id.map_or(0.0, |id| logits[id as usize]);
            let diff = (packed[i].margin - expected).abs();
            assert!(
                diff <= 1e-4,
                "{name} pair {i}: packed {} vs candle-transformers {expected} (|Δ| {diff})",
                packed[i].margin
            );
        }
    }
}
