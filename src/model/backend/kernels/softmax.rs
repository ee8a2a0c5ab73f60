//! The attention's softmax over a chunk of scores (…, count, keys), with the scale and the
//! mask folded into the one pass: causal for the decoders, both directions (within a sliding
//! window or not) for the encoders. Keys a query does not see get probability 0.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use multiversion::multiversion;

use super::{Element, Kernels, MIN_CHUNK, exp, f32_data, max, sum};

/// Which keys query `i` of a chunk of `count` queries sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visible {
    /// Keys `0..=first_key + i`.
    Causal { first_key: usize },
    /// The keys within `window` of the query, which is key `first_query + i`; all keys
    /// without a window.
    Around {
        first_query: usize,
        window: Option<usize>,
    },
}

impl Visible {
    fn keys(self, query: usize, keys: usize) -> Range<usize> {
        match self {
            Visible::Causal { first_key } => 0..(first_key + query + 1).min(keys),
            Visible::Around {
                first_query,
                window: Some(window),
            } => {
                let at = first_query + query;
                at.saturating_sub(window).min(keys)..(at + window + 1).min(keys)
            }
            Visible::Around { window: None, .. } => 0..keys,
        }
    }
}

/// `softmax(scale · scores)` over the last dim, each row over the keys its query sees.
struct MaskedSoftmax {
    scale: f32,
    visible: Visible,
    count: usize,
    bf16_out: bool,
}

impl MaskedSoftmax {
    fn rows<T: Element>(&self, scores: &[f32], keys: usize, probs: &mut [T]) {
        probs
            .par_chunks_mut(keys)
            .zip(scores.par_chunks(keys))
            .enumerate()
            .with_min_len((MIN_CHUNK / keys).max(1))
            .for_each_init(Vec::new, |exps: &mut Vec<f32>, (row, (probs, scores))| {
                let seen = self.visible.keys(row % self.count, keys);
                probs[..seen.start].fill(T::ZERO);
                probs[seen.end..].fill(T::ZERO);
                softmax_row(&scores[seen.clone()], self.scale, exps, &mut probs[seen]);
            });
    }
}

/// `softmax(scale · scores)` of one row into `probs`; `exps` is scratch.
#[multiversion(targets = "simd")]
fn softmax_row<T: Element>(scores: &[f32], scale: f32, exps: &mut Vec<f32>, probs: &mut [T]) {
    let max = max(scores);
    exps.clear();
    exps.extend(scores.iter().map(|&s| exp((s - max) * scale)));
    let inverse = 1.0 / sum(exps);
    for (p, &e) in probs.iter_mut().zip(exps.iter()) {
        *p = T::from_f32(e * inverse);
    }
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let scores = f32_data(storage, layout, self.name())?;
        let keys = layout.dims().last().copied().unwrap_or(1).max(1);
        let probs = output!(self.bf16_out, scores.len(), |probs| self
            .rows(scores, keys, &mut probs));
        Ok((probs, layout.shape().clone()))
    }
}

/// (count, keys) of scores (…, count, keys).
fn chunk_dims(scores: &Tensor) -> (usize, usize) {
    scores.dims().split_last().map_or((1, 1), |(&keys, rest)| {
        (rest.last().copied().unwrap_or(1), keys)
    })
}

impl Kernels {
    fn masked_softmax(
        &self,
        scores: &Tensor,
        scale: f64,
        visible: Visible,
    ) -> candle_core::Result<Tensor> {
        scores.contiguous()?.apply_op1_no_bwd(&MaskedSoftmax {
            scale: scale as f32,
            visible,
            count: chunk_dims(scores).0,
            bf16_out: self.bf16_matmul_inputs,
        })
    }

    /// `softmax(scale · scores + mask)` over the last dim of scores (…, count, keys), where
    /// query `i` of the chunk sees keys `0..=first_key + i`; `causal_block` is the additive
    /// mask of a chunk against itself, used off the CPU.
    pub fn causal_softmax(
        &self,
        scores: &Tensor,
        scale: f64,
        first_key: usize,
        causal_block: &Tensor,
    ) -> candle_core::Result<Tensor> {
        if self.cpu_f32 {
            return self.masked_softmax(scores, scale, Visible::Causal { first_key });
        }
        let (count, keys) = chunk_dims(scores);
        let mask = chunk_mask(causal_block, first_key, count)?;
        debug_assert_eq!(mask.dim(1)?, keys);
        candle_nn::ops::softmax_last_dim(&scores.affine(scale, 0.0)?.broadcast_add(&mask)?)
    }

    /// `softmax(scale · scores)` over the last dim of scores (…, count, keys) of a sequence
    /// against itself in both directions, where query `i` of the chunk is key
    /// `first_query + i` and sees the keys within `window` of it (all without a window).
    pub fn bidirectional_softmax(
        &self,
        scores: &Tensor,
        scale: f64,
        first_query: usize,
        window: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let (count, keys) = chunk_dims(scores);
        // A window that reaches every key is no mask.
        let window = window.filter(|&w| w + 1 < keys);
        if self.cpu_f32 {
            let visible = Visible::Around {
                first_query,
                window,
            };
            return self.masked_softmax(scores, scale, visible);
        }
        let scaled = scores.affine(scale, 0.0)?;
        let scaled = match window {
            Some(window) => {
                let queries = first_query..first_query + count;
                let mask = window_mask(queries, keys, window, scores.device())?;
                scaled.broadcast_add(&mask.to_dtype(scores.dtype())?)?
            }
            None => scaled,
        };
        candle_nn::ops::softmax_last_dim(&scaled)
    }
}

/// The mask of queries `start..start + count` against keys `0..start + count`: earlier keys
/// are all visible, the chunk's own keys only up to each query's position.
fn chunk_mask(causal_block: &Tensor, start: usize, count: usize) -> candle_core::Result<Tensor> {
    let own = causal_block.narrow(0, 0, count)?.narrow(1, 0, count)?;
    if start == 0 {
        return Ok(own);
    }
    let earlier = Tensor::zeros((count, start), own.dtype(), own.device())?;
    Tensor::cat(&[&earlier, &own], 1)
}

/// The additive mask of a sliding window for `queries` against keys `0..keys`: 0 where
/// |query - key| ≤ `window`, -∞ elsewhere.
fn window_mask(
    queries: Range<usize>,
    keys: usize,
    window: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let rows = queries.len();
    let mask: Vec<f32> = queries
        .flat_map(|i| {
            (0..keys).map(move |j| match i.abs_diff(j) <= window {
                true => 0.0,
                false => f32::NEG_INFINITY,
            })
        })
        .collect();
    Tensor::from_vec(mask, (rows, keys), device)
}
