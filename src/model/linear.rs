//! Linear layers, with f32 matmuls on the CPU through the system's BLAS when one is
//! installed. candle 0.11's own gemm has no AVX-512 kernels: on CPUs that have them an
//! optimised BLAS (OpenBLAS, BLIS, MKL) multiplies up to 3× faster. The library is loaded at
//! run time, so the build needs none and a machine without one runs candle's gemm. bf16
//! weights on the CPU multiply through [`Bf16Matmul`] (see `bf16.rs`).

use std::ffi::{c_char, c_int};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::bf16::Bf16Matmul;
use super::device::CpuFeatures;
use super::error::{ModelError, Result};

/// Libraries tried, in order, when the choice is automatic: optimised BLAS builds only (a
/// plain `libblas.so.3` may be the slow reference implementation).
const AUTO_LIBRARIES: &[&str] = &[
    "libopenblas.so.0",
    "libopenblas.so",
    "libblis.so.4",
    "libmkl_rt.so.2",
    "libmkl_rt.so",
];

/// Which native library runs a CPU matmul: the f32 BLAS (`cpu_blas`), or oneDNN for bf16
/// weights (`cpu_onednn`).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Default,
    serde_with::DeserializeFromStr,
    serde_with::SerializeDisplay,
)]
pub enum CpuLibrary {
    /// The first suitable library found on the library path, else the built-in path.
    #[default]
    Auto,
    /// The built-in path: candle's gemm for f32, widened weights for bf16.
    Off,
    /// This library; failing to load it is an error.
    Library(String),
}

impl FromStr for CpuLibrary {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "" => Err(
                "an empty library choice (expected auto, off, or a library path or name)".into(),
            ),
            "auto" => Ok(CpuLibrary::Auto),
            "off" | "none" => Ok(CpuLibrary::Off),
            library => Ok(CpuLibrary::Library(library.to_owned())),
        }
    }
}

impl fmt::Display for CpuLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuLibrary::Auto => write!(f, "auto"),
            CpuLibrary::Off => write!(f, "off"),
            CpuLibrary::Library(library) => write!(f, "{library}"),
        }
    }
}

/// Wall time spent inside matmul library calls since the process started: the engine bench
/// splits each token's time into this and the rest (the part that is the same code on every
/// CPU). candle's own gemm is not counted.
static MATMUL_NANOS: AtomicU64 = AtomicU64::new(0);

/// Wall time spent inside matmul library calls so far (see [`timed_matmul`]).
pub fn matmul_time() -> Duration {
    Duration::from_nanos(MATMUL_NANOS.load(Ordering::Relaxed))
}

/// Runs `multiply`, one parallel region of library calls, adding its wall time to
/// [`matmul_time`].
pub(super) fn timed_matmul<R>(multiply: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let result = multiply();
    MATMUL_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    result
}

/// `cblas_sgemm` of the standard CBLAS interface (32-bit integers).
type Sgemm = unsafe extern "C" fn(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);

const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

/// A loaded BLAS library.
pub struct Blas {
    sgemm: Sgemm,
    /// Whether the library was set to one thread per call.
    single_threaded: bool,
    description: String,
    // Keeps `sgemm` valid.
    _library: libloading::Library,
}

impl Blas {
    /// The BLAS `choice` asks for; `None` for candle's gemm.
    pub fn open(choice: &CpuLibrary) -> Result<Option<Arc<Blas>>> {
        match choice {
            CpuLibrary::Off => Ok(None),
            CpuLibrary::Auto => Ok(AUTO_LIBRARIES
                .iter()
                .find_map(|name| Blas::load(name).ok())
                .map(Arc::new)),
            CpuLibrary::Library(name) => Blas::load(name).map(|blas| Some(Arc::new(blas))),
        }
    }

    fn load(name: &str) -> Result<Blas> {
        let failed =
            |err: libloading::Error| ModelError::Device(format!("BLAS library {name}: {err}"));
        // SAFETY: loading runs the library's initialisers; these are BLAS libraries, whose
        // initialisers only set up their thread pools.
        let library = unsafe { libloading::Library::new(name) }.map_err(failed)?;
        // SAFETY: `cblas_sgemm` has this signature in every CBLAS of 32-bit integers; the
        // ILP64 builds export other names (`cblas_sgemm64_`).
        let sgemm = *unsafe { library.get::<Sgemm>(b"cblas_sgemm\0") }.map_err(failed)?;
        // One thread per call: the calls run on the rayon pool, a row block each, so that no
        // BLAS thread spins on a core while candle's own ops want it.
        let single_threaded = [&b"openblas_set_num_threads\0"[..], b"MKL_Set_Num_Threads\0"]
            .iter()
            .any(|symbol| {
                // SAFETY: both take the thread count as an int and return nothing.
                unsafe { library.get::<unsafe extern "C" fn(c_int)>(symbol) }
                    .map(|set_threads| unsafe { set_threads(1) })
                    .is_ok()
            })
            // SAFETY: BLIS takes its `dim_t`, a 64-bit integer, and returns nothing.
            || unsafe { library.get::<unsafe extern "C" fn(i64)>(b"bli_thread_set_num_threads\0") }
                .map(|set_threads| unsafe { set_threads(1) })
                .is_ok();
        let description = match unsafe {
            library.get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_config\0")
        } {
            // SAFETY: OpenBLAS returns a static NUL-terminated string.
            Ok(config) => format!("{name} ({})", unsafe {
                std::ffi::CStr::from_ptr(config()).to_string_lossy()
            }),
            Err(_) => name.to_owned(),
        };
        Ok(Blas {
            sgemm,
            single_threaded,
            description,
            _library: library,
        })
    }

    /// The library, as `/info` and the start-up log name it.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// `a @ b` for f32 CPU tensors of rank 2 or 3 (a batch of matrices), each matrix stored
    /// row- or column-major (a transposed view is fine), batches at any stride.
    pub fn matmul(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        a.apply_op2_no_bwd(b, &BlasMatmul(self))
    }
}

struct BlasMatmul<'a>(&'a Blas);

/// Where the matrices of one operand lie: a batch of them, each (rows, cols).
struct Operand<'a> {
    data: &'a [f32],
    batch_stride: usize,
    transposed: bool,
    leading: usize,
}

impl<'a> Operand<'a> {
    fn new(data: &'a [f32], layout: &Layout) -> candle_core::Result<(Self, usize, usize, usize)> {
        let (batch, rows, cols, strides) = match (layout.dims(), layout.stride()) {
            (&[rows, cols], &[r, c]) => (1, rows, cols, [0, r, c]),
            (&[batch, rows, cols], &[b, r, c]) => (batch, rows, cols, [b, r, c]),
            (dims, _) => candle_core::bail!("blas-matmul takes rank 2 or 3, not {dims:?}"),
        };
        let [batch_stride, row_stride, col_stride] = strides;
        let (transposed, leading) = match (row_stride, col_stride) {
            (r, 1) if r >= cols.max(1) || rows == 1 => (false, r.max(cols).max(1)),
            (1, c) if c >= rows.max(1) || cols == 1 => (true, c.max(rows).max(1)),
            _ => candle_core::bail!("blas-matmul: strides {strides:?} are not a matrix layout"),
        };
        let operand = Operand {
            data: &data[layout.start_offset()..],
            batch_stride,
            transposed,
            leading,
        };
        Ok((operand, batch, rows, cols))
    }

    /// Matrix `index` of the batch, checked to hold `rows` × `cols` values as laid out.
    fn matrix(&self, index: usize, rows: usize, cols: usize) -> candle_core::Result<&[f32]> {
        let (outer, inner) = if self.transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let needed = outer.saturating_sub(1) * self.leading + inner;
        let start = index * self.batch_stride;
        match self.data.get(start..start + needed) {
            Some(matrix) if outer > 0 && inner > 0 => Ok(matrix),
            _ if outer == 0 || inner == 0 => Ok(&[]),
            _ => candle_core::bail!("blas-matmul: matrix {index} lies past its storage"),
        }
    }

    fn trans(&self) -> c_int {
        if self.transposed {
            CBLAS_TRANS
        } else {
            CBLAS_NO_TRANS
        }
    }
}

impl CustomOp2 for BlasMatmul<'_> {
    fn name(&self) -> &'static str {
        "blas-matmul"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (a, b) else {
            candle_core::bail!("blas-matmul takes f32 tensors");
        };
        let (a, batch, m, k) = Operand::new(a, a_layout)?;
        let (b, b_batch, b_k, n) = Operand::new(b, b_layout)?;
        if k != b_k || (b_batch != 1 && b_batch != batch) {
            candle_core::bail!("blas-matmul: {:?} @ {:?}", a_layout.dims(), b_layout.dims());
        }
        let int = |v: usize| {
            c_int::try_from(v)
                .map_err(|_| candle_core::Error::msg("blas-matmul: a dimension over i32"))
        };
        let (n_int, k_int, a_leading, b_leading) =
            (int(n)?, int(k)?, int(a.leading)?, int(b.leading)?);
        let (trans_a, trans_b) = (a.trans(), b.trans());
        let sgemm = |rows: usize, a_matrix: &[f32], b_matrix: &[f32], out: &mut [f32]| {
            // SAFETY: `a_matrix` holds rows × k, `b_matrix` k × n values laid out as their
            // leading dimensions and transpositions say, `out` rows × n; the call reads the
            // two and writes only out.
            unsafe {
                (self.0.sgemm)(
                    CBLAS_ROW_MAJOR,
                    trans_a,
                    trans_b,
                    int(rows)?,
                    n_int,
                    k_int,
                    1.0,
                    a_matrix.as_ptr(),
                    a_leading,
                    b_matrix.as_ptr(),
                    b_leading,
                    0.0,
                    out.as_mut_ptr(),
                    n_int,
                )
            };
            Ok::<_, candle_core::Error>(())
        };
        let mut out = vec![0f32; batch * m * n];
        // One task per matrix; with fewer matrices than threads, a row-major left side also
        // splits each matrix into row blocks, one per thread.
        let threads = if self.0.single_threaded {
            rayon::current_num_threads()
        } else {
            1
        };
        let rows = if batch >= threads || a.transposed {
            m
        } else {
            m.div_ceil(threads)
        };
        timed_matmul(|| {
            out.par_chunks_mut((m * n).max(1))
                .enumerate()
                .try_for_each(|(i, out)| {
                    let (a_matrix, b_matrix) = (a.matrix(i, m, k)?, b.matrix(i, k, n)?);
                    out.par_chunks_mut((rows * n).max(1))
                        .enumerate()
                        .try_for_each(|(block, out)| {
                            let a_block = &a_matrix[block * rows * a.leading..];
                            sgemm(out.len() / n, a_block, b_matrix, out)
                        })
                })
        })?;
        Ok((
            CpuStorage::F32(out),
            Shape::from(match a_layout.dims().len() {
                2 => vec![m, n],
                _ => vec![batch, m, n],
            }),
        ))
    }
}

/// What multiplies a linear layer's input by its weight, chosen once per model.
#[derive(Clone)]
pub enum LinearGemm {
    /// candle's matmul at the model's dtype (GPUs; the CPU without a BLAS).
    Candle,
    /// f32 weights through a BLAS.
    Blas(Arc<Blas>),
    /// bf16 weights with f32 activations: the CPU under `--dtype bf16`.
    Bf16(Arc<Bf16Matmul>),
}

impl LinearGemm {
    /// The linear layers' matmul for `dtype` on `device`, and the dtype of the activations.
    pub fn open(
        device: &Device,
        dtype: DType,
        (blas, onednn): (&CpuLibrary, &CpuLibrary),
        cpu: &CpuFeatures,
    ) -> Result<(LinearGemm, DType)> {
        if !device.is_cpu() {
            return Ok((LinearGemm::Candle, dtype));
        }
        Ok(match dtype {
            DType::F32 => (
                Blas::open(blas)?.map_or(LinearGemm::Candle, LinearGemm::Blas),
                DType::F32,
            ),
            DType::BF16 => (
                LinearGemm::Bf16(Arc::new(Bf16Matmul::open(onednn, cpu, Blas::open(blas)?)?)),
                DType::F32,
            ),
            // f16 on the CPU stays candle's, activations included.
            _ => (LinearGemm::Candle, dtype),
        })
    }

    /// The f32 matmul of the attention, next to the linear layers.
    pub fn blas(&self) -> Option<&Arc<Blas>> {
        match self {
            LinearGemm::Candle => None,
            LinearGemm::Blas(blas) => Some(blas),
            LinearGemm::Bf16(bf16) => bf16.blas(),
        }
    }

    /// The dtype weights are stored in, for activations of `activations`.
    pub fn weight_dtype(&self, activations: DType) -> DType {
        match self {
            LinearGemm::Bf16(_) => DType::BF16,
            _ => activations,
        }
    }

    /// What multiplies, as `/info` and the start-up log name it.
    pub fn description(&self) -> String {
        match self {
            LinearGemm::Candle => "candle".into(),
            LinearGemm::Blas(blas) => blas.description().to_owned(),
            LinearGemm::Bf16(bf16) => bf16.description(),
        }
    }
}

/// `x @ w^T + b` over the last dimension of a (tokens, in) input.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    gemm: LinearGemm,
}

impl Linear {
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
        gemm: &LinearGemm,
    ) -> candle_core::Result<Self> {
        let weight = vb
            .clone()
            .set_dtype(gemm.weight_dtype(vb.dtype()))
            .get((out_dim, in_dim), "weight")?;
        let bias = bias.then(|| vb.get(out_dim, "bias")).transpose()?;
        Ok(Linear {
            weight,
            bias,
            gemm: gemm.clone(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.gemm {
            LinearGemm::Bf16(bf16) => bf16.linear(x, &self.weight)?,
            gemm => matmul(gemm.blas().map(|b| b.as_ref()), x, &self.weight.t()?)?,
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }
}

/// `a @ b` through `blas` when given (f32 tensors on the CPU only), else candle's matmul.
pub fn matmul(blas: Option<&Blas>, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    match blas {
        Some(blas) => blas.matmul(a, b),
        None => a.matmul(b),
    }
}

#[cfg(test)]
mod tests {
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
        let diff = crate::model::testing::max_abs_diff(a, b);
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
}
