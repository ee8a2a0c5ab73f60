//! CPU kernels for the element-wise work of the forward that candle runs on one thread (its
//! binary and unary maps, and rotary embeddings of a single batch), each one parallel pass
//! over contiguous f32 data that also folds in the copy or mask around it. A kernel whose
//! output feeds a matmul writes it in that matmul's input dtype (bf16 on the CPU's bf16
//! path), so nothing rounds it again; every output is written whole, never zero-filled
//! first. Other devices and dtypes keep candle's ops (see [`Kernels`]).

use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, InplaceOp2, Layout, Shape, Tensor,
};
use candle_nn::{Module, RmsNorm};
use half::bf16;
use multiversion::multiversion;
use rayon::prelude::*;

use super::buffers::{contiguous_data, uninit_vec};

/// Elements a parallel task takes at least, so that small tensors are not split thin.
const MIN_CHUNK: usize = 1 << 14;

/// The contiguous f32 data of a kernel's input.
fn f32_data<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: f32 data only");
    };
    contiguous_data(data, layout, what)
}

/// `e^x` to within a few ulp (a polynomial on a range-reduced argument) in plain
/// arithmetic: no call into libm (nor to `round` or `mul_add`, which are calls on the
/// baseline x86-64 target), so that the loops of the softmax and SwiGLU vectorise. Arguments
/// past f32's range saturate: 0 below about -87, a large finite value above 88.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    /// 1.5 · 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    // x = n·ln 2 + r, |r| ≤ ln 2 / 2; ln 2 in two parts so that r is exact.
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    // e^r by its Taylor series to r^7/7! (error under 1e-7 relative on the range).
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // 2^n from its exponent bits: n + 127 is in 1..=254 after the clamp. Adding it to ROUND
    // puts it in the low bits of the mantissa, without a float-to-int cast (which does not
    // vectorise).
    let biased = (n + (127.0 + ROUND)).to_bits() - ROUND.to_bits();
    p * f32::from_bits(biased << 23)
}

/// Independent accumulators of a reduction: a sum in order is one chain of dependent adds,
/// which does not vectorise; sixteen chains fill an AVX-512 register.
pub(super) const LANES: usize = 16;

/// Folds `values` into `LANES` accumulators, value `i` into lane `i % LANES`; `acc` starts
/// at the fold's identity.
#[inline(always)]
fn lanes(values: &[f32], acc: &mut [f32; LANES], fold: impl Fn(f32, f32) -> f32) {
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = fold(*a, v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a = fold(*a, v);
    }
}

/// Σ `values`, in lanes.
#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    lanes(values, &mut acc, |a, v| a + v);
    acc.iter().sum()
}

/// `1 / sqrt(mean(x²) + eps)`, RMSNorm's scale, the squares summed in lanes.
#[inline(always)]
pub(super) fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let mut squares = [0f32; LANES];
    lanes(x, &mut squares, |sum, v| sum + v * v);
    1.0 / (squares.iter().sum::<f32>() / x.len().max(1) as f32 + eps).sqrt()
}

/// The largest of `values` (-∞ for none), in lanes.
#[inline(always)]
pub(super) fn max(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    lanes(values, &mut acc, f32::max);
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// A vector's values as f32, for a kernel to read.
pub(super) fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// `x · inverse · weight` (an RMS norm's output, its scale `inverse` given) into `out`.
#[inline(always)]
pub(super) fn write_normed<T: Element>(x: &[f32], inverse: f32, weight: &[f32], out: &mut [T]) {
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = T::from_f32(v * inverse * w);
    }
}

/// What a kernel writes: f32, or bf16 where its output feeds the bf16 GEMM.
pub(super) trait Element: Copy + Send + Sync {
    const ZERO: Self;
    fn from_f32(value: f32) -> Self;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl Element for bf16 {
    const ZERO: Self = bf16::ZERO;
    /// Rounded to nearest, ties to even, as `bf16::from_f32`, without its branches, so that
    /// the loops writing bf16 vectorise.
    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        let bits = value.to_bits();
        let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
        // A NaN stays a (quiet) NaN instead of rounding into infinity.
        let bits = match value.is_nan() {
            true => (bits >> 16) | 0x40,
            false => rounded,
        };
        bf16::from_bits(bits as u16)
    }
}

/// The storage of `kernel`'s output, written as bf16 when `as_bf16`, else f32. `kernel` must
/// write every element of the vector it is given.
macro_rules! output {
    ($as_bf16:expr, $len:expr, |$out:ident| $kernel:expr) => {
        match $as_bf16 {
            true => {
                let mut $out = $crate::model::backend::buffers::uninit_vec::<half::bf16>($len);
                $kernel;
                CpuStorage::BF16($out)
            }
            false => {
                let mut $out = $crate::model::backend::buffers::uninit_vec::<f32>($len);
                $kernel;
                CpuStorage::F32($out)
            }
        }
    };
}

mod encoder;
mod rotary;
mod softmax;

/// `map(a, b)` element-wise over two tensors of one shape; generic, so that `map` is
/// inlined into the loop.
struct ZipMap<F> {
    name: &'static str,
    map: F,
    bf16_out: bool,
}

impl<F: Fn(f32, f32) -> f32 + Send + Sync> ZipMap<F> {
    fn zip<T: Element>(&self, a: &[f32], b: &[f32], out: &mut [T]) {
        out.par_chunks_mut(MIN_CHUNK)
            .zip(a.par_chunks(MIN_CHUNK).zip(b.par_chunks(MIN_CHUNK)))
            .for_each(|(out, (a, b))| zip_chunk(a, b, out, &self.map));
    }
}

#[multiversion(targets = "simd")]
fn zip_chunk<T: Element, F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], out: &mut [T], map: &F) {
    for (out, (&x, &y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *out = T::from_f32(map(x, y));
    }
}

impl<F: Fn(f32, f32) -> f32 + Send + Sync> CustomOp2 for ZipMap<F> {
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
        let (a, b) = (
            f32_data(a, a_layout, self.name)?,
            f32_data(b, b_layout, self.name)?,
        );
        if a_layout.shape() != b_layout.shape() {
            candle_core::bail!(
                "{}: shapes {:?} and {:?}",
                self.name,
                a_layout.shape(),
                b_layout.shape()
            );
        }
        let out = output!(self.bf16_out, a.len(), |out| self.zip(a, b, &mut out));
        Ok((out, a_layout.shape().clone()))
    }
}

/// RMS norm over the last dim, `x / rms(x) · weight`, statistics in f32.
struct RmsNormKernel<'a> {
    weight: &'a [f32],
    eps: f32,
    bf16_out: bool,
}

impl RmsNormKernel<'_> {
    fn rows<T: Element>(&self, x: &[f32], out: &mut [T]) {
        let dim = self.weight.len().max(1);
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .with_min_len((MIN_CHUNK / dim).max(1))
            .for_each(|(out, x)| rms_norm_row(x, self.weight, self.eps, out));
    }
}

#[multiversion(targets = "simd")]
fn rms_norm_row<T: Element>(x: &[f32], weight: &[f32], eps: f32, out: &mut [T]) {
    write_normed(x, inverse_rms(x, eps), weight, out);
}

impl CustomOp1 for RmsNormKernel<'_> {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        if layout.dims().last() != Some(&self.weight.len()) {
            candle_core::bail!(
                "rms-norm: {:?} against a weight of {}",
                layout.dims(),
                self.weight.len()
            );
        }
        let out = output!(self.bf16_out, x.len(), |out| self.rows(x, &mut out));
        Ok((out, layout.shape().clone()))
    }
}

/// A residual add and the RMS norm after it in one pass: `x += residual` in place, and
/// `x / rms(x) · weight` written as a new tensor (`normed`, taken after the op).
struct AddThenNorm<'a> {
    weight: &'a [f32],
    eps: f32,
    bf16_out: bool,
    normed: Mutex<Option<CpuStorage>>,
}

impl AddThenNorm<'_> {
    fn rows<T: Element>(&self, x: &mut [f32], residual: &[f32], out: &mut [T]) {
        let dim = self.weight.len().max(1);
        out.par_chunks_mut(dim)
            .zip(x.par_chunks_mut(dim).zip(residual.par_chunks(dim)))
            .with_min_len((MIN_CHUNK / dim).max(1))
            .for_each(|(out, (x, residual))| {
                add_rms_norm_row(x, residual, self.weight, self.eps, out)
            });
    }
}

#[multiversion(targets = "simd")]
fn add_rms_norm_row<T: Element>(
    x: &mut [f32],
    residual: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [T],
) {
    for (v, &r) in x.iter_mut().zip(residual) {
        *v += r;
    }
    write_normed(x, inverse_rms(x, eps), weight, out);
}

impl InplaceOp2 for AddThenNorm<'_> {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &mut CpuStorage,
        x_layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(x), Some((start, end))) = (x, x_layout.contiguous_offsets()) else {
            candle_core::bail!("{}: contiguous f32 data only", self.name());
        };
        let x = &mut x[start..end];
        let residual = f32_data(residual, residual_layout, self.name())?;
        if x_layout.shape() != residual_layout.shape()
            || x_layout.dims().last() != Some(&self.weight.len())
        {
            candle_core::bail!(
                "{}: {:?} and {:?} against a weight of {}",
                self.name(),
                x_layout.dims(),
                residual_layout.dims(),
                self.weight.len()
            );
        }
        let out = output!(self.bf16_out, x.len(), |out| self
            .rows(x, residual, &mut out));
        *self.normed.lock().expect("no panic while held") = Some(out);
        Ok(())
    }
}

/// Which implementation the forward's element-wise steps use: these kernels for f32 on the
/// CPU, candle's ops elsewhere. Both compute the same functions.
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    pub cpu_f32: bool,
    /// Kernels whose output feeds a matmul write bf16 (the CPU's bf16 GEMM path; f32
    /// activations otherwise).
    pub bf16_matmul_inputs: bool,
}

impl Kernels {
    /// The kernels for activations of `dtype` on `device`, feeding matmuls that multiply
    /// bf16 (`matmul_multiplies_bf16`) or not.
    pub fn new(device: &Device, dtype: DType, matmul_multiplies_bf16: bool) -> Kernels {
        let cpu_f32 = device.is_cpu() && dtype == DType::F32;
        Kernels {
            cpu_f32,
            bf16_matmul_inputs: cpu_f32 && matmul_multiplies_bf16,
        }
    }

    pub fn add(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        match self.cpu_f32 {
            true => a.contiguous()?.apply_op2_no_bwd(
                &b.contiguous()?,
                &ZipMap {
                    name: "add",
                    map: |a, b| a + b,
                    bf16_out: false,
                },
            ),
            false => a + b,
        }
    }

    /// `silu(gate) · up`, the input of the MLP's down projection.
    pub fn swiglu(&self, gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
        match self.cpu_f32 {
            true => gate.contiguous()?.apply_op2_no_bwd(
                &up.contiguous()?,
                &ZipMap {
                    name: "swiglu",
                    map: |gate: f32, up: f32| gate / (1.0 + exp(-gate)) * up,
                    bf16_out: self.bf16_matmul_inputs,
                },
            ),
            false => candle_nn::ops::silu(gate)? * up,
        }
    }

    /// `norm(x)` where its output feeds a linear layer.
    pub fn rms_norm(&self, x: &Tensor, norm: &RmsNorm) -> candle_core::Result<Tensor> {
        if !self.bf16_matmul_inputs {
            return norm.forward(x);
        }
        let weight = values(norm.weight())?;
        x.contiguous()?.apply_op1_no_bwd(&RmsNormKernel {
            weight: &weight,
            eps: norm.eps() as f32,
            bf16_out: true,
        })
    }

    /// `residual + delta`, and its RMS norm written as the input of a linear layer, in one
    /// pass over the rows: `delta` (a layer's fresh output, held nowhere else) becomes the
    /// sum. The norm's statistics in f32; the f32 CPU only.
    pub fn add_rms_norm(
        &self,
        residual: &Tensor,
        delta: Tensor,
        norm: &RmsNorm,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if !self.cpu_f32 {
            candle_core::bail!("add-rms-norm: f32 on the CPU only");
        }
        let weight = values(norm.weight())?;
        let op = AddThenNorm {
            weight: &weight,
            eps: norm.eps() as f32,
            bf16_out: self.bf16_matmul_inputs,
            normed: Mutex::new(None),
        };
        let sum = delta.contiguous()?;
        sum.inplace_op2(&residual.contiguous()?, &op)?;
        let shape = sum.shape().clone();
        let normed = match op.normed.into_inner().expect("no panic while held") {
            Some(CpuStorage::BF16(values)) => Tensor::from_vec(values, shape, &Device::Cpu)?,
            Some(CpuStorage::F32(values)) => Tensor::from_vec(values, shape, &Device::Cpu)?,
            _ => candle_core::bail!("add-rms-norm: no output"),
        };
        Ok((sum, normed))
    }

    /// `gelu(gate) · up` (GeGLU: Gemma's with the tanh approximation, ModernBERT's exact).
    pub fn geglu(&self, gate: &Tensor, up: &Tensor, gelu: Gelu) -> candle_core::Result<Tensor> {
        match self.cpu_f32 {
            true => gate.contiguous()?.apply_op2_no_bwd(
                &up.contiguous()?,
                &ZipMap {
                    name: "geglu",
                    map: |gate: f32, up: f32| gelu.apply(gate) * up,
                    bf16_out: self.bf16_matmul_inputs,
                },
            ),
            false => gelu.candle(gate)? * up,
        }
    }
}

/// Which GELU: transformers' `gelu` (exact, through erf) or `gelu_new` /
/// `gelu_pytorch_tanh` (the tanh approximation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    Erf,
    Tanh,
}

impl Gelu {
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        match self {
            Gelu::Erf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Gelu::Tanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
            }
        }
    }

    /// candle's op for it (its `gelu` is the tanh approximation).
    fn candle(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Gelu::Erf => x.gelu_erf(),
            Gelu::Tanh => x.gelu(),
        }
    }
}

/// erf(x) to within 1e-6 (Abramowitz and Stegun 7.1.26, on `exp` above) in plain
/// arithmetic, so that the loops around it vectorise: libm's `erff` is a call per value.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut poly = 1.061_405_4;
    for c in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
        poly = poly * t + c;
    }
    (1.0 - poly * t * exp(-a * a)).copysign(x)
}

#[cfg(test)]
mod tests;
