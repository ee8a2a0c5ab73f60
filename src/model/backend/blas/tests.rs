use candle_core::{Device, IndexOp};

use super::*;

/// The installed BLAS. The tests that need one are ignored by default (reported as
/// such, never as passed); `.ci/run` installs OpenBLAS and runs them with `--ignored`.
fn blas() -> Arc<Blas> {
    Blas::open(&CpuLibrary::Auto)
        .unwrap()
        .expect("no BLAS library found: install OpenBLAS (libopenblas0-pthread), BLIS or MKL")
}

fn assert_close(a: &Tensor, b: &Tensor) {
    let diff = super::super::testing::max_abs_diff(a, b);
    assert!(diff < 1e-4, "max |Δ| {diff}");
}

#[test]
#[ignore = "needs a BLAS library; run with --ignored where one is installed"]
fn blas_matmul_equals_candle_on_every_layout() {
    let blas = blas();
    let device = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (37, 24), &device).unwrap();
    let w = Tensor::randn(0f32, 1.0, (19, 24), &device).unwrap();
    // A linear layer: x @ w^T.
    let wt = w.t().unwrap();
    assert_close(&blas.matmul(&x, &wt).unwrap(), &x.matmul(&wt).unwrap());
    // Batches, rows of a wider tensor (attention over a span of the packed tokens), and
    // a transposed right side (keys).
    let q = Tensor::randn(0f32, 1.0, (3, 50, 8), &device).unwrap();
    let k = Tensor::randn(0f32, 1.0, (3, 50, 8), &device).unwrap();
    let (q_span, k_span) = (q.narrow(1, 10, 17).unwrap(), k.narrow(1, 5, 22).unwrap());
    let kt = k_span.t().unwrap();
    let scores = blas.matmul(&q_span, &kt).unwrap();
    assert_close(&scores, &q_span.contiguous().unwrap().matmul(&kt).unwrap());
    let v = k.narrow(1, 0, 22).unwrap();
    assert_close(
        &blas.matmul(&scores, &v).unwrap(),
        &scores.matmul(&v).unwrap(),
    );
    // A transposed left side, and one row.
    let xt = x.t().unwrap();
    assert_close(&blas.matmul(&xt, &x).unwrap(), &xt.matmul(&x).unwrap());
    let row = x.i(3..4).unwrap();
    assert_close(&blas.matmul(&row, &wt).unwrap(), &row.matmul(&wt).unwrap());
}

#[test]
#[ignore = "needs a BLAS library; run with --ignored where one is installed"]
fn blas_row_blocks_stay_inside_their_matrix() {
    let blas = blas();
    // More threads than matrices, and rows that do not divide among them: every matrix
    // splits into row blocks of its own.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let a = Tensor::randn(0f32, 1.0, (2, 10, 6), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, (2, 6, 5), &Device::Cpu).unwrap();
    let product = pool.install(|| blas.matmul(&a, &b)).unwrap();
    assert_close(&product, &a.matmul(&b).unwrap());
}

#[test]
fn a_library_that_does_not_load_is_an_error_naming_it() {
    let err = Blas::open(&CpuLibrary::Library("libno-such-blas.so".into()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("libno-such-blas.so"), "{err}");
    assert!(Blas::open(&CpuLibrary::Off).unwrap().is_none());
    assert_eq!("auto".parse::<CpuLibrary>(), Ok(CpuLibrary::Auto));
    assert!("".parse::<CpuLibrary>().is_err());
}
