use super::super::testing::max_abs_diff as max_diff;
use super::*;
use candle_core::{DType, Device};

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
            &ON_CPU.geglu(&a, &b).unwrap(),
            &CANDLE.geglu(&a, &b).unwrap()
        ) < 1e-6
    );

    let x = random(&[37, 4, 16], 3);
    let (cos, sin) = (
        random(&[37, 8], 4).cos().unwrap(),
        random(&[37, 8], 5).sin().unwrap(),
    );
    let fused = ON_CPU.rope_head_major(&x, &cos, &sin).unwrap();
    assert_eq!(fused.dims(), &[4, 37, 16]);
    assert!(max_diff(&fused, &CANDLE.rope_head_major(&x, &cos, &sin).unwrap()) < 1e-6);

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
    let rotated = BF16_OUT.rope_head_major(&x, &cos, &sin).unwrap();
    assert_eq!(
        (rotated.dtype(), rotated.dims()),
        (DType::BF16, &[4, 37, 16][..])
    );
    let f32_rotated = ON_CPU.rope_head_major(&x, &cos, &sin).unwrap();
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
fn other_dtypes_are_refused_not_misread() {
    let a = random(&[4, 4], 1).to_dtype(DType::BF16).unwrap();
    assert!(ON_CPU.add(&a, &a).is_err());
}
