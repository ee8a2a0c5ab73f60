//! Kernels of the encoders' layers: the fused q/k/v projection split into head-major parts
//! with its bias added, the MLP's bias and GELU in one pass, and the post-norm's bias,
//! residual add and LayerNorm in one pass.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Layout, Shape, Tensor};
use candle_nn::{LayerNorm, Module};
use rayon::prelude::*;

use multiversion::multiversion;

use super::{Element, Gelu, Kernels, LANES, MIN_CHUNK, f32_data, lanes, sum, values};

/// (tokens, parts × heads × head_dim) → (parts, heads, tokens, head_dim), bias added: q, k
/// and v of a fused projection, each head-major for the attention's matmuls.
struct SplitHeads<'a> {
    parts: usize,
    heads: usize,
    bias: Option<&'a [f32]>,
    bf16_out: bool,
}

impl SplitHeads<'_> {
    fn split<T: Element>(&self, x: &[f32], (tokens, width): (usize, usize), out: &mut [T]) {
        let dim = width / (self.parts * self.heads);
        out.par_chunks_mut((tokens * dim).max(1))
            .enumerate()
            .for_each(|(head, out)| {
                let columns = head * dim..(head + 1) * dim;
                let bias = self.bias.map(|bias| &bias[columns.clone()]);
                split_head((x, width, columns), bias, out);
            });
    }
}

/// One head's `columns` of every token (rows of `width`), bias added, into `out`. The loop
/// over tokens is inside the multiversioned function: a head is a few dozen values, too few
/// to pay for choosing the SIMD level at each.
#[multiversion(targets = "simd")]
fn split_head<T: Element>(
    (x, width, columns): (&[f32], usize, Range<usize>),
    bias: Option<&[f32]>,
    out: &mut [T],
) {
    for (token, out) in out.chunks_exact_mut(columns.len().max(1)).enumerate() {
        bias_map_row(&x[token * width..][columns.clone()], bias, |v| v, out);
    }
}

impl CustomOp1 for SplitHeads<'_> {
    fn name(&self) -> &'static str {
        "split-heads"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        let (tokens, width) = layout.shape().dims2()?;
        let out = output!(self.bf16_out, x.len(), |out| self.split(
            x,
            (tokens, width),
            &mut out
        ));
        let dim = width / (self.parts * self.heads);
        Ok((out, Shape::from((self.parts, self.heads, tokens, dim))))
    }
}

/// `gelu(x + bias)` over rows of the bias's width.
struct BiasGelu<'a> {
    bias: Option<&'a [f32]>,
    gelu: Gelu,
    bf16_out: bool,
}

impl BiasGelu<'_> {
    fn rows<T: Element>(&self, x: &[f32], width: usize, out: &mut [T]) {
        out.par_chunks_mut(width)
            .zip(x.par_chunks(width))
            .with_min_len((MIN_CHUNK / width).max(1))
            .for_each(|(out, x)| bias_gelu_row(x, self.bias, self.gelu, out));
    }
}

#[multiversion(targets = "simd")]
fn bias_gelu_row<T: Element>(x: &[f32], bias: Option<&[f32]>, gelu: Gelu, out: &mut [T]) {
    match gelu {
        Gelu::Erf => bias_map_row(x, bias, |v| Gelu::Erf.apply(v), out),
        Gelu::Tanh => bias_map_row(x, bias, |v| Gelu::Tanh.apply(v), out),
    }
}

/// `map(x + bias)` of one row into `out`; `map` is a closure (one GELU, or none), so that
/// it is inlined into the loop.
#[inline(always)]
fn bias_map_row<T: Element, F: Fn(f32) -> f32>(
    x: &[f32],
    bias: Option<&[f32]>,
    map: F,
    out: &mut [T],
) {
    match bias {
        Some(bias) => {
            for (o, (&v, &b)) in out.iter_mut().zip(x.iter().zip(bias)) {
                *o = T::from_f32(map(v + b));
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = T::from_f32(map(v));
            }
        }
    }
}

impl CustomOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let out = output!(self.bf16_out, x.len(), |out| self.rows(x, width, &mut out));
        Ok((out, layout.shape().clone()))
    }
}

/// `LayerNorm(x + bias + residual)` over the last dim, f32 in and out: the residual stream
/// of a post-norm layer.
struct ResidualLayerNorm<'a> {
    bias: Option<&'a [f32]>,
    weight: &'a [f32],
    shift: Option<&'a [f32]>,
    eps: f32,
}

impl ResidualLayerNorm<'_> {
    fn rows(&self, x: &[f32], residual: &[f32], out: &mut [f32]) {
        let dim = self.weight.len().max(1);
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim).zip(residual.par_chunks(dim)))
            .with_min_len((MIN_CHUNK / dim).max(1))
            .for_each(|(out, (x, residual))| self.row(x, residual, out));
    }

    fn row(&self, x: &[f32], residual: &[f32], out: &mut [f32]) {
        layer_norm_row(
            (x, residual),
            (self.bias, self.weight, self.shift),
            self.eps,
            out,
        );
    }
}

#[multiversion(targets = "simd")]
fn layer_norm_row(
    (x, residual): (&[f32], &[f32]),
    (bias, weight, shift): (Option<&[f32]>, &[f32], Option<&[f32]>),
    eps: f32,
    out: &mut [f32],
) {
    let dim = out.len().max(1) as f32;
    for ((o, &v), &r) in out.iter_mut().zip(x).zip(residual) {
        *o = v + r;
    }
    if let Some(bias) = bias {
        out.iter_mut().zip(bias).for_each(|(o, &b)| *o += b);
    }
    let mean = sum(out) / dim;
    let mut deviations = [0f32; LANES];
    lanes(out, &mut deviations, |acc, v| acc + (v - mean) * (v - mean));
    let inverse = 1.0 / (deviations.iter().sum::<f32>() / dim + eps).sqrt();
    for (o, &w) in out.iter_mut().zip(weight) {
        *o = (*o - mean) * inverse * w;
    }
    if let Some(shift) = shift {
        out.iter_mut().zip(shift).for_each(|(o, &s)| *o += s);
    }
}

impl CustomOp2 for ResidualLayerNorm<'_> {
    fn name(&self) -> &'static str {
        "residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, residual) = (
            f32_data(x, x_layout, self.name())?,
            f32_data(residual, residual_layout, self.name())?,
        );
        if x_layout.shape() != residual_layout.shape()
            || x_layout.dims().last() != Some(&self.weight.len())
        {
            candle_core::bail!(
                "{}: {:?} and {:?} against a weight of {}",
                self.name(),
                x_layout.shape(),
                residual_layout.shape(),
                self.weight.len()
            );
        }
        let mut out = super::uninit_vec::<f32>(x.len());
        self.rows(x, residual, &mut out);
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

impl Kernels {
    /// `x + bias` (tokens, parts × heads × head_dim) as `parts` head-major tensors in one,
    /// (parts, heads, tokens, head_dim), contiguous, in the attention matmuls' dtype.
    pub fn split_heads(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        parts: usize,
        heads: usize,
    ) -> candle_core::Result<Tensor> {
        if !self.cpu_f32 {
            let x = match bias {
                Some(bias) => x.broadcast_add(bias)?,
                None => x.clone(),
            };
            return x
                .reshape((x.dim(0)?, parts, heads, ()))?
                .permute((1, 2, 0, 3))?
                .contiguous();
        }
        let bias = bias.map(values).transpose()?;
        x.contiguous()?.apply_op1_no_bwd(&SplitHeads {
            parts,
            heads,
            bias: bias.as_deref(),
            bf16_out: self.bf16_matmul_inputs,
        })
    }

    /// `gelu(x + bias)`, the input of the MLP's output projection.
    pub fn bias_gelu(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        gelu: Gelu,
    ) -> candle_core::Result<Tensor> {
        if !self.cpu_f32 {
            return match bias {
                Some(bias) => gelu.candle(&x.broadcast_add(bias)?),
                None => gelu.candle(x),
            };
        }
        let bias = bias.map(values).transpose()?;
        x.contiguous()?.apply_op1_no_bwd(&BiasGelu {
            bias: bias.as_deref(),
            gelu,
            bf16_out: self.bf16_matmul_inputs,
        })
    }

    /// `norm(x + bias + residual)`: a post-norm layer's output, f32 on the CPU.
    pub fn add_layer_norm(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        residual: &Tensor,
        norm: &LayerNorm,
    ) -> candle_core::Result<Tensor> {
        if !self.cpu_f32 || !norm.remove_mean() {
            let sum = (x + residual)?;
            let sum = match bias {
                Some(bias) => sum.broadcast_add(bias)?,
                None => sum,
            };
            return norm.forward(&sum);
        }
        let (bias, weight, shift) = (
            bias.map(values).transpose()?,
            values(norm.weight())?,
            norm.bias().map(values).transpose()?,
        );
        debug_assert_eq!(x.dim(D::Minus1)?, weight.len());
        x.contiguous()?.apply_op2_no_bwd(
            &residual.contiguous()?,
            &ResidualLayerNorm {
                bias: bias.as_deref(),
                weight: &weight,
                shift: shift.as_deref(),
                eps: norm.eps() as f32,
            },
        )
    }
}
