use candle_core::{DType, Device};

use super::super::testing::max_abs_diff;
use super::*;

/// `a @ b` in f32 arithmetic on the bf16 values of both: what every path must give.
fn reference(a: &Tensor, b: &Tensor) -> Tensor {
    let values = |t: &Tensor| {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    values(a).matmul(&values(b)).unwrap()
}

fn inputs() -> (Tensor, Tensor) {
    let device = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (37, 96), &device).unwrap();
    let w = Tensor::randn(0f32, 0.1, (53, 96), &device)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    (x, w)
}

#[test]
fn widened_linear_is_f32_arithmetic_on_bf16_values() {
    let (x, w) = inputs();
    let widened = Bf16Matmul {
        library: None,
        blas: None,
    };
    let product = widened.linear(&x, &w).unwrap();
    assert_eq!(product.dtype(), DType::F32);
    assert!(max_abs_diff(&product, &reference(&x, &w.t().unwrap())) < 1e-5);
    // Columns of a wider input (not contiguous).
    let wide = Tensor::randn(0f32, 1.0, (37, 200), &Device::Cpu).unwrap();
    let narrow = wide.narrow(1, 10, 96).unwrap();
    let product = widened.linear(&narrow, &w).unwrap();
    assert!(max_abs_diff(&product, &reference(&narrow, &w.t().unwrap())) < 1e-5);
    // The input really is rounded: unrounded f32 differs.
    let unrounded = x
        .matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
        .unwrap();
    assert!(max_abs_diff(&product, &unrounded) > 1e-5);
}

#[test]
fn rounding_to_bf16_is_to_nearest_even() {
    let values = [
        1.0f32,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -2.5e-3,
        3.0e38,
    ];
    let input = Tensor::new(&values, &Device::Cpu).unwrap();
    let rounded = input
        .apply_op1_no_bwd(&Bf16Values)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let expected: Vec<f32> = values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_eq!(rounded, expected);
    // Halfway between 1 and the next bf16 rounds to the even one, 1.
    assert_eq!(rounded[1], 1.0);
    assert_eq!(rounded[2], 1.0 + 4.0 / 256.0);
    // Rounding into bf16 storage gives the same values.
    let stored = to_bf16(&input).unwrap();
    assert_eq!(stored.dtype(), DType::BF16);
    let stored = stored
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(stored, expected);
}

#[test]
fn off_and_a_cpu_without_bf16_instructions_widen() {
    let plain = CpuFeatures::default();
    for choice in [CpuLibrary::Off, CpuLibrary::Auto] {
        let matmul = Bf16Matmul::open(&choice, &plain, None).unwrap();
        assert!(!matmul.multiplies_bf16(), "{choice}");
        assert!(matmul.description().starts_with("bf16 weights widened"));
    }
}

#[test]
fn a_library_that_is_missing_or_not_a_bf16_gemm_is_an_error_naming_it() {
    let cpu = CpuFeatures::detect();
    for name in ["libno-such-dnnl.so", "libc.so.6"] {
        let err = Bf16Matmul::open(&CpuLibrary::Library(name.into()), &cpu, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(name), "{err}");
    }
}

/// Each installed bf16 GEMM library (MKL, oneDNN) against f32 arithmetic on the same
/// bf16 values, on the layouts the forward gives it. MKL runs on any x86 CPU (`.ci/run`
/// installs it from PyPI and runs this with `--ignored`); oneDNN only where the CPU has
/// AVX512-BF16 or AMX.
#[test]
#[ignore = "needs MKL (pip install mkl, its lib directory on LD_LIBRARY_PATH) or oneDNN on a CPU with AVX512-BF16 or AMX"]
fn bf16_library_products_equal_f32_arithmetic_on_bf16_values() {
    let libraries: Vec<Bf16Matmul> = AUTO_LIBRARIES
        .iter()
        .filter_map(|name| Bf16Library::load(name).ok())
        .map(|library| Bf16Matmul {
            library: Some(library),
            blas: None,
        })
        .collect();
    assert!(!libraries.is_empty(), "no bf16 GEMM library loads here");
    let device = Device::Cpu;
    // More threads than matrices: every product splits into column blocks, the last
    // one partial (53 columns, blocks of 64 and fewer).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for matmul in &libraries {
        let name = matmul.description();
        let (x, w) = inputs();
        let wide_w = Tensor::randn(0f32, 0.1, (300, 96), &device)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        for (x, w) in [
            (x.clone(), w.clone()),
            (x.narrow(0, 3, 1).unwrap(), w.clone()),
            (x.clone(), wide_w),
        ] {
            let expected = reference(&x, &w.t().unwrap());
            let product = pool.install(|| matmul.linear(&x, &w)).unwrap();
            assert!(max_abs_diff(&product, &expected) < 1e-4, "{name}");
            // A bf16 input, as the kernels before a linear layer write it.
            let product = matmul.linear(&to_bf16(&x).unwrap(), &w).unwrap();
            assert!(max_abs_diff(&product, &expected) < 1e-4, "{name}");
        }
        // Attention: a span of the packed queries, keys transposed, a batch of heads.
        let q = Tensor::randn(0f32, 1.0, (3, 50, 8), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (3, 50, 8), &device).unwrap();
        let (q_span, k_span) = (
            to_bf16(&q).unwrap().narrow(1, 10, 17).unwrap(),
            to_bf16(&k).unwrap().narrow(1, 5, 22).unwrap(),
        );
        let kt = k_span.t().unwrap();
        let scores = pool.install(|| matmul.matmul(&q_span, &kt)).unwrap();
        assert_eq!(scores.dims(), &[3, 17, 22]);
        assert!(
            max_abs_diff(&scores, &reference(&q_span, &kt)) < 1e-4,
            "{name}"
        );
        let v = to_bf16(&k).unwrap().narrow(1, 0, 22).unwrap();
        let out = matmul.matmul(&scores, &v).unwrap();
        assert!(max_abs_diff(&out, &reference(&scores, &v)) < 1e-3, "{name}");
    }
}
