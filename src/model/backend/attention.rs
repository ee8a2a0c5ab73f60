//! Attention on the CPU as one kernel over the packed batch: for each span of queries, each
//! key/value head and each block of `QUERY_BLOCK` queries, a loop over blocks of keys that
//! keeps a running maximum and sum per query (online softmax), so that no score matrix is
//! ever stored. Products and statistics are f32 whatever the inputs' dtype (f32, or bf16);
//! the output is written in the dtype of the matmul that follows (the o_proj GEMM).
//!
//! The inputs are read where the projections wrote them: token-major rows (tokens, heads ×
//! head_dim), possibly columns of one wider matrix (a fused QKV projection), so there is no
//! copy into a head-major layout. The inner loops are plain arithmetic on fixed-size tiles,
//! compiled three times (AVX-512, AVX2 + FMA, and baseline x86-64 or other targets) and
//! chosen by the CPU at run time.

use std::ops::Range;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::buffers::uninit_vec;
use super::kernels::{Element, exp};

/// A run of packed tokens that attend among themselves (causally, or both ways for an
/// encoder), after `context`: the packed tokens of the prefix they continue, all visible to
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub tokens: Range<usize>,
    pub context: Option<Range<usize>>,
}

/// Queries of one task (times the heads of a group as rows).
const QUERY_BLOCK: usize = 32;
/// Keys per block: a tile's scores against a block stay in registers.
const KEY_BLOCK: usize = 32;
/// Rows (query × head) multiplied at once.
const TILE: usize = 4;
/// Output columns accumulated at once in the probabilities × values product.
const VALUE_COLUMNS: usize = 32;

/// Heads and their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub heads: usize,
    /// Query heads `g·heads/kv_heads..(g+1)·heads/kv_heads` share key/value head `g` (GQA).
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Which keys a query sees, by position (its span's context first, then its own tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionMask {
    /// Keys up to the query's own position only (decoders); every key otherwise (encoders).
    pub causal: bool,
    /// Keys fewer than this many positions away, the query's own included.
    pub window: Option<usize>,
}

/// `softmax(q·kᵀ / √head_dim) · v` of every span of the packed batch. `q`: (tokens, heads ×
/// head_dim); `k` and `v`: (tokens, kv_heads × head_dim); f32, or bf16 all three; rows
/// contiguous, row strides free (columns of a wider matrix). `spans` cover the tokens once,
/// in order. Returns (tokens, heads × head_dim), bf16 when `bf16_out`, else f32.
pub fn attention(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    spans: &[Span],
    shape: AttentionShape,
    mask: AttentionMask,
    bf16_out: bool,
) -> candle_core::Result<Tensor> {
    q.apply_op3_no_bwd(
        k,
        v,
        &FusedAttention {
            spans,
            shape,
            mask,
            bf16_out,
        },
    )
}

struct FusedAttention<'a> {
    spans: &'a [Span],
    shape: AttentionShape,
    mask: AttentionMask,
    bf16_out: bool,
}

/// One task: `count` queries of a span from its `first`.
struct Job<'a> {
    span: &'a Span,
    first: usize,
    count: usize,
}

/// Rows of a (tokens, width) input as stored: `stride` values apart.
struct Rows<'a, T> {
    data: &'a [T],
    stride: usize,
    head_dim: usize,
}

impl<'a, T> Rows<'a, T> {
    /// The rows of `tokens` × `heads` heads of `head_dim` values stored as `layout` says.
    fn new(
        (data, layout): (&'a [T], &Layout),
        tokens: usize,
        heads: usize,
        head_dim: usize,
    ) -> candle_core::Result<Self> {
        let (count, width) = layout.shape().dims2()?;
        let stride = layout.stride();
        if count != tokens || width != heads * head_dim || stride[1] != 1 {
            candle_core::bail!(
                "attention: an input of {:?} (stride {stride:?}) for {tokens} tokens of {heads} heads of {head_dim}",
                layout.dims()
            );
        }
        let data = &data[layout.start_offset()..];
        if tokens > 0 && data.len() < (tokens - 1) * stride[0] + width {
            candle_core::bail!("attention: an input shorter than its layout");
        }
        Ok(Rows {
            data,
            stride: stride[0],
            head_dim,
        })
    }

    #[inline(always)]
    fn head(&self, token: usize, head: usize) -> &[T] {
        &self.data[token * self.stride + head * self.head_dim..][..self.head_dim]
    }
}

/// An input's values as f32.
trait Value: Copy + Send + Sync {
    fn f32(self) -> f32;
}

impl Value for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Value for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// The inputs of one call, and what every task needs of it.
struct Inputs<'a, T> {
    q: Rows<'a, T>,
    k: Rows<'a, T>,
    v: Rows<'a, T>,
    shape: AttentionShape,
    mask: AttentionMask,
    scale: f32,
}

/// Per-thread buffers, reused across tasks.
#[derive(Default)]
struct Scratch {
    /// Scaled queries, (rows, head_dim), rows padded to whole tiles with zeros.
    queries: Vec<f32>,
    /// Unnormalised outputs, as `queries`.
    outputs: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    /// One key block, transposed: (head_dim, KEY_BLOCK).
    keys: Vec<f32>,
    /// One value block: (KEY_BLOCK, head_dim).
    values: Vec<f32>,
}

#[inline(always)]
fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    // Rust never contracts `a * b + c`; `mul_add` is one instruction where FMA is enabled
    // and a libm call where it is not.
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

impl<T: Value> Inputs<'_, T> {
    /// The keys of `job`'s query `i` as a range of its span's key indices (the context's
    /// keys, then its own tokens').
    #[inline(always)]
    fn visible(&self, job: &Job, keys: usize, i: usize) -> Range<usize> {
        let position = job.span.context.as_ref().map_or(0, |c| c.len()) + job.first + i;
        let from = self
            .mask
            .window
            .map_or(0, |w| (position + 1).saturating_sub(w));
        let to = match (self.mask.causal, self.mask.window) {
            (true, _) => position + 1,
            (false, Some(w)) => (position + w).min(keys),
            (false, None) => keys,
        };
        from..to
    }

    /// Writes `job`'s rows of the output, (count, heads × head_dim).
    #[inline(always)]
    fn run<O: Element, const FMA: bool>(&self, job: &Job, out: &mut [O], scratch: &mut Scratch) {
        let AttentionShape {
            heads,
            kv_heads,
            head_dim: dim,
        } = self.shape;
        let group = heads / kv_heads;
        let span = job.span;
        let before = span.context.as_ref().map_or(0, |c| c.len());
        let keys = before + span.tokens.len();
        let key_token = |key: usize| match &span.context {
            Some(context) if key < before => context.start + key,
            _ => span.tokens.start + key - before,
        };
        // Visible ranges only grow with the query's position.
        let all = self.visible(job, keys, 0).start..self.visible(job, keys, job.count - 1).end;
        let rows = group * job.count;
        let padded = rows.div_ceil(TILE) * TILE;
        let s = scratch;
        s.queries.resize(padded * dim, 0.0);
        s.outputs.resize(padded * dim, 0.0);
        s.keys.resize(dim * KEY_BLOCK, 0.0);
        s.values.resize(KEY_BLOCK * dim, 0.0);
        for kv in 0..kv_heads {
            // Row r: query r % count of head kv·group + r / count.
            for r in 0..padded {
                let row = &mut s.queries[r * dim..][..dim];
                if r < rows {
                    let query = self.q.head(
                        span.tokens.start + job.first + r % job.count,
                        kv * group + r / job.count,
                    );
                    row.iter_mut()
                        .zip(query)
                        .for_each(|(q, &x)| *q = x.f32() * self.scale);
                } else {
                    row.fill(0.0);
                }
            }
            s.outputs.fill(0.0);
            s.max.clear();
            s.max.resize(padded, f32::NEG_INFINITY);
            s.sum.clear();
            s.sum.resize(padded, 0.0);
            for block in all.clone().step_by(KEY_BLOCK) {
                let width = KEY_BLOCK.min(all.end - block);
                for j in 0..KEY_BLOCK {
                    let value = &mut s.values[j * dim..][..dim];
                    if j < width {
                        let token = key_token(block + j);
                        for (c, &x) in self.k.head(token, kv).iter().enumerate() {
                            s.keys[c * KEY_BLOCK + j] = x.f32();
                        }
                        value
                            .iter_mut()
                            .zip(self.v.head(token, kv))
                            .for_each(|(v, &x)| *v = x.f32());
                    } else {
                        (0..dim).for_each(|c| s.keys[c * KEY_BLOCK + j] = 0.0);
                        value.fill(0.0);
                    }
                }
                for tile in (0..rows).step_by(TILE) {
                    let mut probs =
                        tile_scores::<FMA>(&s.queries[tile * dim..][..TILE * dim], &s.keys, dim);
                    for (t, p) in probs.iter_mut().enumerate() {
                        let r = tile + t;
                        let seen = match r < rows {
                            true => self.visible(job, keys, r % job.count),
                            false => 0..0,
                        };
                        let from = seen.start.clamp(block, block + width) - block;
                        let to = seen.end.clamp(block, block + width) - block;
                        if from >= to {
                            p.fill(0.0);
                            continue;
                        }
                        let inside = |j: usize| (from..to).contains(&j);
                        let block_max = (0..KEY_BLOCK)
                            .map(|j| if inside(j) { p[j] } else { f32::NEG_INFINITY })
                            .fold(f32::NEG_INFINITY, f32::max);
                        let max = s.max[r].max(block_max);
                        let mut block_sum = 0.0;
                        for (j, p) in p.iter_mut().enumerate() {
                            let e = exp(*p - max);
                            *p = if inside(j) { e } else { 0.0 };
                            block_sum += *p;
                        }
                        if s.max[r] != max {
                            let correction = match s.max[r] == f32::NEG_INFINITY {
                                true => 0.0,
                                false => exp(s.max[r] - max),
                            };
                            s.sum[r] *= correction;
                            s.outputs[r * dim..][..dim]
                                .iter_mut()
                                .for_each(|o| *o *= correction);
                            s.max[r] = max;
                        }
                        s.sum[r] += block_sum;
                    }
                    accumulate::<FMA>(
                        &probs,
                        &s.values,
                        &mut s.outputs[tile * dim..][..TILE * dim],
                        dim,
                    );
                }
            }
            for r in 0..rows {
                let (i, head) = (r % job.count, kv * group + r / job.count);
                let inverse = 1.0 / s.sum[r];
                out[(i * heads + head) * dim..][..dim]
                    .iter_mut()
                    .zip(&s.outputs[r * dim..][..dim])
                    .for_each(|(o, &x)| *o = O::from_f32(x * inverse));
            }
        }
    }
}

/// The scores of a tile of `TILE` query rows (`queries`, (TILE, dim)) against a key block
/// (`keys`, (dim, KEY_BLOCK)).
#[inline(always)]
fn tile_scores<const FMA: bool>(
    queries: &[f32],
    keys: &[f32],
    dim: usize,
) -> [[f32; KEY_BLOCK]; TILE] {
    let mut scores = [[0.0; KEY_BLOCK]; TILE];
    let rows: [&[f32]; TILE] = std::array::from_fn(|t| &queries[t * dim..][..dim]);
    for c in 0..dim {
        let key: &[f32; KEY_BLOCK] = keys[c * KEY_BLOCK..][..KEY_BLOCK].try_into().unwrap();
        for t in 0..TILE {
            let q = rows[t][c];
            for j in 0..KEY_BLOCK {
                scores[t][j] = fma::<FMA>(q, key[j], scores[t][j]);
            }
        }
    }
    scores
}

/// `outputs += probs · values` for a tile: probs (TILE, KEY_BLOCK), values (KEY_BLOCK,
/// dim), outputs (TILE, dim).
#[inline(always)]
fn accumulate<const FMA: bool>(
    probs: &[[f32; KEY_BLOCK]; TILE],
    values: &[f32],
    outputs: &mut [f32],
    dim: usize,
) {
    let mut start = 0;
    while start + VALUE_COLUMNS <= dim {
        let mut acc: [[f32; VALUE_COLUMNS]; TILE] = std::array::from_fn(|t| {
            outputs[t * dim + start..][..VALUE_COLUMNS]
                .try_into()
                .unwrap()
        });
        for j in 0..KEY_BLOCK {
            let value: &[f32; VALUE_COLUMNS] = values[j * dim + start..][..VALUE_COLUMNS]
                .try_into()
                .unwrap();
            for t in 0..TILE {
                let p = probs[t][j];
                for c in 0..VALUE_COLUMNS {
                    acc[t][c] = fma::<FMA>(p, value[c], acc[t][c]);
                }
            }
        }
        for t in 0..TILE {
            outputs[t * dim + start..][..VALUE_COLUMNS].copy_from_slice(&acc[t]);
        }
        start += VALUE_COLUMNS;
    }
    // Head sizes that are not a multiple of VALUE_COLUMNS (the test fixtures').
    for t in 0..TILE {
        for j in 0..KEY_BLOCK {
            let p = probs[t][j];
            for c in start..dim {
                outputs[t * dim + c] = fma::<FMA>(p, values[j * dim + c], outputs[t * dim + c]);
            }
        }
    }
}

/// The instruction sets the kernel is compiled for.
#[derive(Debug, Clone, Copy)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn run_avx512<T: Value, O: Element>(inputs: &Inputs<T>, job: &Job, out: &mut [O], s: &mut Scratch) {
    inputs.run::<O, true>(job, out, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<T: Value, O: Element>(inputs: &Inputs<T>, job: &Job, out: &mut [O], s: &mut Scratch) {
    inputs.run::<O, true>(job, out, s)
}

impl FusedAttention<'_> {
    /// Every span's queries in blocks, each with its rows of `out`.
    fn run<T: Value, O: Element>(
        &self,
        inputs: &Inputs<T>,
        out: &mut [O],
    ) -> candle_core::Result<()> {
        let width = self.shape.heads * self.shape.head_dim;
        let mut jobs = Vec::new();
        let mut rest = out;
        let mut next = 0;
        for span in self.spans {
            if span.tokens.start != next {
                candle_core::bail!("attention: spans must cover the tokens in order");
            }
            next = span.tokens.end;
            for first in (0..span.tokens.len()).step_by(QUERY_BLOCK) {
                let count = QUERY_BLOCK.min(span.tokens.len() - first);
                let (rows, tail) = std::mem::take(&mut rest).split_at_mut(count * width);
                rest = tail;
                jobs.push((Job { span, first, count }, rows));
            }
        }
        if !rest.is_empty() {
            candle_core::bail!("attention: spans must cover the tokens in order");
        }
        let isa = isa();
        jobs.into_par_iter()
            .for_each_init(Scratch::default, |scratch, (job, out)| match isa {
                // SAFETY: the CPU has the features these were compiled for (`isa`).
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { run_avx512(inputs, &job, out, scratch) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { run_avx2(inputs, &job, out, scratch) },
                _ => inputs.run::<O, false>(&job, out, scratch),
            });
        Ok(())
    }

    fn typed<T: Value>(
        &self,
        [q, k, v]: [(&[T], &Layout); 3],
        tokens: usize,
    ) -> candle_core::Result<CpuStorage> {
        let AttentionShape {
            heads,
            kv_heads,
            head_dim,
        } = self.shape;
        let rows = |input, heads| Rows::new(input, tokens, heads, head_dim);
        let inputs = Inputs {
            q: rows(q, heads)?,
            k: rows(k, kv_heads)?,
            v: rows(v, kv_heads)?,
            shape: self.shape,
            mask: self.mask,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        let len = tokens * heads * head_dim;
        Ok(match self.bf16_out {
            true => {
                let mut out = uninit_vec::<bf16>(len);
                self.run(&inputs, &mut out)?;
                CpuStorage::BF16(out)
            }
            false => {
                let mut out = uninit_vec::<f32>(len);
                self.run(&inputs, &mut out)?;
                CpuStorage::F32(out)
            }
        })
    }
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
        let AttentionShape {
            heads,
            kv_heads,
            head_dim,
        } = self.shape;
        if self.mask.window == Some(0) {
            candle_core::bail!("attention: a window of 0 keys");
        }
        if kv_heads == 0 || heads % kv_heads != 0 || head_dim == 0 {
            candle_core::bail!(
                "attention: {heads} heads over {kv_heads} key/value heads of {head_dim}"
            );
        }
        let tokens = q_layout.dims().first().copied().unwrap_or(0);
        let out = match (q, k, v) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                self.typed([(q, q_layout), (k, k_layout), (v, v_layout)], tokens)?
            }
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
                self.typed([(q, q_layout), (k, k_layout), (v, v_layout)], tokens)?
            }
            _ => candle_core::bail!("attention: q, k and v all f32 or all bf16"),
        };
        Ok((out, Shape::from((tokens, heads * head_dim))))
    }
}

#[cfg(test)]
mod tests;
