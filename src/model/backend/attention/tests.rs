use super::super::testing::max_abs_diff;
use super::*;
use candle_core::{DType, Device};

fn random(shape: (usize, usize), seed: u64) -> Tensor {
    let values: Vec<f32> = (0..shape.0 * shape.1)
        .map(|i| ((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// Attention written out query by query, straight from its definition, in f64.
fn reference(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    spans: &[Span],
    shape: AttentionShape,
    mask: AttentionMask,
) -> Tensor {
    let [q, k, v] = [q, k, v].map(|t| t.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap());
    let AttentionShape {
        heads,
        kv_heads,
        head_dim: dim,
    } = shape;
    let mut out = vec![vec![0.0f64; heads * dim]; q.len()];
    for span in spans {
        let context = span.context.clone().unwrap_or(0..0);
        let keys: Vec<usize> = context.clone().chain(span.tokens.clone()).collect();
        for (i, token) in span.tokens.clone().enumerate() {
            let position = context.len() + i;
            for head in 0..heads {
                let kv = head / (heads / kv_heads);
                let sees = |key: usize| {
                    let near = mask.window.is_none_or(|w| key.abs_diff(position) < w);
                    near && (!mask.causal || key <= position)
                };
                let scores: Vec<(usize, f64)> = (0..keys.len())
                    .filter(|&key| sees(key))
                    .map(|key| {
                        let dot: f64 = (0..dim)
                            .map(|c| q[token][head * dim + c] * k[keys[key]][kv * dim + c])
                            .sum();
                        (keys[key], dot / (dim as f64).sqrt())
                    })
                    .collect();
                let max = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|s| (s.1 - max).exp()).sum();
                for &(key, score) in &scores {
                    let p = (score - max).exp() / total;
                    for c in 0..dim {
                        out[token][head * dim + c] += p * v[key][kv * dim + c];
                    }
                }
            }
        }
    }
    Tensor::new(out, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// Two sequences continuing a shared 40-token prefix, then a lone one: spans longer than a
/// query block and a key block, and shorter ones.
fn prefix_spans() -> (Vec<Span>, usize) {
    let spans = vec![
        Span {
            tokens: 0..40,
            context: None,
        },
        Span {
            tokens: 40..115,
            context: Some(0..40),
        },
        Span {
            tokens: 115..118,
            context: Some(0..40),
        },
        Span {
            tokens: 118..189,
            context: None,
        },
    ];
    (spans, 189)
}

fn check(shape: AttentionShape, mask: AttentionMask, dtype: DType, tolerance: f32) {
    let (spans, tokens) = prefix_spans();
    let (heads, kv, dim) = (shape.heads, shape.kv_heads, shape.head_dim);
    // q, k and v as columns of one matrix, as a fused QKV projection writes them.
    let qkv = random((tokens, (heads + 2 * kv) * dim), 7)
        .to_dtype(dtype)
        .unwrap();
    let q = qkv.narrow(1, 0, heads * dim).unwrap();
    let k = qkv.narrow(1, heads * dim, kv * dim).unwrap();
    let v = qkv.narrow(1, (heads + kv) * dim, kv * dim).unwrap();
    let expected = reference((&q, &k, &v), &spans, shape, mask);
    for bf16_out in [false, true] {
        let got = attention((&q, &k, &v), &spans, shape, mask, bf16_out).unwrap();
        assert_eq!(got.dtype(), if bf16_out { DType::BF16 } else { DType::F32 });
        // bf16 output: one rounding of values below 1 in magnitude.
        let bound = if bf16_out {
            tolerance + 2f32.powi(-8)
        } else {
            tolerance
        };
        let diff = max_abs_diff(&got, &expected);
        assert!(
            diff <= bound,
            "{shape:?} {mask:?} {dtype:?} bf16 out {bf16_out}: {diff}"
        );
    }
}

const CAUSAL: AttentionMask = AttentionMask {
    causal: true,
    window: None,
};

#[test]
fn causal_attention_with_prefixes_equals_the_definition() {
    // Qwen3-0.6B's heads (GQA 2:1, 128), a head size that is not a multiple of the column
    // block, multi-query (Gemma's one key/value head), and the fixtures' tiny heads.
    for (heads, kv_heads, head_dim) in [(4, 2, 128), (2, 2, 40), (4, 1, 16), (2, 1, 4)] {
        let shape = AttentionShape {
            heads,
            kv_heads,
            head_dim,
        };
        check(shape, CAUSAL, DType::F32, 1e-5);
    }
}

#[test]
fn bf16_inputs_equal_the_definition_on_the_same_values() {
    let shape = AttentionShape {
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
    };
    check(shape, CAUSAL, DType::BF16, 1e-5);
}

#[test]
fn sliding_windows_see_only_their_last_keys() {
    let shape = AttentionShape {
        heads: 2,
        kv_heads: 1,
        head_dim: 32,
    };
    // Inside one key block, across blocks, and wider than every span.
    for window in [1, 5, 33, 64, 500] {
        check(
            shape,
            AttentionMask {
                causal: true,
                window: Some(window),
            },
            DType::F32,
            1e-5,
        );
    }
}

#[test]
fn bidirectional_attention_sees_every_key_of_its_span() {
    let shape = AttentionShape {
        heads: 4,
        kv_heads: 4,
        head_dim: 64,
    };
    for window in [None, Some(9)] {
        check(
            shape,
            AttentionMask {
                causal: false,
                window,
            },
            DType::F32,
            1e-5,
        );
    }
}

#[test]
fn spans_that_do_not_cover_the_tokens_are_an_error() {
    let shape = AttentionShape {
        heads: 1,
        kv_heads: 1,
        head_dim: 4,
    };
    let x = random((6, 4), 1);
    let gap = [
        Span {
            tokens: 0..3,
            context: None,
        },
        Span {
            tokens: 4..6,
            context: None,
        },
    ];
    let err = attention((&x, &x, &x), &gap, shape, CAUSAL, false).unwrap_err();
    assert!(err.to_string().contains("cover the tokens"), "{err}");
    let mixed = x.to_dtype(DType::BF16).unwrap();
    let one = [Span {
        tokens: 0..6,
        context: None,
    }];
    assert!(attention((&x, &mixed, &x), &one, shape, CAUSAL, false).is_err());
}
