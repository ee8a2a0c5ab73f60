//! The native CPU matmul libraries, loaded at run time by dlopen: f32 matmuls through the
//! system's BLAS when one is installed. candle 0.11's own gemm has no AVX-512 kernels: on CPUs
//! that have them an optimised BLAS (OpenBLAS, BLIS, MKL) multiplies up to 3× faster. Loading
//! at run time means the build needs none and a machine without one runs candle's gemm.
//! Also the pieces the bf16 GEMM (`bf16.rs`) shares: splitting a batched product over threads
//! and timing library calls.

use std::ffi::{c_char, c_int};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;
use serde_with::{DeserializeFromStr, SerializeDisplay};

use super::buffers::uninit_vec;
use crate::model::error::{ModelError, Result};

/// Libraries tried, in order, when the choice is automatic: optimised BLAS builds only (a
/// plain `libblas.so.3` may be the slow reference implementation).
const AUTO_LIBRARIES: &[&str] = &[
    "libopenblas.so.0",
    "libopenblas.so",
    "libblis.so.4",
    "libmkl_rt.so.2",
    "libmkl_rt.so",
];

/// Which native library runs a CPU matmul: the f32 BLAS (`cpu_blas`), or MKL or oneDNN for
/// bf16 (`cpu_bf16_gemm`).
#[derive(Debug, Clone, PartialEq, Eq, Default, DeserializeFromStr, SerializeDisplay)]
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

/// Adds `elapsed` to [`matmul_time`]: library calls timed one by one, their sum over the
/// threads divided by the thread count.
pub(super) fn add_matmul_time(elapsed: Duration) {
    MATMUL_NANOS.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
}

/// A GEMM of the CBLAS interface with 32-bit sizes, `C = alpha·op(A)·op(B) + beta·C` of `T`
/// into f32: `cblas_sgemm`, and MKL's `cblas_gemm_bf16bf16f32`.
pub(super) type CblasGemm<T> = unsafe extern "C" fn(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const T,
    lda: c_int,
    b: *const T,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);

const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

/// `out = a @ b` (or `+=`) of one product through a CBLAS GEMM; refused when a size is past i32.
///
/// # Safety
/// `p.a` and `p.b` hold the m × k and k × n values their transpositions and leading
/// dimensions say, and `p.out` has m rows of n values at leading `ldc` that this call alone
/// writes.
pub(super) unsafe fn cblas_product<T>(
    gemm: CblasGemm<T>,
    p: &Product<T>,
) -> std::result::Result<(), &'static str> {
    let int = |v: usize| c_int::try_from(v).map_err(|_| "a dimension over i32");
    let trans = |transposed| {
        if transposed {
            CBLAS_TRANS
        } else {
            CBLAS_NO_TRANS
        }
    };
    // SAFETY: as the caller promises.
    unsafe {
        gemm(
            CBLAS_ROW_MAJOR,
            trans(p.a_layout.0),
            trans(p.b_layout.0),
            int(p.m)?,
            int(p.n)?,
            int(p.k)?,
            1.0,
            p.a.as_ptr(),
            int(p.a_layout.1)?,
            p.b.as_ptr(),
            int(p.b_layout.1)?,
            p.beta(),
            p.out,
            int(p.ldc)?,
        )
    };
    Ok(())
}

/// Values a matrix of `rows` × `cols` spans, stored as `(transposed, leading)` says.
fn extent((transposed, leading): (bool, usize), (rows, cols): (usize, usize)) -> usize {
    let (outer, inner) = if transposed {
        (cols, rows)
    } else {
        (rows, cols)
    };
    if outer == 0 || inner == 0 {
        return 0;
    }
    (outer - 1) * leading + inner
}

/// A loaded BLAS library.
pub struct Blas {
    sgemm: CblasGemm<f32>,
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
        let sgemm = *unsafe { library.get::<CblasGemm<f32>>(b"cblas_sgemm\0") }.map_err(failed)?;
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

    /// Whether each call runs on the calling thread alone.
    pub(super) fn single_threaded(&self) -> bool {
        self.single_threaded
    }

    /// One product on the calling thread (of a library set to one thread per call).
    pub(super) fn product(&self, p: Product<f32>) -> std::result::Result<(), String> {
        if !p.operands_fit() {
            return Err("an operand shorter than its layout".into());
        }
        // SAFETY: the operands hold what their layouts say (checked above); `out` has m rows
        // of n values at leading `ldc` that the caller gives this call alone.
        unsafe { cblas_product(self.sgemm, &p) }.map_err(str::to_owned)
    }

    /// `a @ b` for f32 CPU tensors of rank 2 or 3 (a batch of matrices), each matrix stored
    /// row- or column-major (a transposed view is fine), batches at any stride.
    pub fn matmul(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        // A library left multi-threaded gets one call per matrix.
        let split = self.single_threaded.then_some(Split::Rows);
        let sgemm = |p: Product<f32>| {
            // SAFETY: `batched_matmul` hands each call operands that hold what their layouts
            // say and output rows of its own.
            unsafe { cblas_product(self.sgemm, &p) }.map_err(str::to_owned)
        };
        a.apply_op2_no_bwd(b, &LibraryMatmul::new("blas-matmul", split, &sgemm))
    }
}

/// `a @ b` of CPU tensors of `T` through a library's GEMM, products summed in f32:
/// [`batched_matmul`] splits it into calls of `gemm`.
pub(super) struct LibraryMatmul<'a, T> {
    name: &'static str,
    split: Option<Split>,
    gemm: &'a (dyn Fn(Product<T>) -> std::result::Result<(), String> + Sync),
}

impl<'a, T> LibraryMatmul<'a, T> {
    pub(super) fn new(
        name: &'static str,
        split: Option<Split>,
        gemm: &'a (dyn Fn(Product<T>) -> std::result::Result<(), String> + Sync),
    ) -> Self {
        LibraryMatmul { name, split, gemm }
    }
}

/// Where the matrices of one operand lie: a batch of them, each (rows, cols).
pub(super) struct Operand<'a, T> {
    data: &'a [T],
    batch_stride: usize,
    /// Column-major (a transposed view).
    pub transposed: bool,
    pub leading: usize,
}

impl<'a, T> Operand<'a, T> {
    fn new(data: &'a [T], layout: &Layout) -> candle_core::Result<(Self, usize, usize, usize)> {
        let (batch, rows, cols, strides) = match (layout.dims(), layout.stride()) {
            (&[rows, cols], &[r, c]) => (1, rows, cols, [0, r, c]),
            (&[batch, rows, cols], &[b, r, c]) => (batch, rows, cols, [b, r, c]),
            (dims, _) => candle_core::bail!("matmul takes rank 2 or 3, not {dims:?}"),
        };
        let [batch_stride, row_stride, col_stride] = strides;
        let (transposed, leading) = match (row_stride, col_stride) {
            (r, 1) if r >= cols.max(1) || rows == 1 => (false, r.max(cols).max(1)),
            (1, c) if c >= rows.max(1) || cols == 1 => (true, c.max(rows).max(1)),
            _ => candle_core::bail!("matmul: strides {strides:?} are not a matrix layout"),
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
    fn matrix(&self, index: usize, rows: usize, cols: usize) -> candle_core::Result<&'a [T]> {
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
            _ => candle_core::bail!("matmul: matrix {index} lies past its storage"),
        }
    }

    /// Where row `row` (column `col` of a column-major matrix) of `matrix` starts.
    fn skip<'m>(&self, matrix: &'m [T], line: usize) -> &'m [T] {
        &matrix[(line * self.leading).min(matrix.len())..]
    }
}

/// One library call of a batched matmul: `out = op(a) @ op(b)`, (m, k) @ (k, n), `out`
/// row-major with leading dimension `ldc`.
pub(super) struct Product<'a, T> {
    pub a: &'a [T],
    pub a_layout: (bool, usize),
    pub b: &'a [T],
    pub b_layout: (bool, usize),
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub out: *mut f32,
    pub ldc: usize,
    /// `out += a @ b` instead of `out = a @ b`.
    pub accumulate: bool,
}

impl<T> Product<'_, T> {
    /// Whether `a` and `b` hold the values their layouts and sizes say.
    pub(super) fn operands_fit(&self) -> bool {
        self.a.len() >= extent(self.a_layout, (self.m, self.k))
            && self.b.len() >= extent(self.b_layout, (self.k, self.n))
    }

    /// The GEMM's `beta`.
    pub(super) fn beta(&self) -> f32 {
        match self.accumulate {
            true => 1.0,
            false => 0.0,
        }
    }
}

/// How a matrix is divided among threads when the batch has fewer matrices than threads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Split {
    /// Blocks of rows of the left side (each call reads the whole right side).
    Rows,
    /// Blocks of columns of the right side (each call reads the whole left side): the
    /// weight of a linear layer is divided, not repeated.
    Columns,
}

/// Columns of a block are a multiple of this, so that every block but the last is whole
/// vectors and cache lines.
const COLUMN_ALIGN: usize = 64;

/// Most columns of one block. Each block's call packs the whole left side again (MKL and
/// OpenBLAS pack both operands at every call): at 256 columns MKL's copying was a tenth of a
/// bf16 decoder forward on the AMX Xeon. Wide blocks, as many as a multiple of the threads so
/// that each thread gets the same share.
const MAX_BLOCK_COLUMNS: usize = 1024;

/// The output pointer, for tasks that write disjoint blocks of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only its own block of the output (see `batched_matmul`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `a @ b` for CPU tensors of rank 2 or 3 (a batch of matrices; `b` may be one matrix for
/// all), each matrix row- or column-major at any batch stride, f32 out. `gemm` makes one
/// single-threaded library call; the calls run on rayon's threads, one task per matrix, and
/// with fewer matrices than threads each matrix is split as `split` says (`None` for a
/// library that runs its own threads). The one thread pool: no library threads spinning
/// beside rayon's.
pub(super) fn batched_matmul<T: Sync>(
    (a, a_layout): (&[T], &Layout),
    (b, b_layout): (&[T], &Layout),
    split: Option<Split>,
    gemm: impl Fn(Product<T>) -> candle_core::Result<()> + Sync,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (a, batch, m, k) = Operand::new(a, a_layout)?;
    let (b, b_batch, b_k, n) = Operand::new(b, b_layout)?;
    if k != b_k || (b_batch != 1 && b_batch != batch) {
        candle_core::bail!("matmul: {:?} @ {:?}", a_layout.dims(), b_layout.dims());
    }
    let mut out = uninit_vec::<f32>(batch * m * n);
    let threads = rayon::current_num_threads();
    let (row_block, column_block) = match split {
        _ if batch >= threads => (m, n),
        Some(Split::Rows) if !a.transposed => (m.div_ceil(threads), n),
        Some(Split::Columns) => {
            let blocks = n.div_ceil(MAX_BLOCK_COLUMNS).next_multiple_of(threads);
            (m, n.div_ceil(blocks).next_multiple_of(COLUMN_ALIGN))
        }
        _ => (m, n),
    };
    let (row_blocks, column_blocks) = (
        m.div_ceil(row_block.max(1)),
        n.div_ceil(column_block.max(1)),
    );
    let out_ptr = OutPtr(out.as_mut_ptr());
    let blocks = batch * row_blocks * column_blocks;
    timed_matmul(|| {
        (0..blocks).into_par_iter().try_for_each(|block| {
            let (matrix, rest) = (
                block / (row_blocks * column_blocks),
                block % (row_blocks * column_blocks),
            );
            let (first_row, first_column) = (
                rest / column_blocks * row_block,
                rest % column_blocks * column_block,
            );
            let rows = row_block.min(m - first_row);
            let columns = column_block.min(n - first_column);
            let (a_matrix, b_matrix) = (a.matrix(matrix, m, k)?, b.matrix(matrix % b_batch, k, n)?);
            // Row `first_row` of op(a) is a row of a row-major a (rows split only then);
            // column `first_column` of op(b) is a column of a row-major b, a row of a
            // transposed one.
            let a_block = if first_row > 0 {
                a.skip(a_matrix, first_row)
            } else {
                a_matrix
            };
            let b_block = match (first_column, b.transposed) {
                (0, _) => b_matrix,
                (column, true) => b.skip(b_matrix, column),
                (column, false) => &b_matrix[column.min(b_matrix.len())..],
            };
            let out = out_ptr;
            gemm(Product {
                a: a_block,
                a_layout: (a.transposed, a.leading),
                b: b_block,
                b_layout: (b.transposed, b.leading),
                m: rows,
                n: columns,
                k,
                // SAFETY: inside the output (matrix < batch, first_row < m, first_column
                // < n); the block's rows × columns at leading n are this task's alone.
                out: unsafe { out.0.add(matrix * m * n + first_row * n + first_column) },
                ldc: n,
                accumulate: false,
            })
        })
    })?;
    let shape = match a_layout.dims().len() {
        2 => Shape::from((m, n)),
        _ => Shape::from((batch, m, n)),
    };
    Ok((CpuStorage::F32(out), shape))
}

impl<T: WithDType> CustomOp2 for LibraryMatmul<'_, T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Ok(a), Ok(b)) = (a.as_slice::<T>(), b.as_slice::<T>()) else {
            candle_core::bail!("{}: takes {:?} tensors", self.name, T::DTYPE);
        };
        batched_matmul((a, a_layout), (b, b_layout), self.split, |product| {
            (self.gemm)(product)
                .map_err(|err| candle_core::Error::msg(format!("{}: {err}", self.name)))
        })
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
mod tests;
