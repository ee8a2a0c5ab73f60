//! bf16 weights on the CPU (`--dtype bf16`): a linear layer multiplies its input, rounded to
//! bf16, by its bf16 weight and accumulates in f32; the rest of the forward (norms, rotary,
//! attention, softmax, the head dot and the score) stays f32. Where the CPU has AVX512-BF16 or
//! AMX, oneDNN's `dnnl_gemm_bf16bf16f32` multiplies (about twice the f32 throughput there).
//! Elsewhere each weight is widened to f32 for the call and the f32 matmul multiplies: the
//! product of two bf16 values is exact in f32, so the scores are the same (up to the order of
//! the sums) with half the weight memory of f32, at about f32 speed.

use std::ffi::{c_char, c_int};
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use half::bf16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::device::CpuFeatures;
use super::error::{ModelError, Result};
use super::kernels::contiguous_data;
use super::linear::{Blas, CpuLibrary, matmul, timed_matmul};

/// oneDNN libraries tried, in order, when the choice is automatic (v3, then Debian's v2).
const AUTO_LIBRARIES: &[&str] = &["libdnnl.so.3", "libdnnl.so.2", "libdnnl.so"];

/// Values a parallel conversion task takes at least.
const CONVERT_CHUNK: usize = 1 << 15;

/// `dnnl_gemm_bf16bf16f32`: row-major `C = alpha·op(A)·op(B) + beta·C`, 64-bit sizes; the
/// same in oneDNN 2.x and 3.x. Returns a `dnnl_status_t` (0 is success, 3 unimplemented).
type GemmBf16 = unsafe extern "C" fn(
    trans_a: c_char,
    trans_b: c_char,
    m: i64,
    n: i64,
    k: i64,
    alpha: f32,
    a: *const bf16,
    lda: i64,
    b: *const bf16,
    ldb: i64,
    beta: f32,
    c: *mut f32,
    ldc: i64,
) -> i32;

/// oneDNN's `dnnl_version_t`.
#[repr(C)]
struct DnnlVersion {
    major: i32,
    minor: i32,
    patch: i32,
    hash: *const c_char,
    cpu_runtime: u32,
    gpu_runtime: u32,
}

/// A loaded oneDNN whose bf16 GEMM ran correctly on this CPU.
struct OneDnn {
    gemm: GemmBf16,
    /// OpenMP's `omp_set_num_threads`, in builds on OpenMP (Debian's): OpenMP counts the
    /// machine's cores, rayon the cores this process may use (a container's CPU quota).
    set_threads: Option<unsafe extern "C" fn(c_int)>,
    description: String,
    // Keeps `gemm` valid.
    _library: libloading::Library,
}

impl OneDnn {
    fn load(name: &str) -> Result<OneDnn> {
        let failed = |why: String| ModelError::Device(format!("oneDNN library {name}: {why}"));
        // SAFETY: loading runs the library's initialisers, which only set up its state.
        let library =
            unsafe { libloading::Library::new(name) }.map_err(|e| failed(e.to_string()))?;
        // SAFETY: the signature of `dnnl_gemm_bf16bf16f32` in oneDNN 2.x and 3.x.
        let gemm = *unsafe { library.get::<GemmBf16>(b"dnnl_gemm_bf16bf16f32\0") }
            .map_err(|e| failed(e.to_string()))?;
        // SAFETY: `dnnl_version` returns a pointer to a static `dnnl_version_t`.
        let version = unsafe {
            library.get::<unsafe extern "C" fn() -> *const DnnlVersion>(b"dnnl_version\0")
        }
        .ok()
        .map(|version| unsafe { &*version() })
        .map_or_else(String::new, |v| {
            format!(" {}.{}.{}", v.major, v.minor, v.patch)
        });
        // SAFETY: OpenMP's `omp_set_num_threads(int)`, found among oneDNN's dependencies.
        let set_threads =
            unsafe { library.get::<unsafe extern "C" fn(c_int)>(b"omp_set_num_threads\0") }
                .ok()
                .map(|symbol| *symbol);
        let onednn = OneDnn {
            gemm,
            set_threads,
            description: format!("oneDNN{version} bf16 GEMM ({name})"),
            _library: library,
        };
        onednn.check().map_err(failed)?;
        Ok(onednn)
    }

    /// Runs a small product and compares it with f32 arithmetic: oneDNN answers
    /// "unimplemented" where its bf16 kernels need instructions the CPU lacks.
    fn check(&self) -> std::result::Result<(), String> {
        let (m, n, k) = (3, 5, 7);
        let value = |i: usize| bf16::from_f32((i % 11) as f32 * 0.25 - 1.0);
        let a: Vec<bf16> = (0..m * k).map(value).collect();
        let b: Vec<bf16> = (0..n * k).map(|i| value(i * 3 + 1)).collect();
        let mut out = vec![0f32; m * n];
        self.gemm_nt(&a, &b, (m, n, k), &mut out)?;
        for (i, &got) in out.iter().enumerate() {
            let (row, col) = (i / n, i % n);
            let expected: f32 = (0..k)
                .map(|j| a[row * k + j].to_f32() * b[col * k + j].to_f32())
                .sum();
            if (got - expected).abs() > 1e-4 {
                return Err(format!(
                    "dnnl_gemm_bf16bf16f32 computed {got} where {expected} was expected"
                ));
            }
        }
        Ok(())
    }

    /// `out (m, n) = a (m, k) @ b^T` for row-major `b (n, k)`.
    fn gemm_nt(
        &self,
        a: &[bf16],
        b: &[bf16],
        (m, n, k): (usize, usize, usize),
        out: &mut [f32],
    ) -> std::result::Result<(), String> {
        assert!(a.len() >= m * k && b.len() >= n * k && out.len() >= m * n);
        let dim = |v: usize| v as i64;
        if let Some(set_threads) = self.set_threads {
            let threads = c_int::try_from(rayon::current_num_threads()).unwrap_or(c_int::MAX);
            // SAFETY: sets the OpenMP thread count of the calling thread's next regions.
            unsafe { set_threads(threads) };
        }
        // SAFETY: `a` holds m × k, `b` n × k and `out` m × n values, row-major with the
        // leading dimensions given; the call reads a and b and writes only out.
        let status = unsafe {
            (self.gemm)(
                b'N' as c_char,
                b'T' as c_char,
                dim(m),
                dim(n),
                dim(k),
                1.0,
                a.as_ptr(),
                dim(k),
                b.as_ptr(),
                dim(k),
                0.0,
                out.as_mut_ptr(),
                dim(n),
            )
        };
        match status {
            0 => Ok(()),
            3 => Err("dnnl_gemm_bf16bf16f32 is unimplemented on this CPU (status 3)".into()),
            status => Err(format!("dnnl_gemm_bf16bf16f32 failed with status {status}")),
        }
    }
}

/// The matmul of bf16 linear layers on the CPU: oneDNN where it runs, else widening.
pub struct Bf16Matmul {
    onednn: Option<OneDnn>,
    /// The f32 matmul: the attention's, and the widened layers'.
    blas: Option<Arc<Blas>>,
}

impl Bf16Matmul {
    /// oneDNN as `choice` says, where the CPU multiplies bf16 natively; the fallback is
    /// logged. An explicitly named library must load and compute correctly.
    pub fn open(
        choice: &CpuLibrary,
        cpu: &CpuFeatures,
        blas: Option<Arc<Blas>>,
    ) -> Result<Bf16Matmul> {
        let onednn = match choice {
            CpuLibrary::Off => None,
            CpuLibrary::Auto if !cpu.has_bf16_gemm() => {
                tracing::warn!(
                    "--dtype bf16 on a CPU with {}: the bf16 weights are widened to f32 for each matmul (half the memory of f32 weights, about f32 speed; --dtype f32 runs as fast, without the rounding)",
                    cpu.bf16_instructions()
                );
                None
            }
            CpuLibrary::Auto => {
                let found = AUTO_LIBRARIES.iter().find_map(|name| {
                    OneDnn::load(name)
                        .inspect_err(|err| tracing::debug!("{err}"))
                        .ok()
                });
                if found.is_none() {
                    tracing::warn!(
                        "this CPU has {} but no working oneDNN was found ({}): the bf16 weights are widened to f32 for each matmul; install oneDNN (Debian: libdnnl2) for about twice the speed",
                        cpu.bf16_instructions(),
                        AUTO_LIBRARIES.join(", ")
                    );
                }
                found
            }
            CpuLibrary::Library(name) => {
                let onednn = OneDnn::load(name)?;
                if !cpu.has_bf16_gemm() {
                    tracing::warn!(
                        "{} on a CPU with {}: oneDNN emulates bf16 and may be slower than f32",
                        onednn.description,
                        cpu.bf16_instructions()
                    );
                }
                Some(onednn)
            }
        };
        Ok(Bf16Matmul { onednn, blas })
    }

    /// The f32 matmul for the attention.
    pub fn blas(&self) -> Option<&Arc<Blas>> {
        self.blas.as_ref()
    }

    /// What multiplies, as `/info` and the start-up log name it.
    pub fn description(&self) -> String {
        let f32_matmul = self
            .blas
            .as_ref()
            .map_or("candle", |blas| blas.description());
        match &self.onednn {
            Some(onednn) => format!("{}; f32 attention: {f32_matmul}", onednn.description),
            None => format!("bf16 weights widened to f32 per matmul: {f32_matmul}"),
        }
    }

    /// `x @ w^T` for an f32 input `x` (tokens, in) and a bf16 weight `w` (out, in): x is
    /// rounded to bf16, the products are summed in f32, the output is f32.
    pub fn linear(&self, x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        match &self.onednn {
            Some(onednn) => x.apply_op2_no_bwd(weight, &OneDnnLinear(onednn)),
            None => {
                let x = x.apply_op1_no_bwd(&Bf16Values)?;
                let weight = weight.apply_op1_no_bwd(&Bf16Values)?;
                matmul(self.blas.as_deref(), &x, &weight.t()?)
            }
        }
    }
}

/// `convert` applied chunk by chunk in parallel, from `data` into a new vector of its length.
fn convert_in_parallel<S: Sync, D: Copy + Default + Send>(
    data: &[S],
    convert: impl Fn(&[S], &mut [D]) + Sync,
) -> Vec<D> {
    let mut out = vec![D::default(); data.len()];
    out.par_chunks_mut(CONVERT_CHUNK)
        .zip(data.par_chunks(CONVERT_CHUNK))
        .for_each(|(out, data)| convert(data, out));
    out
}

/// `x @ w^T` through oneDNN, for f32 `x` (tokens, in) and bf16 `w` (out, in).
struct OneDnnLinear<'a>(&'a OneDnn);

impl CustomOp2 for OneDnnLinear<'_> {
    fn name(&self) -> &'static str {
        "onednn-bf16-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::BF16(w)) = (x, w) else {
            candle_core::bail!("{}: takes an f32 input and a bf16 weight", self.name());
        };
        let (&[m, k], &[n, w_k]) = (x_layout.dims(), w_layout.dims()) else {
            candle_core::bail!("{}: takes (tokens, in) and (out, in)", self.name());
        };
        if k != w_k {
            candle_core::bail!("{}: {m}x{k} input, {n}x{w_k} weight", self.name());
        }
        let (x, w) = (
            contiguous_data(x, x_layout, self.name())?,
            contiguous_data(w, w_layout, self.name())?,
        );
        let x_bf16 = convert_in_parallel(x, |x, out: &mut [bf16]| out.convert_from_f32_slice(x));
        let mut out = vec![0f32; m * n];
        timed_matmul(|| self.0.gemm_nt(&x_bf16, w, (m, n, k), &mut out))
            .map_err(candle_core::Error::msg)?;
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// The bf16 values of a tensor, as f32: an f32 input rounded to bf16 (nearest, ties to
/// even), a bf16 input widened. Contiguous input, parallel over chunks.
struct Bf16Values;

impl CustomOp1 for Bf16Values {
    fn name(&self) -> &'static str {
        "bf16-values"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let widened = match storage {
            CpuStorage::BF16(data) => {
                convert_in_parallel(contiguous_data(data, layout, self.name())?, |data, out| {
                    data.convert_to_f32_slice(out)
                })
            }
            CpuStorage::F32(data) => {
                convert_in_parallel(contiguous_data(data, layout, self.name())?, |data, out| {
                    for (out, &v) in out.iter_mut().zip(data) {
                        *out = bf16::from_f32(v).to_f32();
                    }
                })
            }
            _ => candle_core::bail!("{}: f32 or bf16 data only", self.name()),
        };
        Ok((CpuStorage::F32(widened), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::model::testing::max_abs_diff;

    /// `x @ w^T` in f32 arithmetic on the bf16 values of both: what either path must give.
    fn reference(x: &Tensor, w: &Tensor) -> Tensor {
        let x = x
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let w = w.to_dtype(DType::F32).unwrap();
        x.matmul(&w.t().unwrap()).unwrap()
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
            onednn: None,
            blas: None,
        };
        let product = widened.linear(&x, &w).unwrap();
        assert_eq!(product.dtype(), DType::F32);
        assert!(max_abs_diff(&product, &reference(&x, &w)) < 1e-5);
        // Columns of a wider input (not contiguous).
        let wide = Tensor::randn(0f32, 1.0, (37, 200), &Device::Cpu).unwrap();
        let narrow = wide.narrow(1, 10, 96).unwrap();
        let product = widened.linear(&narrow, &w).unwrap();
        assert!(max_abs_diff(&product, &reference(&narrow, &w)) < 1e-5);
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
        let rounded = Tensor::new(&values, &Device::Cpu)
            .unwrap()
            .apply_op1_no_bwd(&Bf16Values)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let expected: Vec<f32> = values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_eq!(rounded, expected);
        // Halfway between 1 and the next bf16 rounds to the even one, 1.
        assert_eq!(rounded[1], 1.0);
        assert_eq!(rounded[2], 1.0 + 4.0 / 256.0);
    }

    #[test]
    fn off_and_a_cpu_without_bf16_instructions_widen() {
        let plain = CpuFeatures::default();
        for choice in [CpuLibrary::Off, CpuLibrary::Auto] {
            let matmul = Bf16Matmul::open(&choice, &plain, None).unwrap();
            assert!(matmul.onednn.is_none(), "{choice}");
            assert!(matmul.description().starts_with("bf16 weights widened"));
        }
    }

    #[test]
    fn a_library_that_is_missing_or_not_onednn_is_an_error_naming_it() {
        let cpu = CpuFeatures::detect();
        for name in ["libno-such-dnnl.so", "libc.so.6"] {
            let err = Bf16Matmul::open(&CpuLibrary::Library(name.into()), &cpu, None)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    /// oneDNN's bf16 GEMM against f32 arithmetic on the same bf16 values. It needs oneDNN
    /// (Debian: libdnnl2) and a CPU with AVX512-BF16 or AMX; `.ci/run` runs it with
    /// `--ignored` where the CPU has them.
    #[test]
    #[ignore = "needs oneDNN and a CPU with AVX512-BF16 or AMX"]
    fn onednn_linear_equals_f32_arithmetic_on_bf16_values() {
        let cpu = CpuFeatures::detect();
        assert!(
            cpu.has_bf16_gemm(),
            "this CPU has {}",
            cpu.bf16_instructions()
        );
        let matmul = Bf16Matmul::open(&CpuLibrary::Auto, &cpu, None).unwrap();
        assert!(matmul.onednn.is_some(), "no working oneDNN found");
        let (x, w) = inputs();
        let product = matmul.linear(&x, &w).unwrap();
        assert!(max_abs_diff(&product, &reference(&x, &w)) < 1e-4);
        // A row range of a wider input (not contiguous) and one row.
        let wide = Tensor::randn(0f32, 1.0, (37, 200), &Device::Cpu).unwrap();
        let narrow = wide.narrow(1, 10, 96).unwrap();
        let product = matmul.linear(&narrow, &w).unwrap();
        assert!(max_abs_diff(&product, &reference(&narrow, &w)) < 1e-4);
        let row = x.narrow(0, 3, 1).unwrap();
        let product = matmul.linear(&row, &w).unwrap();
        assert!(max_abs_diff(&product, &reference(&row, &w)) < 1e-4);
    }
}
