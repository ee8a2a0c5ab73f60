//! q, k and v into the attention's head-major layout in one pass each: rotary embedding,
//! with the per-head RMSNorm of q and k (Qwen3) folded in before it.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use candle_nn::{Module, RmsNorm};
use multiversion::multiversion;
use rayon::prelude::*;

use super::{Element, Kernels, f32_data, inverse_rms, values, write_normed};

/// Packed tokens (tokens, heads, head_dim), each head normalised by `norm` where set, then
/// rotated by its token's position (cos and sin, (tokens, head_dim / 2) each), written
/// head-major (heads, tokens, head_dim). Without a rotation, the head-major copy alone.
struct RopeHeadMajor<'a> {
    norm: Option<HeadNorm<'a>>,
    bf16_out: bool,
}

/// A per-head RMSNorm: its weight (head_dim) and epsilon.
#[derive(Clone, Copy)]
struct HeadNorm<'a> {
    weight: &'a [f32],
    eps: f32,
}

/// Tokens of one task: their rows are read in order (a token's heads are adjacent), each
/// head's written to that head's rows.
const TOKEN_BLOCK: usize = 16;

impl RopeHeadMajor<'_> {
    fn rotate<T: Element>(
        &self,
        x: &[f32],
        (tokens, heads, dim): (usize, usize, usize),
        rotation: Option<(&[f32], &[f32])>,
        out: &mut [T],
    ) {
        // The output of each head, in blocks of TOKEN_BLOCK tokens; then, per block of
        // tokens, its piece of every head.
        let mut per_head: Vec<_> = out
            .chunks_mut((tokens * dim).max(1))
            .map(|head| head.chunks_mut((TOKEN_BLOCK * dim).max(1)))
            .collect();
        let blocks: Vec<Vec<&mut [T]>> = (0..tokens.div_ceil(TOKEN_BLOCK))
            .map(|_| per_head.iter_mut().filter_map(Iterator::next).collect())
            .collect();
        blocks
            .into_par_iter()
            .enumerate()
            .for_each(|(block, mut outs)| {
                rotate_tokens(
                    x,
                    (block * TOKEN_BLOCK, heads, dim),
                    self.norm,
                    rotation,
                    &mut outs,
                )
            });
    }
}

/// The tokens from `first` on, every head, into `outs` (one (tokens, head_dim) piece per
/// head). The loops are inside the multiversioned function: a row is too few values to pay
/// for choosing the SIMD level at each.
#[multiversion(targets = "simd")]
fn rotate_tokens<T: Element>(
    x: &[f32],
    (first, heads, dim): (usize, usize, usize),
    norm: Option<HeadNorm>,
    rotation: Option<(&[f32], &[f32])>,
    outs: &mut [&mut [T]],
) {
    let half = dim / 2;
    let count = outs.first().map_or(0, |out| out.len() / dim.max(1));
    for t in 0..count {
        let token = first + t;
        let rotation =
            rotation.map(|(cos, sin)| (&cos[token * half..][..half], &sin[token * half..][..half]));
        for (head, out) in outs.iter_mut().enumerate() {
            let x = &x[(token * heads + head) * dim..][..dim];
            rotate_row(x, norm, rotation, &mut out[t * dim..][..dim]);
        }
    }
}

/// One head of one token: `x` normalised, rotated by (cos, sin), into `out`.
#[inline(always)]
fn rotate_row<T: Element>(
    x: &[f32],
    norm: Option<HeadNorm>,
    rotation: Option<(&[f32], &[f32])>,
    out: &mut [T],
) {
    // x · scale · weight; without a norm, scale 1 and weight 1. A `match`, not `map_or`: a
    // closure handed to a library function may be compiled apart from the SIMD level chosen.
    let scale = match norm {
        Some(norm) => inverse_rms(x, norm.eps),
        None => 1.0,
    };
    // Zipped slices, not indices: no bounds checks, so that the loops vectorise.
    let Some((cos, sin)) = rotation else {
        match norm {
            Some(norm) => write_normed(x, scale, norm.weight, out),
            None => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = T::from_f32(v);
                }
            }
        }
        return;
    };
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (out1, out2) = out.split_at_mut(half);
    let (rows, out) = (x1.iter().zip(x2), out1.iter_mut().zip(out2));
    let rotations = cos.iter().zip(sin);
    // (a, b) rotated by (cos, sin) into the two halves.
    let rotate = |(o1, o2): (&mut T, &mut T), a: f32, b: f32, (&c, &s): (&f32, &f32)| {
        *o1 = T::from_f32(a * c - b * s);
        *o2 = T::from_f32(a * s + b * c);
    };
    match norm {
        Some(norm) => {
            let (w1, w2) = norm.weight.split_at(half);
            for (((o, (&a, &b)), (&wa, &wb)), r) in
                out.zip(rows).zip(w1.iter().zip(w2)).zip(rotations)
            {
                rotate(o, a * scale * wa, b * scale * wb, r);
            }
        }
        None => {
            for ((o, (&a, &b)), r) in out.zip(rows).zip(rotations) {
                rotate(o, a, b, r);
            }
        }
    }
}

impl CustomOp3 for RopeHeadMajor<'_> {
    fn name(&self) -> &'static str {
        "rope-head-major"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        cos: &CpuStorage,
        cos_layout: &Layout,
        sin: &CpuStorage,
        sin_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x_data = f32_data(x, x_layout, self.name())?;
        let (cos, sin) = (
            f32_data(cos, cos_layout, self.name())?,
            f32_data(sin, sin_layout, self.name())?,
        );
        let (tokens, heads, dim) = x_layout.shape().dims3()?;
        let half = dim / 2;
        if cos.len() != tokens * half || sin.len() != tokens * half {
            candle_core::bail!("rope: rotation tables do not match {tokens} tokens of {dim}");
        }
        if self.norm.is_some_and(|norm| norm.weight.len() != dim) {
            candle_core::bail!("rope: a head norm's weight is not {dim} long");
        }
        let dims = (tokens, heads, dim);
        let out = output!(self.bf16_out, x_data.len(), |out| self.rotate(
            x_data,
            dims,
            Some((cos, sin)),
            &mut out
        ));
        Ok((out, Shape::from((heads, tokens, dim))))
    }
}

/// (tokens, heads, head_dim) → head-major (heads, tokens, head_dim): the values of the
/// attention, copied once in the matmul's dtype.
struct HeadMajor {
    bf16_out: bool,
}

impl CustomOp1 for HeadMajor {
    fn name(&self) -> &'static str {
        "head-major"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        let (tokens, heads, dim) = layout.shape().dims3()?;
        let copy = RopeHeadMajor {
            norm: None,
            bf16_out: self.bf16_out,
        };
        let out = output!(self.bf16_out, x.len(), |out| copy.rotate(
            x,
            (tokens, heads, dim),
            None,
            &mut out
        ));
        Ok((out, Shape::from((heads, tokens, dim))))
    }
}

impl Kernels {
    /// `x` (tokens, heads, head_dim), each head normalised by `norm` where given (Qwen3's
    /// q and k norms), rotated, head-major (heads, tokens, head_dim).
    pub fn rope_head_major(
        &self,
        x: &Tensor,
        norm: Option<&RmsNorm>,
        (cos, sin): (&Tensor, &Tensor),
    ) -> candle_core::Result<Tensor> {
        if !self.cpu_f32 {
            let x = match norm {
                Some(norm) => norm.forward(x)?,
                None => x.clone(),
            };
            return candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?, cos, sin)?
                .squeeze(0)?
                .transpose(0, 1)?
                .contiguous();
        }
        let weight = norm.map(|norm| values(norm.weight())).transpose()?;
        let norm = norm.zip(weight.as_deref()).map(|(norm, weight)| HeadNorm {
            weight,
            eps: norm.eps() as f32,
        });
        x.contiguous()?.apply_op3_no_bwd(
            &cos.contiguous()?,
            &sin.contiguous()?,
            &RopeHeadMajor {
                norm,
                bf16_out: self.bf16_matmul_inputs,
            },
        )
    }

    /// `x` (tokens, heads, head_dim) head-major (heads, tokens, head_dim), contiguous.
    pub fn head_major(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.cpu_f32 {
            true => x.contiguous()?.apply_op1_no_bwd(&HeadMajor {
                bf16_out: self.bf16_matmul_inputs,
            }),
            false => x.transpose(0, 1)?.contiguous(),
        }
    }
}
