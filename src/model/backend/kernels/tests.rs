use super::super::testing::max_abs_diff as max_diff;
use super::*;
use candle_core::{DType, Device};
use candle_nn::LayerNorm;
use half::bf16;

const ON_CPU: Kernels = Kernels {
    cpu_f32: true,
    bf16_matmul_inputs: false,
};
const CANDLE: Kernels = Kernels {
    cpu_f32: false,
    bf16_matmul_inputs: false,
};
/// The CPU's bf16 path: kernels before a matmul write bf16.
const BF16_OUT: Kernels = Kernels {
    cpu_f32: true,
    bf16_matmul_inputs: true,
};

/// `t` rounded to bf16 and back: what a bf16-writing kernel must equal.
fn rounded(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    let count: usize = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|i| ((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32 / 250.0 - 2.0)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn causal_mask_block() -> Tensor {
    let mask: Vec<f32> = (0..16)
        .flat_map(|i| (0..16).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (16, 16), &Device::Cpu).unwrap()
}

#[test]
fn each_kernel_computes_what_candles_ops_compute() {
    let (a, b) = (random(&[70, 300], 1), random(&[70, 300], 2));
    assert!(max_diff(&ON_CPU.add(&a, &b).unwrap(), &CANDLE.add(&a, &b).unwrap()) == 0.0);
    assert!(
        max_diff(
            &ON_CPU.swiglu(&a, &b).unwrap(),
            &CANDLE.swiglu(&a, &b).unwrap()
        ) < 1e-6
    );
    assert!(
        max_diff(
            &ON_CPU.geglu(&a, &b, Gelu::Tanh).unwrap(),
            &CANDLE.geglu(&a, &b, Gelu::Tanh).unwrap()
        ) < 1e-6
    );
    assert!(
        max_diff(
            &ON_CPU.geglu(&a, &b, Gelu::Erf).unwrap(),
            &CANDLE.geglu(&a, &b, Gelu::Erf).unwrap()
        ) < 1e-6
    );

    let x = random(&[37, 4, 16], 3);
    let (cos, sin) = (
        random(&[37, 8], 4).cos().unwrap(),
        random(&[37, 8], 5).sin().unwrap(),
    );
    let fused = ON_CPU.rope_head_major(&x, None, (&cos, &sin)).unwrap();
    assert_eq!(fused.dims(), &[4, 37, 16]);
    assert!(
        max_diff(
            &fused,
            &CANDLE.rope_head_major(&x, None, (&cos, &sin)).unwrap()
        ) < 1e-6
    );
    // Qwen3's per-head norm folded in before the rotation.
    let head_norm = RmsNorm::new(random(&[16], 14), 1e-6);
    let fused = ON_CPU
        .rope_head_major(&x, Some(&head_norm), (&cos, &sin))
        .unwrap();
    let reference = CANDLE
        .rope_head_major(&x, Some(&head_norm), (&cos, &sin))
        .unwrap();
    assert!(max_diff(&fused, &reference) < 1e-5);

    let block = causal_mask_block();
    // Two key/value heads, groups of 3 query heads, a chunk of 5 queries after 9 keys.
    let scores = random(&[2, 3, 5, 14], 6);
    let fused = ON_CPU.causal_softmax(&scores, 0.125, 9, &block).unwrap();
    let reference = CANDLE.causal_softmax(&scores, 0.125, 9, &block).unwrap();
    assert!(max_diff(&fused, &reference) < 1e-6);
    let rows = fused.sum_keepdim(3).unwrap().flatten_all().unwrap();
    assert!(
        rows.to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|s| (s - 1.0).abs() < 1e-5)
    );
    assert_eq!(fused.to_dtype(DType::F32).unwrap().dims(), scores.dims());
}

#[test]
fn kernels_before_a_matmul_write_bf16_the_rounded_f32_result() {
    let (a, b) = (random(&[70, 300], 1), random(&[70, 300], 2));
    let swiglu = BF16_OUT.swiglu(&a, &b).unwrap();
    assert_eq!(swiglu.dtype(), DType::BF16);
    assert!(max_diff(&swiglu, &rounded(&ON_CPU.swiglu(&a, &b).unwrap())) == 0.0);
    // The residual stream stays f32.
    assert_eq!(BF16_OUT.add(&a, &b).unwrap().dtype(), DType::F32);

    let x = random(&[37, 4, 16], 3);
    let (cos, sin) = (
        random(&[37, 8], 4).cos().unwrap(),
        random(&[37, 8], 5).sin().unwrap(),
    );
    let rotated = BF16_OUT.rope_head_major(&x, None, (&cos, &sin)).unwrap();
    assert_eq!(
        (rotated.dtype(), rotated.dims()),
        (DType::BF16, &[4, 37, 16][..])
    );
    let f32_rotated = ON_CPU.rope_head_major(&x, None, (&cos, &sin)).unwrap();
    assert!(max_diff(&rotated, &rounded(&f32_rotated)) == 0.0);

    let head_major = x.transpose(0, 1).unwrap().contiguous().unwrap();
    assert!(max_diff(&ON_CPU.head_major(&x).unwrap(), &head_major) == 0.0);
    let values = BF16_OUT.head_major(&x).unwrap();
    assert_eq!(values.dtype(), DType::BF16);
    assert!(max_diff(&values, &rounded(&head_major)) == 0.0);

    let scores = random(&[2, 3, 5, 14], 6);
    let block = causal_mask_block();
    let probs = BF16_OUT.causal_softmax(&scores, 0.125, 9, &block).unwrap();
    assert_eq!(probs.dtype(), DType::BF16);
    let f32_probs = ON_CPU.causal_softmax(&scores, 0.125, 9, &block).unwrap();
    assert!(max_diff(&probs, &rounded(&f32_probs)) == 0.0);

    // RMS norm against candle's, to bf16's precision (its sums run in another order).
    let weight = random(&[300], 7);
    let norm = RmsNorm::new(weight, 1e-6);
    let normed = BF16_OUT.rms_norm(&a, &norm).unwrap();
    assert_eq!(normed.dtype(), DType::BF16);
    let reference = norm.forward(&a).unwrap();
    let largest = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max_diff(&normed, &reference) <= largest / 128.0);
    assert!(max_diff(&ON_CPU.rms_norm(&a, &norm).unwrap(), &reference) == 0.0);
}

#[test]
fn exp_is_within_a_few_ulp_of_libm_and_saturates() {
    let mut worst: f32 = 0.0;
    for i in -87_000..88_000 {
        let x = i as f32 / 1000.0 + 0.000_37;
        let (fast, libm) = (exp(x), x.exp());
        worst = worst.max(((fast - libm) / libm).abs());
    }
    assert!(worst < 5e-7, "worst relative error {worst}");
    assert_eq!(exp(0.0), 1.0);
    assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
    assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
}

#[test]
fn erf_is_within_1e_6_of_candles() {
    let xs: Vec<f32> = (-6000..6000)
        .map(|i| i as f32 / 1000.0 + 0.000_37)
        .collect();
    let reference = Tensor::new(xs.as_slice(), &Device::Cpu)
        .unwrap()
        .erf()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let worst = xs
        .iter()
        .zip(&reference)
        .map(|(&x, &r)| (erf(x) - r).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "worst absolute error {worst}");
    assert_eq!((erf(-20.0), erf(20.0), erf(-0.7)), (-1.0, 1.0, -erf(0.7)));
}

#[test]
fn encoder_kernels_compute_what_candles_ops_compute() {
    // A fused projection of 37 tokens: 3 parts of 4 heads of 16.
    let (x, bias) = (random(&[37, 192], 8), random(&[192], 9));
    let split = ON_CPU.split_heads(&x, Some(&bias), 3, 4).unwrap();
    assert_eq!(split.dims(), &[3, 4, 37, 16]);
    let reference = CANDLE.split_heads(&x, Some(&bias), 3, 4).unwrap();
    assert!(max_diff(&split, &reference) == 0.0);
    let split = BF16_OUT.split_heads(&x, None, 3, 4).unwrap();
    assert_eq!(split.dtype(), DType::BF16);
    let reference = CANDLE.split_heads(&x, None, 3, 4).unwrap();
    assert!(max_diff(&split, &rounded(&reference)) == 0.0);

    for gelu in [Gelu::Erf, Gelu::Tanh] {
        let fused = ON_CPU.bias_gelu(&x, Some(&bias), gelu).unwrap();
        let reference = CANDLE.bias_gelu(&x, Some(&bias), gelu).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-6, "{gelu:?}");
        let fused = BF16_OUT.bias_gelu(&x, Some(&bias), gelu).unwrap();
        assert_eq!(fused.dtype(), DType::BF16);
        assert!(
            max_diff(&fused, &rounded(&reference)) <= 1.0 / 128.0,
            "{gelu:?}"
        );
    }

    let (residual, weight, shift) = (
        random(&[37, 192], 10),
        random(&[192], 11),
        random(&[192], 12),
    );
    for norm in [
        LayerNorm::new(weight.clone(), shift, 1e-12),
        LayerNorm::new_no_bias(weight, 1e-5),
    ] {
        let fused = ON_CPU
            .add_layer_norm(&x, Some(&bias), &residual, &norm)
            .unwrap();
        let reference = CANDLE
            .add_layer_norm(&x, Some(&bias), &residual, &norm)
            .unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5);
        // The residual stream stays f32.
        let fused = BF16_OUT.add_layer_norm(&x, None, &residual, &norm).unwrap();
        assert_eq!(fused.dtype(), DType::F32);
    }

    // Four heads, a chunk of 5 queries from the 4th of 14 keys, with and without a window.
    let scores = random(&[4, 5, 14], 13);
    for window in [None, Some(3), Some(13)] {
        let fused = ON_CPU
            .bidirectional_softmax(&scores, 0.125, 3, window)
            .unwrap();
        let reference = CANDLE
            .bidirectional_softmax(&scores, 0.125, 3, window)
            .unwrap();
        assert!(max_diff(&fused, &reference) < 1e-6, "{window:?}");
        let probs = BF16_OUT
            .bidirectional_softmax(&scores, 0.125, 3, window)
            .unwrap();
        assert_eq!(probs.dtype(), DType::BF16);
        assert!(max_diff(&probs, &rounded(&fused)) == 0.0);
    }
    let windowed = ON_CPU
        .bidirectional_softmax(&scores, 0.125, 3, Some(3))
        .unwrap();
    // Query 0 of the chunk is key 3: keys 0..=6 seen, key 7 not.
    let first_row = windowed
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(first_row[..7].iter().all(|&p| p > 0.0) && first_row[7..].iter().all(|&p| p == 0.0));
}

#[test]
fn bf16_rounding_is_halfs_on_every_kind_of_value() {
    let specials = [
        0.0,
        -0.0,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0 + f32::EPSILON,
        f32::from_bits(0x3F80_8000), // a tie rounded to even (down)
        f32::from_bits(0x3F81_8000), // a tie rounded to even (up)
        f32::from_bits(0x0000_8001), // a subnormal
    ];
    let spread = (0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)));
    for value in specials.into_iter().chain(spread) {
        let (ours, halfs) = (<bf16 as Element>::from_f32(value), bf16::from_f32(value));
        match value.is_nan() {
            true => assert!(ours.is_nan(), "{value}"),
            false => assert_eq!(ours.to_bits(), halfs.to_bits(), "{value:e}"),
        }
    }
}

#[test]
fn other_dtypes_are_refused_not_misread() {
    let a = random(&[4, 4], 1).to_dtype(DType::BF16).unwrap();
    assert!(ON_CPU.add(&a, &a).is_err());
}

#[test]
fn the_residual_add_and_the_norm_in_one_pass_equal_the_two_steps() {
    let (residual, delta) = (random(&[70, 300], 11), random(&[70, 300], 12));
    let norm = RmsNorm::new(random(&[300], 13), 1e-6);
    let sum = (&residual + &delta).unwrap();
    for kernels in [ON_CPU, BF16_OUT] {
        let (fused_sum, normed) = kernels
            .add_rms_norm(&residual, delta.copy().unwrap(), &norm)
            .unwrap();
        assert!(max_diff(&fused_sum, &sum) == 0.0);
        assert_eq!(fused_sum.dtype(), DType::F32);
        // The same row kernel as the norm alone, on the sum.
        let alone = kernels.rms_norm(&sum, &norm).unwrap();
        let alone = match kernels.bf16_matmul_inputs {
            true => alone,
            false => sum
                .apply_op1_no_bwd(&RmsNormKernel {
                    weight: &norm.weight().to_vec1::<f32>().unwrap(),
                    eps: 1e-6,
                    bf16_out: false,
                })
                .unwrap(),
        };
        assert_eq!(normed.dtype(), alone.dtype());
        assert!(max_diff(&normed, &alone) == 0.0);
        // And candle's norm, to bf16's precision.
        let reference = norm.forward(&sum).unwrap();
        let largest = reference.abs().unwrap().max_all().unwrap();
        let largest = largest.to_scalar::<f32>().unwrap();
        assert!(max_diff(&normed, &reference) <= largest / 128.0);
    }
    // Shapes that do not match are refused.
    let short = random(&[70, 299], 14);
    assert!(
        ON_CPU
            .add_rms_norm(&short, delta.copy().unwrap(), &norm)
            .is_err()
    );
    assert!(CANDLE.add_rms_norm(&residual, delta, &norm).is_err());
}
