//! Passes of the CPU forward folded into one another, around the fused attention
//! (`attention.rs`): the per-head q/k RMSNorm into the rotary embedding, written in place
//! over the QKV projection's output; the residual add into the norm after it; the gated
//! activation read from the halves of one gate-and-up product.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, InplaceOp2, InplaceOp3, Layout, Shape, Tensor};
use candle_nn::RmsNorm;
use half::bf16;
use rayon::prelude::*;

use super::buffers::uninit_vec;
use super::kernels::{Element, Kernels, exp, gelu_tanh};

/// Rows a parallel task takes at least.
const MIN_ROWS: usize = 16;

/// An RMSNorm's weight and epsilon, as f32 values.
#[derive(Debug, Clone)]
pub struct RmsWeights {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsWeights {
    pub fn new(norm: &RmsNorm) -> candle_core::Result<RmsWeights> {
        Ok(RmsWeights {
            weight: norm.weight().to_dtype(candle_core::DType::F32)?.to_vec1()?,
            eps: norm.eps() as f32,
        })
    }

    /// `x / rms(x) · weight`, in place.
    #[inline(always)]
    fn apply(&self, x: &mut [f32]) {
        let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let inverse = 1.0 / (mean_square + self.eps).sqrt();
        x.iter_mut()
            .zip(&self.weight)
            .for_each(|(v, &w)| *v = *v * inverse * w);
    }
}

/// The rotary embedding of the q and k heads at the start of each packed token's row
/// (`q_heads`, then `k_heads` heads of `head_dim`; the values after them are left alone),
/// each head first normalised by its norm where there is one. In place; `cos` and `sin` are
/// (tokens, head_dim / 2).
pub struct NormRope<'a> {
    pub q_heads: usize,
    pub k_heads: usize,
    pub head_dim: usize,
    pub norms: Option<&'a (RmsWeights, RmsWeights)>,
}

impl NormRope<'_> {
    fn row(&self, row: &mut [f32], cos: &[f32], sin: &[f32]) {
        let (dim, half) = (self.head_dim, self.head_dim / 2);
        for (head, x) in row.chunks_exact_mut(dim).enumerate() {
            if let Some((q_norm, k_norm)) = self.norms {
                match head < self.q_heads {
                    true => q_norm.apply(x),
                    false => k_norm.apply(x),
                }
            }
            let (a, b) = x.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x1 * sin[i] + x2 * cos[i];
            }
        }
    }
}

impl InplaceOp3 for NormRope<'_> {
    fn name(&self) -> &'static str {
        "norm-rope"
    }

    fn cpu_fwd(
        &self,
        x: &mut CpuStorage,
        x_layout: &Layout,
        cos: &CpuStorage,
        cos_layout: &Layout,
        sin: &CpuStorage,
        sin_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(x), CpuStorage::F32(cos), CpuStorage::F32(sin)) = (x, cos, sin) else {
            candle_core::bail!("norm-rope: f32 data only");
        };
        let half = self.head_dim / 2;
        let rotated = (self.q_heads + self.k_heads) * self.head_dim;
        let (tokens, width) = x_layout.shape().dims2()?;
        let contiguous = [x_layout, cos_layout, sin_layout]
            .iter()
            .all(|l| l.is_contiguous() && l.start_offset() == 0);
        if !contiguous
            || width < rotated
            || !self.head_dim.is_multiple_of(2)
            || cos_layout.shape().elem_count() != tokens * half
            || sin_layout.shape().elem_count() != tokens * half
        {
            candle_core::bail!(
                "norm-rope: {:?} rows, {:?} rotation tables",
                x_layout.dims(),
                cos_layout.dims()
            );
        }
        x[..tokens * width]
            .par_chunks_mut(width)
            .zip(cos.par_chunks(half).zip(sin.par_chunks(half)))
            .with_min_len(MIN_ROWS)
            .for_each(|(row, (cos, sin))| self.row(&mut row[..rotated], cos, sin));
        Ok(())
    }
}

/// `x + delta`, written over `delta`, and its RMS norm, kept in `normed` (f32, or bf16 for
/// a bf16 GEMM): one pass instead of an add and a norm.
struct AddNorm<'a> {
    weight: &'a [f32],
    eps: f32,
    bf16_out: bool,
    normed: Mutex<Option<CpuStorage>>,
}

impl AddNorm<'_> {
    fn rows<T: Element>(&self, sum: &mut [f32], x: &[f32], out: &mut [T]) {
        let dim = self.weight.len();
        sum.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .zip(out.par_chunks_mut(dim))
            .with_min_len(MIN_ROWS)
            .for_each(|((sum, x), out)| {
                let mut squares = 0.0;
                for (s, &x) in sum.iter_mut().zip(x) {
                    *s += x;
                    squares += *s * *s;
                }
                let inverse = 1.0 / (squares / dim as f32 + self.eps).sqrt();
                for ((o, &s), &w) in out.iter_mut().zip(sum.iter()).zip(self.weight) {
                    *o = T::from_f32(s * inverse * w);
                }
            });
    }
}

impl InplaceOp2 for AddNorm<'_> {
    fn name(&self) -> &'static str {
        "add-norm"
    }

    fn cpu_fwd(
        &self,
        delta: &mut CpuStorage,
        delta_layout: &Layout,
        x: &CpuStorage,
        x_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(sum), CpuStorage::F32(x)) = (delta, x) else {
            candle_core::bail!("add-norm: f32 data only");
        };
        let len = x_layout.shape().elem_count();
        let plain = [delta_layout, x_layout]
            .iter()
            .all(|l| l.is_contiguous() && l.start_offset() == 0);
        if !plain
            || delta_layout.shape() != x_layout.shape()
            || x_layout.dims().last() != Some(&self.weight.len())
        {
            candle_core::bail!(
                "add-norm: {:?} and {:?} with a weight of {}",
                delta_layout.dims(),
                x_layout.dims(),
                self.weight.len()
            );
        }
        let (sum, x) = (&mut sum[..len], &x[..len]);
        let normed = match self.bf16_out {
            true => {
                let mut out = uninit_vec::<bf16>(len);
                self.rows(sum, x, &mut out);
                CpuStorage::BF16(out)
            }
            false => {
                let mut out = uninit_vec::<f32>(len);
                self.rows(sum, x, &mut out);
                CpuStorage::F32(out)
            }
        };
        *self.normed.lock().expect("add-norm's slot") = Some(normed);
        Ok(())
    }
}

/// `act(gate) · up` of a (tokens, 2 × inner) product whose rows hold the gate, then up.
struct GatedHalves<F> {
    name: &'static str,
    map: F,
    bf16_out: bool,
}

impl<F: Fn(f32, f32) -> f32 + Send + Sync> GatedHalves<F> {
    fn rows<T: Element>(&self, x: &[f32], inner: usize, out: &mut [T]) {
        out.par_chunks_mut(inner)
            .zip(x.par_chunks(2 * inner))
            .with_min_len(MIN_ROWS)
            .for_each(|(out, row)| {
                let (gate, up) = row.split_at(inner);
                for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    *o = T::from_f32((self.map)(g, u));
                }
            });
    }
}

impl<F: Fn(f32, f32) -> f32 + Send + Sync> CustomOp1 for GatedHalves<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            candle_core::bail!("{}: f32 data only", self.name);
        };
        let (tokens, width) = layout.shape().dims2()?;
        if !layout.is_contiguous() || width % 2 != 0 {
            candle_core::bail!(
                "{}: {:?} is not a contiguous gate-and-up product",
                self.name,
                layout.dims()
            );
        }
        let x = &x[layout.start_offset()..][..tokens * width];
        let inner = width / 2;
        let out = match self.bf16_out {
            true => {
                let mut out = uninit_vec::<bf16>(tokens * inner);
                self.rows(x, inner, &mut out);
                CpuStorage::BF16(out)
            }
            false => {
                let mut out = uninit_vec::<f32>(tokens * inner);
                self.rows(x, inner, &mut out);
                CpuStorage::F32(out)
            }
        };
        Ok((out, Shape::from((tokens, inner))))
    }
}

impl Kernels {
    /// `silu(gate) · up` of a fused gate-and-up product (tokens, 2 × inner).
    pub fn swiglu_halves(&self, gate_up: &Tensor) -> candle_core::Result<Tensor> {
        gate_up.apply_op1_no_bwd(&GatedHalves {
            name: "swiglu-halves",
            map: |gate: f32, up: f32| gate / (1.0 + exp(-gate)) * up,
            bf16_out: self.bf16_matmul_inputs,
        })
    }

    /// `gelu_tanh(gate) · up` of a fused gate-and-up product (tokens, 2 × inner).
    pub fn geglu_halves(&self, gate_up: &Tensor) -> candle_core::Result<Tensor> {
        gate_up.apply_op1_no_bwd(&GatedHalves {
            name: "geglu-halves",
            map: |gate: f32, up: f32| gelu_tanh(gate) * up,
            bf16_out: self.bf16_matmul_inputs,
        })
    }

    /// Normalises (where `norms`) and rotates the q and k heads of a fused QKV projection's
    /// output in place: (tokens, (q_heads + k_heads + v heads) · head_dim), f32.
    pub fn norm_rope_in_place(
        &self,
        qkv: &Tensor,
        op: &NormRope,
        (cos, sin): (&Tensor, &Tensor),
    ) -> candle_core::Result<()> {
        qkv.inplace_op3(cos, sin, op)
    }

    /// `(x + delta, norm(x + delta))`, the norm written for the matmul after it; `delta`
    /// (a fresh product) holds the sum afterwards.
    pub fn add_norm(
        &self,
        x: &Tensor,
        delta: Tensor,
        norm: &RmsWeights,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let op = AddNorm {
            weight: &norm.weight,
            eps: norm.eps,
            bf16_out: self.bf16_matmul_inputs,
            normed: Mutex::new(None),
        };
        let delta = delta.contiguous()?;
        delta.inplace_op2(&x.contiguous()?, &op)?;
        let normed = op.normed.into_inner().expect("add-norm's slot");
        let shape = delta.shape().clone();
        let normed = match normed {
            Some(CpuStorage::BF16(values)) => Tensor::from_vec(values, shape, delta.device())?,
            Some(CpuStorage::F32(values)) => Tensor::from_vec(values, shape, delta.device())?,
            _ => candle_core::bail!("add-norm wrote nothing"),
        };
        Ok((delta, normed))
    }
}

#[cfg(test)]
mod tests;
