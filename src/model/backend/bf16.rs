//! bf16 weights on the CPU (`--dtype bf16`): a linear layer multiplies bf16 activations by its
//! bf16 weight and accumulates in f32. Where a bf16 GEMM library runs (MKL's
//! `cblas_gemm_bf16bf16f32`, or oneDNN's `dnnl_gemm_bf16bf16f32`), the attention's two
//! matmuls (QKᵀ and PV) multiply in bf16 too, and the kernels before each matmul (norms,
//! rotary, softmax, SwiGLU) write bf16 once (see `kernels.rs`). Norms, softmax statistics,
//! the residual stream, the head dot and the score stay f32.
//!
//! The library is called one thread per call: rayon's threads split each product (a linear
//! layer by blocks of output columns, attention by heads), so that no OpenMP pool spins
//! beside rayon's on the same cores. MKL runs its sequential layer; oneDNN (OpenMP) is set to
//! one thread on the calling thread before each call.
//!
//! Without a library, each weight is widened to f32 for the call and candle's f32 gemm
//! multiplies: the product of two bf16 values is exact in f32, so the scores are the same (up
//! to the order of the sums) with half the weight memory of f32, and the attention stays f32.
//! Not the f32 BLAS: its kernels may sum a row differently with the number of rows, and the
//! next layer's rounding to bf16 would turn that into a score that depends on the batch.

use std::ffi::{c_char, c_int};
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use half::bf16;
use half::slice::HalfFloatSliceExt;
use multiversion::multiversion;
use rayon::prelude::*;

use super::blas::{
    Blas, CblasGemm, CpuLibrary, LibraryMatmul, Product, Split, cblas_product, matmul,
};
use super::buffers::{contiguous_data, uninit_vec};
use super::device::CpuFeatures;
use super::kernels::Element;
use crate::model::error::{ModelError, Result};

/// Libraries tried, in order, when the choice is automatic: MKL (PyPI's `mkl`; the faster of
/// the two on the model's shapes, measured in BENCHMARKS.md), then oneDNN (v3, then Debian's
/// v2).
const AUTO_LIBRARIES: &[&str] = &[
    "libmkl_rt.so.3",
    "libmkl_rt.so.2",
    "libmkl_rt.so",
    "libdnnl.so.3",
    "libdnnl.so.2",
    "libdnnl.so",
];

/// Values a parallel conversion task takes at least.
const CONVERT_CHUNK: usize = 1 << 15;

/// `dnnl_gemm_bf16bf16f32`: row-major `C = alpha·op(A)·op(B) + beta·C`, 64-bit sizes; the
/// same in oneDNN 2.x and 3.x. Returns a `dnnl_status_t` (0 is success, 3 unimplemented).
type DnnlGemm = unsafe extern "C" fn(
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

/// MKL's `cblas_gemm_bf16bf16f32` (LP64: 32-bit sizes; `MKL_BF16` is the bf16 bits).
type MklGemm = CblasGemm<bf16>;

/// `MKL_THREADING_SEQUENTIAL` and `MKL_INTERFACE_LP64` of `mkl_service.h`.
const MKL_THREADING_SEQUENTIAL: c_int = 1;
const MKL_INTERFACE_LP64: c_int = 0;

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

/// The entry point of a loaded library.
enum Gemm {
    Mkl(MklGemm),
    OneDnn {
        gemm: DnnlGemm,
        /// OpenMP's `omp_set_num_threads`, in builds on OpenMP (Debian's): the count is the
        /// calling thread's, so each rayon thread sets one.
        set_threads: Option<unsafe extern "C" fn(c_int)>,
    },
}

/// A loaded bf16 GEMM library whose product ran correctly on this CPU.
struct Bf16Library {
    gemm: Gemm,
    description: String,
    // Keeps `gemm` valid.
    _library: libloading::Library,
}

impl Bf16Library {
    /// MKL or oneDNN, told apart by the symbols the library exports.
    fn load(name: &str) -> Result<Bf16Library> {
        let failed = |why: String| ModelError::Device(format!("bf16 GEMM library {name}: {why}"));
        // SAFETY: loading runs the library's initialisers, which only set up its state.
        let library =
            unsafe { libloading::Library::new(name) }.map_err(|e| failed(e.to_string()))?;
        // SAFETY: the signatures of MKL's and oneDNN's entry points, as declared above.
        let (gemm, description) = unsafe {
            if let Ok(gemm) = library.get::<MklGemm>(b"cblas_gemm_bf16bf16f32\0") {
                // Before any other MKL call: the sequential layer, 32-bit integers.
                let layer = library
                    .get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_Set_Threading_Layer\0");
                if let Ok(set_layer) = layer {
                    set_layer(MKL_THREADING_SEQUENTIAL);
                }
                let interface = library
                    .get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_Set_Interface_Layer\0");
                if let Ok(set_interface) = interface {
                    set_interface(MKL_INTERFACE_LP64);
                }
                let version = mkl_version(&library);
                (
                    Gemm::Mkl(*gemm),
                    format!("MKL{version} bf16 GEMM, sequential ({name})"),
                )
            } else if let Ok(gemm) = library.get::<DnnlGemm>(b"dnnl_gemm_bf16bf16f32\0") {
                let set_threads = library
                    .get::<unsafe extern "C" fn(c_int)>(b"omp_set_num_threads\0")
                    .ok()
                    .map(|symbol| *symbol);
                let version = onednn_version(&library);
                (
                    Gemm::OneDnn {
                        gemm: *gemm,
                        set_threads,
                    },
                    format!("oneDNN{version} bf16 GEMM, one thread per call ({name})"),
                )
            } else {
                return Err(failed(
                    "exports neither cblas_gemm_bf16bf16f32 (MKL) nor dnnl_gemm_bf16bf16f32 (oneDNN)"
                        .into(),
                ));
            }
        };
        let loaded = Bf16Library {
            gemm,
            description,
            _library: library,
        };
        loaded.check().map_err(failed)?;
        Ok(loaded)
    }

    /// Runs a small product and compares it with f32 arithmetic: oneDNN answers
    /// "unimplemented" where its bf16 kernels need instructions the CPU lacks.
    fn check(&self) -> std::result::Result<(), String> {
        let (m, n, k) = (3, 5, 7);
        let value = |i: usize| bf16::from_f32((i % 11) as f32 * 0.25 - 1.0);
        let a: Vec<bf16> = (0..m * k).map(value).collect();
        let b: Vec<bf16> = (0..n * k).map(|i| value(i * 3 + 1)).collect();
        let mut out = vec![0f32; m * n];
        self.gemm(Product {
            a: &a,
            a_layout: (false, k),
            b: &b,
            b_layout: (true, k),
            m,
            n,
            k,
            out: out.as_mut_ptr(),
            ldc: n,
            accumulate: false,
        })?;
        for (i, &got) in out.iter().enumerate() {
            let (row, col) = (i / n, i % n);
            let expected: f32 = (0..k)
                .map(|j| a[row * k + j].to_f32() * b[col * k + j].to_f32())
                .sum();
            if (got - expected).abs() > 1e-4 {
                return Err(format!(
                    "its bf16 GEMM computed {got} where {expected} was expected"
                ));
            }
        }
        Ok(())
    }

    /// One product on the calling thread.
    fn gemm(&self, p: Product<bf16>) -> std::result::Result<(), String> {
        assert!(p.operands_fit());
        match self.gemm {
            // SAFETY: the operands hold what their layouts say (asserted above); `out` has m
            // rows of n values at leading `ldc` that this call alone writes.
            Gemm::Mkl(gemm) => Ok(unsafe { cblas_product(gemm, &p) }?),
            Gemm::OneDnn { gemm, set_threads } => {
                if let Some(set_threads) = set_threads {
                    // SAFETY: sets the OpenMP thread count of this thread's next regions.
                    unsafe { set_threads(1) };
                }
                let trans = |(transposed, _)| if transposed { b'T' } else { b'N' } as c_char;
                let dim = |v: usize| v as i64;
                // SAFETY: as for MKL above.
                let status = unsafe {
                    gemm(
                        trans(p.a_layout),
                        trans(p.b_layout),
                        dim(p.m),
                        dim(p.n),
                        dim(p.k),
                        1.0,
                        p.a.as_ptr(),
                        dim(p.a_layout.1),
                        p.b.as_ptr(),
                        dim(p.b_layout.1),
                        p.beta(),
                        p.out,
                        dim(p.ldc),
                    )
                };
                match status {
                    0 => Ok(()),
                    3 => {
                        Err("dnnl_gemm_bf16bf16f32 is unimplemented on this CPU (status 3)".into())
                    }
                    status => Err(format!("dnnl_gemm_bf16bf16f32 failed with status {status}")),
                }
            }
        }
    }
}

/// ` 2026.2`, from MKL's version string, or nothing.
fn mkl_version(library: &libloading::Library) -> String {
    let mut text = [0u8; 256];
    // SAFETY: `MKL_Get_Version_String(char*, int)` writes at most `len` bytes, NUL-terminated.
    let written = unsafe {
        library
            .get::<unsafe extern "C" fn(*mut c_char, c_int)>(b"MKL_Get_Version_String\0")
            .map(|get| get(text.as_mut_ptr().cast(), text.len() as c_int))
    };
    if written.is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&text);
    // "Intel(R) oneAPI Math Kernel Library Version 2026.2-Product Build ..."
    text.split_once("Version ")
        .and_then(|(_, rest)| rest.split(['-', ' ', '\0']).next())
        .map_or_else(String::new, |version| format!(" {version}"))
}

/// ` 2.6.3`, from oneDNN's `dnnl_version`, or nothing.
fn onednn_version(library: &libloading::Library) -> String {
    // SAFETY: `dnnl_version` returns a pointer to a static `dnnl_version_t`.
    unsafe { library.get::<unsafe extern "C" fn() -> *const DnnlVersion>(b"dnnl_version\0") }
        .ok()
        .map(|version| unsafe { &*version() })
        .map_or_else(String::new, |v| {
            format!(" {}.{}.{}", v.major, v.minor, v.patch)
        })
}

/// The matmuls of the CPU's bf16 path: a bf16 GEMM library where one runs, else widening.
pub struct Bf16Matmul {
    library: Option<Bf16Library>,
    /// The attention's f32 matmul without a library.
    blas: Option<Arc<Blas>>,
}

impl Bf16Matmul {
    /// A library as `choice` says, where the CPU multiplies bf16 natively; the fallback is
    /// logged. An explicitly named library must load and compute correctly (MKL computes
    /// bf16 products on CPUs without the instructions too, more slowly).
    pub fn open(
        choice: &CpuLibrary,
        cpu: &CpuFeatures,
        blas: Option<Arc<Blas>>,
    ) -> Result<Bf16Matmul> {
        let library = match choice {
            CpuLibrary::Off => None,
            CpuLibrary::Auto if !cpu.has_bf16_gemm() => {
                tracing::warn!(
                    "--dtype bf16 on a CPU with {}: the bf16 weights are widened to f32 for each matmul (half the memory of f32 weights, through candle's f32 gemm; --dtype f32 runs at least as fast, without the rounding)",
                    cpu.bf16_instructions()
                );
                None
            }
            CpuLibrary::Auto => {
                let found = AUTO_LIBRARIES.iter().find_map(|name| {
                    Bf16Library::load(name)
                        .inspect_err(|err| tracing::debug!("{err}"))
                        .ok()
                });
                if found.is_none() {
                    tracing::warn!(
                        "this CPU has {} but no working bf16 GEMM library was found ({}): the bf16 weights are widened to f32 for each matmul; install MKL (pip install mkl, with its lib directory on LD_LIBRARY_PATH) or oneDNN (Debian: libdnnl2) for several times the speed",
                        cpu.bf16_instructions(),
                        AUTO_LIBRARIES.join(", ")
                    );
                }
                found
            }
            CpuLibrary::Library(name) => {
                let library = Bf16Library::load(name)?;
                if !cpu.has_bf16_gemm() {
                    tracing::warn!(
                        "{} on a CPU with {}: bf16 is emulated and may be slower than f32",
                        library.description,
                        cpu.bf16_instructions()
                    );
                }
                Some(library)
            }
        };
        Ok(Bf16Matmul { library, blas })
    }

    /// Whether a bf16 GEMM library multiplies (else the weights are widened to f32).
    pub fn multiplies_bf16(&self) -> bool {
        self.library.is_some()
    }

    /// What multiplies, as `/info` and the start-up log name it.
    pub fn description(&self) -> String {
        let f32_matmul = self
            .blas
            .as_ref()
            .map_or("candle", |blas| blas.description());
        match &self.library {
            Some(library) => format!("{}; attention in bf16 too", library.description),
            None => format!(
                "bf16 weights widened to f32 per matmul: candle's gemm (attention: {f32_matmul})"
            ),
        }
    }

    /// One product on the calling thread, through the library.
    pub(super) fn product(&self, p: Product<bf16>) -> std::result::Result<(), String> {
        match &self.library {
            Some(library) => library.gemm(p),
            None => Err("no bf16 GEMM library".into()),
        }
    }

    /// `x @ w^T` for an input `x` (tokens, in), f32 or bf16, and a bf16 weight `w`
    /// (out, in): x is rounded to bf16, the products are summed in f32, the output is f32.
    pub fn linear(&self, x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
        match &self.library {
            Some(_) => self.matmul(x, &weight.t()?),
            // candle's gemm, not the BLAS (see the module's comment).
            None => {
                let x = x.contiguous()?.apply_op1_no_bwd(&Bf16Values)?;
                let weight = weight.apply_op1_no_bwd(&Bf16Values)?;
                x.matmul(&weight.t()?)
            }
        }
    }

    /// `a @ b` (rank 2 or 3, as [`Blas::matmul`] takes them), f32 out: in bf16 through the
    /// library (f32 operands rounded first), else in f32.
    pub fn matmul(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        match &self.library {
            Some(library) => {
                let gemm = |product: Product<bf16>| library.gemm(product);
                let product = LibraryMatmul::new("bf16-matmul", Some(Split::Columns), &gemm);
                to_bf16(a)?.apply_op2_no_bwd(&to_bf16(b)?, &product)
            }
            None => matmul(self.blas.as_deref(), a, b),
        }
    }
}

/// `t` as bf16: as it is when bf16, else rounded in one parallel pass.
fn to_bf16(t: &Tensor) -> candle_core::Result<Tensor> {
    match t.dtype() {
        DType::BF16 => Ok(t.clone()),
        _ => t.contiguous()?.apply_op1_no_bwd(&RoundToBf16),
    }
}

/// `convert` applied chunk by chunk in parallel, from `data` into a new vector of its length.
fn convert_in_parallel<S: Sync, D: Copy + Send>(
    data: &[S],
    convert: impl Fn(&[S], &mut [D]) + Sync,
) -> Vec<D> {
    let mut out = uninit_vec(data.len());
    out.par_chunks_mut(CONVERT_CHUNK)
        .zip(data.par_chunks(CONVERT_CHUNK))
        .for_each(|(out, data)| convert(data, out));
    out
}

/// An f32 tensor rounded to bf16 (nearest, ties to even). Contiguous input, parallel over
/// chunks.
struct RoundToBf16;

impl CustomOp1 for RoundToBf16 {
    fn name(&self) -> &'static str {
        "round-to-bf16"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: f32 data only", self.name());
        };
        let rounded =
            convert_in_parallel(contiguous_data(data, layout, self.name())?, round_to_bf16);
        Ok((CpuStorage::BF16(rounded), layout.shape().clone()))
    }
}

/// `data` rounded to bf16 into `out` (nearest, ties to even), vectorised.
#[multiversion(targets = "simd")]
fn round_to_bf16(data: &[f32], out: &mut [bf16]) {
    for (o, &v) in out.iter_mut().zip(data) {
        *o = <bf16 as Element>::from_f32(v);
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
mod tests;
