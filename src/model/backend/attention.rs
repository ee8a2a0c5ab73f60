//! Attention of a packed batch on the CPU as one kernel. For each span, head and block of
//! `QUERY_BLOCK` queries, a loop over blocks of `KEY_BLOCK` keys keeps a running maximum and
//! sum per query (online softmax), so that one block's scores are all that exist at a time;
//! each block's two products go to the library GEMM the linear layers use (the bf16 GEMM on
//! the CPU's bf16 path, AMX where the CPU has it; else the f32 BLAS), one thread per call, and
//! the softmax between them is a vectorised row kernel. Blocks no query of the block sees
//! (the future of a causal one, outside a window) are skipped. The output is written once,
//! at each query's row of (tokens, heads × head_dim), in the inputs' dtype: the o_proj GEMM's.
//!
//! The inputs are read where they lie (head-major, or token-major seen through a transpose),
//! except a span's keys and values after a context (a shared prefix): those are gathered
//! into one run, so that the key blocks, and with them the rounding of the block's
//! probabilities to bf16, are those of the same sequence scored alone.

use std::ops::Range;
use std::time::Instant;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::bf16::Bf16Matmul;
use super::blas::{Blas, Product, add_matmul_time};
use super::buffers::uninit_vec;
use super::kernels::{Element, LANES, exp, max};
use super::linear::LinearGemm;

/// A run of packed tokens that attend among themselves (causally, or both ways for an
/// encoder), after `context`: the packed tokens of the prefix they continue, all visible to
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub tokens: Range<usize>,
    pub context: Option<Range<usize>>,
}

/// Which keys a query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Its context and its span up to itself (decoders).
    Causal,
    /// Its span both ways, within `window` positions of itself where set (encoders).
    Bidirectional { window: Option<usize> },
}

/// Queries of one task.
const QUERY_BLOCK: usize = 128;
/// Keys of one block: its scores, QUERY_BLOCK × KEY_BLOCK f32, stay in the L2 cache.
const KEY_BLOCK: usize = 512;

/// The GEMM of one block, on the calling thread.
#[derive(Clone, Copy)]
enum BlockGemm<'a> {
    F32(&'a Blas),
    Bf16(&'a Bf16Matmul),
}

impl LinearGemm {
    /// Whether [`attend`] runs here: a library multiplies, one thread per call.
    pub fn fuses_attention(&self) -> bool {
        self.block_gemm().is_some()
    }

    fn block_gemm(&self) -> Option<BlockGemm<'_>> {
        match self {
            LinearGemm::Blas(blas) if blas.single_threaded() => Some(BlockGemm::F32(blas)),
            LinearGemm::Bf16(bf16) if bf16.multiplies_bf16() => Some(BlockGemm::Bf16(bf16)),
            _ => None,
        }
    }
}

/// `softmax(q·kᵀ / √head_dim) · v` of every span of the packed batch, where
/// [`LinearGemm::fuses_attention`]. `q`: (heads, tokens, head_dim); `k`, `v`: (kv_heads,
/// tokens, head_dim), query heads `g·heads/kv_heads..` sharing key/value head `g`; each with
/// its last dim contiguous (head-major, or a token-major tensor transposed), f32 with the f32
/// BLAS, bf16 with the bf16 GEMM. Returns (tokens, heads × head_dim) of the same dtype.
pub fn attend(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    spans: &[Span],
    mask: Mask,
    gemm: &LinearGemm,
) -> candle_core::Result<Tensor> {
    let Some(gemm) = gemm.block_gemm() else {
        candle_core::bail!(
            "attention: no library GEMM to run it on ({})",
            gemm.description()
        );
    };
    let plan = Plan { spans, mask };
    q.apply_op3_no_bwd(k, v, &FusedAttention { plan, gemm })
}

struct FusedAttention<'a> {
    plan: Plan<'a>,
    gemm: BlockGemm<'a>,
}

/// The attention of a packed batch, whatever multiplies its blocks.
struct Plan<'a> {
    spans: &'a [Span],
    mask: Mask,
}

impl CustomOp3 for FusedAttention<'_> {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (heads, tokens, head_dim) = q_layout.shape().dims3()?;
        let shape = Shape::from((tokens, heads * head_dim));
        let out = match (q, k, v, self.gemm) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v), BlockGemm::F32(blas)) => {
                let inputs = Inputs::new((q, q_layout), (k, k_layout), (v, v_layout))?;
                CpuStorage::F32(self.plan.run(inputs, &|p| blas.product(p))?)
            }
            (
                CpuStorage::BF16(q),
                CpuStorage::BF16(k),
                CpuStorage::BF16(v),
                BlockGemm::Bf16(library),
            ) => {
                let inputs = Inputs::new((q, q_layout), (k, k_layout), (v, v_layout))?;
                CpuStorage::BF16(self.plan.run(inputs, &|p| library.product(p))?)
            }
            _ => candle_core::bail!(
                "attention: f32 inputs with the f32 BLAS, or bf16 with the bf16 GEMM"
            ),
        };
        Ok((out, shape))
    }
}

/// One input's matrices: head `h`'s row `t` at `h·head_stride + t·row_stride`.
struct Heads<'a, T> {
    data: &'a [T],
    heads: usize,
    tokens: usize,
    head_dim: usize,
    head_stride: usize,
    row_stride: usize,
}

impl<'a, T> Heads<'a, T> {
    fn new((data, layout): (&'a [T], &Layout)) -> candle_core::Result<Self> {
        let (heads, tokens, head_dim) = layout.shape().dims3()?;
        let &[head_stride, row_stride, 1] = layout.stride() else {
            candle_core::bail!("attention: an input's last dim must be contiguous");
        };
        let data = &data[layout.start_offset()..];
        let needed = (heads.max(1) - 1) * head_stride + (tokens.max(1) - 1) * row_stride + head_dim;
        if data.len() < needed {
            candle_core::bail!("attention: an input shorter than its layout");
        }
        Ok(Heads {
            data,
            heads,
            tokens,
            head_dim,
            head_stride,
            row_stride,
        })
    }

    /// Head `head`'s rows from `row` on.
    fn rows(&self, head: usize, row: usize) -> &'a [T] {
        &self.data[head * self.head_stride + row * self.row_stride..]
    }
}

struct Inputs<'a, T> {
    q: Heads<'a, T>,
    k: Heads<'a, T>,
    v: Heads<'a, T>,
}

impl<'a, T> Inputs<'a, T> {
    fn new(
        q: (&'a [T], &Layout),
        k: (&'a [T], &Layout),
        v: (&'a [T], &Layout),
    ) -> candle_core::Result<Self> {
        let (q, k, v) = (Heads::new(q)?, Heads::new(k)?, Heads::new(v)?);
        let same = |a: &Heads<T>, b: &Heads<T>| (a.tokens, a.head_dim) == (b.tokens, b.head_dim);
        if !same(&q, &k)
            || !same(&q, &v)
            || k.heads != v.heads
            || k.heads == 0
            || !q.heads.is_multiple_of(k.heads)
        {
            candle_core::bail!(
                "attention: q of {} heads, k and v of {} and {}, for {} tokens",
                q.heads,
                k.heads,
                v.heads,
                q.tokens
            );
        }
        Ok(Inputs { q, k, v })
    }
}

/// One task: `count` queries of `span` from its `first`, for query head `head`.
struct Job<'a> {
    span: &'a Span,
    head: usize,
    first: usize,
    count: usize,
}

/// A task's buffers, reused from task to task.
#[derive(Default)]
struct Scratch<T> {
    scores: Vec<f32>,
    probs: Vec<T>,
    /// The unnormalised output rows, (count, head_dim).
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    /// Keys, then values, of a span with a context.
    gathered: Vec<T>,
}

/// The output, written by tasks at rows and columns of their own.
#[derive(Clone, Copy)]
struct Out<T>(*mut T);
// SAFETY: each task writes only its queries' columns of its head (see `Plan::job`).
unsafe impl<T> Send for Out<T> {}
unsafe impl<T> Sync for Out<T> {}

type Gemm<'g, T> = dyn Fn(Product<T>) -> std::result::Result<(), String> + Sync + 'g;

impl Plan<'_> {
    fn run<T: Element + Default>(
        &self,
        inputs: Inputs<T>,
        gemm: &Gemm<T>,
    ) -> candle_core::Result<Vec<T>> {
        let (heads, tokens, head_dim) = (inputs.q.heads, inputs.q.tokens, inputs.q.head_dim);
        let jobs: Vec<Job> = self
            .spans
            .iter()
            .flat_map(|span| {
                (0..span.tokens.len())
                    .step_by(QUERY_BLOCK)
                    .flat_map(move |first| {
                        let count = QUERY_BLOCK.min(span.tokens.len() - first);
                        (0..heads).map(move |head| Job {
                            span,
                            head,
                            first,
                            count,
                        })
                    })
            })
            .collect();
        // The tasks write their spans' rows unsynchronised: spans must be disjoint, in order,
        // and cover the tokens; contexts must lie inside them.
        let in_order = self
            .spans
            .windows(2)
            .all(|pair| pair[0].tokens.end <= pair[1].tokens.start);
        let covered: usize = self.spans.iter().map(|s| s.tokens.len()).sum();
        let inside = |r: &Range<usize>| r.start <= r.end && r.end <= tokens;
        let contexts_inside = self
            .spans
            .iter()
            .all(|s| inside(&s.tokens) && s.context.as_ref().is_none_or(inside));
        if !in_order || covered != tokens || !contexts_inside {
            candle_core::bail!(
                "attention: spans that do not cover the {tokens} tokens once, in order"
            );
        }
        let mut out = uninit_vec::<T>(tokens * heads * head_dim);
        let target = Out(out.as_mut_ptr());
        let nanos = std::sync::atomic::AtomicU64::new(0);
        let timed = |p: Product<T>| {
            let started = Instant::now();
            let result = gemm(p);
            nanos.fetch_add(
                started.elapsed().as_nanos() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            result
        };
        let result = jobs
            .par_iter()
            .try_for_each_init(Scratch::default, |scratch, job| {
                self.job(&inputs, job, scratch, &timed, target)
                    .map_err(|err| candle_core::Error::msg(format!("attention: {err}")))
            });
        // Summed over the threads, counted as the wall time they share.
        let threads = rayon::current_num_threads().max(1) as u64;
        add_matmul_time(std::time::Duration::from_nanos(
            nanos.into_inner() / threads,
        ));
        result?;
        Ok(out)
    }

    /// Which keys (numbered over the span's context, then its tokens) query `query` of the
    /// span sees.
    fn visible(&self, query: usize, before: usize, keys: usize) -> Range<usize> {
        let at = before + query;
        match self.mask {
            Mask::Causal => 0..at + 1,
            Mask::Bidirectional { window: None } => 0..keys,
            Mask::Bidirectional {
                window: Some(window),
            } => at.saturating_sub(window)..(at + window + 1).min(keys),
        }
    }

    fn job<T: Element>(
        &self,
        inputs: &Inputs<T>,
        job: &Job,
        scratch: &mut Scratch<T>,
        gemm: &Gemm<T>,
        out: Out<T>,
    ) -> std::result::Result<(), String> {
        let Inputs { q, k, v } = inputs;
        let (head_dim, count) = (q.head_dim, job.count);
        let kv_head = job.head / (q.heads / k.heads);
        let before = job.span.context.as_ref().map_or(0, |c| c.len());
        let keys = before + job.span.tokens.len();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let Scratch {
            scores,
            probs,
            acc,
            max,
            sum,
            gathered,
        } = scratch;
        // The keys and values, numbered over the context, then the span's own tokens. A span
        // with a context gets them gathered into one run, so that its key blocks, and the
        // rounding of their probabilities, are those of the same sequence scored alone.
        let (key_rows, value_rows, stride) = match &job.span.context {
            Some(context) if before > 0 => {
                let own = job.span.tokens.clone();
                gathered.clear();
                for input in [k, v] {
                    for token in context.clone().chain(own.clone()) {
                        gathered.extend_from_slice(&input.rows(kv_head, token)[..head_dim]);
                    }
                }
                let (key_rows, value_rows) = gathered.split_at(keys * head_dim);
                (key_rows, value_rows, (head_dim, head_dim))
            }
            _ => (
                k.rows(kv_head, job.span.tokens.start),
                v.rows(kv_head, job.span.tokens.start),
                (k.row_stride, v.row_stride),
            ),
        };
        scores.resize(count * KEY_BLOCK, 0.0);
        probs.resize(count * KEY_BLOCK, T::ZERO);
        acc.clear();
        acc.resize(count * head_dim, 0.0);
        max.clear();
        max.resize(count, f32::NEG_INFINITY);
        sum.clear();
        sum.resize(count, 0.0);
        let seen: Vec<Range<usize>> = (0..count)
            .map(|i| self.visible(job.first + i, before, keys))
            .collect();
        let queries = q.rows(job.head, job.span.tokens.start + job.first);
        for start in (0..keys).step_by(KEY_BLOCK) {
            let block = start..KEY_BLOCK.min(keys - start) + start;
            let width = block.len();
            if seen
                .iter()
                .all(|s| s.end <= block.start || s.start >= block.end)
            {
                continue;
            }
            gemm(Product {
                a: queries,
                a_layout: (false, q.row_stride),
                b: &key_rows[start * stride.0..],
                b_layout: (true, stride.0),
                m: count,
                n: width,
                k: head_dim,
                out: scores.as_mut_ptr(),
                ldc: width,
                accumulate: false,
            })?;
            online_softmax_block(
                (scores, &seen, block.clone(), scale),
                (max, sum),
                probs,
                (acc, head_dim),
            );
            gemm(Product {
                a: probs,
                a_layout: (false, width),
                b: &value_rows[start * stride.1..],
                b_layout: (false, stride.1),
                m: count,
                n: head_dim,
                k: width,
                out: acc.as_mut_ptr(),
                ldc: head_dim,
                accumulate: true,
            })?;
        }
        let row_width = q.heads * head_dim;
        for i in 0..count {
            let token = job.span.tokens.start + job.first + i;
            // SAFETY: token < tokens and the head's columns are inside the row; no other task
            // writes this token's columns of this head.
            let row = unsafe {
                std::slice::from_raw_parts_mut(
                    out.0.add(token * row_width + job.head * head_dim),
                    head_dim,
                )
            };
            normalise_row(&acc[i * head_dim..][..head_dim], sum[i], row);
        }
        Ok(())
    }
}

/// The online softmax's step for every query of a block of keys: `scores` and `probs` rows
/// of the block's width, `acc` rows of `head_dim`. One SIMD-level choice per block, not per
/// row.
#[multiversion(targets = "simd")]
fn online_softmax_block<T: Element>(
    (scores, seen, block, scale): (&[f32], &[Range<usize>], Range<usize>, f32),
    (max, sum): (&mut [f32], &mut [f32]),
    probs: &mut [T],
    (acc, head_dim): (&mut [f32], usize),
) {
    let width = block.len();
    for (i, range) in seen.iter().enumerate() {
        let local = range.start.clamp(block.start, block.end) - block.start
            ..range.end.clamp(block.start, block.end) - block.start;
        online_softmax_row(
            &scores[i * width..][..width],
            (local, scale),
            (&mut max[i], &mut sum[i]),
            &mut probs[i * width..][..width],
            &mut acc[i * head_dim..][..head_dim],
        );
    }
}

/// One query's step of the online softmax over a block of scores: the keys of `visible` get
/// `exp(scale · score - max)` in `probs` (the others 0), where `max` is the running maximum
/// with this block's; the running `sum` and the output row `acc` so far are rescaled to it.
#[inline(always)]
fn online_softmax_row<T: Element>(
    scores: &[f32],
    (visible, scale): (Range<usize>, f32),
    (running_max, running_sum): (&mut f32, &mut f32),
    probs: &mut [T],
    acc: &mut [f32],
) {
    if visible.is_empty() {
        probs.fill(T::ZERO);
        return;
    }
    let new_max = running_max.max(scale * max(&scores[visible.clone()]));
    let correction = exp(*running_max - new_max);
    probs[..visible.start].fill(T::ZERO);
    probs[visible.end..].fill(T::ZERO);
    let mut lanes = [0f32; LANES];
    for (chunk, out) in scores[visible.clone()]
        .chunks(LANES)
        .zip(probs[visible].chunks_mut(LANES))
    {
        for ((lane, &s), p) in lanes.iter_mut().zip(chunk).zip(out) {
            let e = exp(s * scale - new_max);
            *lane += e;
            *p = T::from_f32(e);
        }
    }
    *running_sum = *running_sum * correction + lanes.iter().sum::<f32>();
    *running_max = new_max;
    if correction != 1.0 {
        acc.iter_mut().for_each(|a| *a *= correction);
    }
}

#[multiversion(targets = "simd")]
fn normalise_row<T: Element>(acc: &[f32], sum: f32, out: &mut [T]) {
    let inverse = 1.0 / sum;
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = T::from_f32(a * inverse);
    }
}

#[cfg(test)]
mod tests;
