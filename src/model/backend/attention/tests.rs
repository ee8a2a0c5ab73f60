use candle_core::{DType, Device, Storage};
use half::bf16;

use super::*;
use crate::model::backend::testing::{attention_reference as reference, max_abs_diff};

/// `out (+)= op(a) @ op(b)` in plain loops: the kernel's logic tested without a library.
fn naive<T: Copy + Into<f32>>(p: Product<T>) -> std::result::Result<(), String> {
    let at = |(transposed, leading): (bool, usize), data: &[T], row: usize, col: usize| {
        match transposed {
            true => data[col * leading + row],
            false => data[row * leading + col],
        }
        .into()
    };
    for i in 0..p.m {
        for j in 0..p.n {
            let product: f32 = (0..p.k)
                .map(|l| at(p.a_layout, p.a, i, l) * at(p.b_layout, p.b, l, j))
                .sum();
            // SAFETY: the kernel hands out m rows of n values at leading ldc.
            let out = unsafe { &mut *p.out.add(i * p.ldc + j) };
            *out = if p.accumulate {
                *out + product
            } else {
                product
            };
        }
    }
    Ok(())
}

/// The kernel's output for `q`, `k`, `v` of `T` (head-major), through [`naive`].
fn fused<T: Element + Default + candle_core::WithDType + Into<f32>>(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    spans: &[Span],
    mask: Mask,
) -> Tensor {
    let slices = [q, k, v].map(|t| {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else {
            unreachable!()
        };
        (storage.as_slice::<T>().unwrap().to_vec(), layout.clone())
    });
    let [(q_data, q_layout), (k_data, k_layout), (v_data, v_layout)] = &slices;
    let inputs = Inputs::new((q_data, q_layout), (k_data, k_layout), (v_data, v_layout)).unwrap();
    let (heads, tokens, head_dim) = q.dims3().unwrap();
    let out = Plan { spans, mask }.run(inputs, &naive::<T>).unwrap();
    Tensor::from_vec(out, (tokens, heads * head_dim), &Device::Cpu).unwrap()
}

fn random(shape: (usize, usize, usize), seed: u64) -> Tensor {
    let count = shape.0 * shape.1 * shape.2;
    let values: Vec<f32> = (0..count as u64)
        .map(|i| ((i * 2_654_435_761 + seed * 97) % 1000) as f32 / 250.0 - 2.0)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A prefix attended alone, a document after it (its context), and a sequence long enough
/// for several query and key blocks.
fn causal_spans() -> Vec<Span> {
    vec![
        Span {
            tokens: 0..37,
            context: None,
        },
        Span {
            tokens: 37..60,
            context: Some(0..37),
        },
        Span {
            tokens: 60..60 + KEY_BLOCK + 150,
            context: None,
        },
    ]
}

/// q, k, v of `tokens`: four query heads on two key/value heads.
fn grouped_heads(tokens: usize) -> (Tensor, Tensor, Tensor) {
    (
        random((4, tokens, 16), 1),
        random((2, tokens, 16), 2),
        random((2, tokens, 16), 3),
    )
}

#[test]
fn fused_attention_equals_each_spans_softmax_causal_with_context_and_grouped_heads() {
    let spans = causal_spans();
    let (q, k, v) = grouped_heads(spans.last().unwrap().tokens.end);
    let expected = reference((&q, &k, &v), &spans, Mask::Causal);
    let got = fused::<f32>((&q, &k, &v), &spans, Mask::Causal);
    assert!(max_abs_diff(&got, &expected) < 1e-5);
}

#[test]
fn fused_attention_equals_each_spans_softmax_both_ways_with_and_without_a_window() {
    let spans = vec![
        Span {
            tokens: 0..5,
            context: None,
        },
        Span {
            tokens: 5..5 + 2 * KEY_BLOCK + 9,
            context: None,
        },
    ];
    let tokens = spans[1].tokens.end;
    let (q, k, v) = (
        random((3, tokens, 8), 4),
        random((3, tokens, 8), 5),
        random((3, tokens, 8), 6),
    );
    for window in [None, Some(2), Some(KEY_BLOCK + 7), Some(10 * KEY_BLOCK)] {
        let mask = Mask::Bidirectional { window };
        let expected = reference((&q, &k, &v), &spans, mask);
        let got = fused::<f32>((&q, &k, &v), &spans, mask);
        assert!(max_abs_diff(&got, &expected) < 1e-5, "{window:?}");
    }
}

#[test]
fn fused_attention_reads_token_major_inputs_in_place_and_runs_in_bf16() {
    let spans = causal_spans();
    let tokens = spans.last().unwrap().tokens.end;
    // Token-major projections (tokens, heads, head_dim) seen head-major: no copy.
    let token_major = |heads, seed| random((tokens, heads, 16), seed).transpose(0, 1).unwrap();
    let (q, k, v) = (token_major(4, 7), token_major(2, 8), token_major(2, 9));
    let expected = reference((&q, &k, &v), &spans, Mask::Causal);
    assert!(max_abs_diff(&fused::<f32>((&q, &k, &v), &spans, Mask::Causal), &expected) < 1e-5);

    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let (q, k, v) = (round(&q), round(&k), round(&v));
    let got = fused::<bf16>((&q, &k, &v), &spans, Mask::Causal);
    assert_eq!(got.dtype(), DType::BF16);
    // bf16 probabilities and output: within bf16's precision of the values (|v| ≤ 2).
    let expected = reference((&q, &k, &v), &spans, Mask::Causal);
    assert!(max_abs_diff(&got, &expected) < 2.0 / 64.0);
}

#[test]
fn spans_that_do_not_cover_the_tokens_once_in_order_are_refused() {
    let (q, k, v) = (
        random((2, 10, 4), 1),
        random((2, 10, 4), 2),
        random((2, 10, 4), 3),
    );
    let short = [Span {
        tokens: 0..9,
        context: None,
    }];
    let (q_s, q_l) = q.storage_and_layout();
    let (k_s, k_l) = k.storage_and_layout();
    let (v_s, v_l) = v.storage_and_layout();
    let slice = |s: &Storage| match s {
        Storage::Cpu(s) => s.as_slice::<f32>().unwrap().to_vec(),
        _ => unreachable!(),
    };
    let (q_d, k_d, v_d) = (slice(&q_s), slice(&k_s), slice(&v_s));
    let span = |tokens, context| Span { tokens, context };
    let overlapping = [span(0..6, None), span(2..6, None)];
    let context_past_the_end = [span(0..6, None), span(6..10, Some(8..12))];
    for spans in [&short[..], &overlapping[..], &context_past_the_end[..]] {
        let inputs = Inputs::new((&q_d, q_l), (&k_d, k_l), (&v_d, v_l)).unwrap();
        let plan = Plan {
            spans,
            mask: Mask::Causal,
        };
        assert!(plan.run(inputs, &naive::<f32>).is_err());
    }
}

#[test]
#[ignore = "needs a BLAS library (.ci/run installs OpenBLAS)"]
fn blas_fused_attention_equals_the_reference() {
    let blas = Blas::open(&super::super::CpuLibrary::Auto)
        .unwrap()
        .expect("no BLAS library found");
    let gemm = LinearGemm::Blas(blas);
    assert!(gemm.fuses_attention());
    let spans = causal_spans();
    let (q, k, v) = grouped_heads(spans.last().unwrap().tokens.end);
    let got = attend((&q, &k, &v), &spans, Mask::Causal, &gemm).unwrap();
    assert!(max_abs_diff(&got, &reference((&q, &k, &v), &spans, Mask::Causal)) < 1e-5);
}

#[test]
fn a_span_after_its_context_scores_as_the_same_sequence_alone_in_bf16() {
    // A prefix of 300 tokens shared by a document of 400: key blocks cross the boundary.
    let (prefix, document) = (300, 400);
    let tokens = prefix + document;
    let round = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    let (q, k, v) = (
        round(random((2, tokens, 16), 1)),
        round(random((2, tokens, 16), 2)),
        round(random((2, tokens, 16), 3)),
    );
    let shared = [
        Span {
            tokens: 0..prefix,
            context: None,
        },
        Span {
            tokens: prefix..tokens,
            context: Some(0..prefix),
        },
    ];
    let alone = [Span {
        tokens: 0..tokens,
        context: None,
    }];
    let shared = fused::<bf16>((&q, &k, &v), &shared, Mask::Causal);
    let alone = fused::<bf16>((&q, &k, &v), &alone, Mask::Causal);
    assert_eq!(max_abs_diff(&shared, &alone), 0.0);
}
