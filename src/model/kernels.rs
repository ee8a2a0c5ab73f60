//! CPU kernels for the element-wise work of the forward that candle runs on one thread (its
//! binary and unary maps, and rotary embeddings of a single batch), each one parallel pass
//! over contiguous f32 data that also folds in the copy or mask around it. Other devices
//! and dtypes keep candle's ops (see [`Kernels`]).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

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

/// The part of a CPU tensor's storage that `layout` spans, which must be contiguous.
pub(super) fn contiguous_data<'a, T>(
    data: &'a [T],
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// `softmax(scale · scores)` over the last dim, causal: in scores of shape
/// (…, count, keys), the row of query `i` (`i` = row index mod `count`) sees keys
/// `0..=first_key + i`; the rest get probability 0.
struct CausalSoftmax {
    scale: f32,
    first_key: usize,
    count: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let scores = f32_data(storage, layout, self.name())?;
        let keys = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut probs = vec![0f32; scores.len()];
        probs
            .par_chunks_mut(keys)
            .zip(scores.par_chunks(keys))
            .enumerate()
            .with_min_len((MIN_CHUNK / keys).max(1))
            .for_each(|(row, (probs, scores))| {
                let seen = (self.first_key + row % self.count + 1).min(keys);
                let (probs, scores) = (&mut probs[..seen], &scores[..seen]);
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for (p, &s) in probs.iter_mut().zip(scores) {
                    *p = ((s - max) * self.scale).exp();
                    sum += *p;
                }
                let inverse = 1.0 / sum;
                probs.iter_mut().for_each(|p| *p *= inverse);
            });
        Ok((CpuStorage::F32(probs), layout.shape().clone()))
    }
}

/// `map(a, b)` element-wise over two tensors of one shape; generic, so that `map` is
/// inlined into the loop.
struct ZipMap<F> {
    name: &'static str,
    map: F,
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
        let out: Vec<f32> = a
            .par_iter()
            .zip(b)
            .with_min_len(MIN_CHUNK)
            .map(|(&x, &y)| (self.map)(x, y))
            .collect();
        Ok((CpuStorage::F32(out), a_layout.shape().clone()))
    }
}

/// Rotary embedding of packed tokens (tokens, heads, head_dim), by the rotation of each
/// token's position (cos and sin, (tokens, head_dim / 2) each), written head-major
/// (heads, tokens, head_dim).
struct RopeHeadMajor;

impl CustomOp3 for RopeHeadMajor {
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
        let mut out = vec![0f32; x_data.len()];
        out.par_chunks_mut(tokens * dim)
            .enumerate()
            .for_each(|(head, out)| {
                for token in 0..tokens {
                    let x = &x_data[(token * heads + head) * dim..][..dim];
                    let out = &mut out[token * dim..][..dim];
                    let (cos, sin) = (&cos[token * half..][..half], &sin[token * half..][..half]);
                    for i in 0..half {
                        let (a, b) = (x[i], x[i + half]);
                        out[i] = a * cos[i] - b * sin[i];
                        out[i + half] = a * sin[i] + b * cos[i];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((heads, tokens, dim))))
    }
}

/// Which implementation the forward's element-wise steps use: these kernels for f32 on the
/// CPU, candle's ops elsewhere. Both compute the same functions.
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    pub cpu_f32: bool,
}

impl Kernels {
    pub fn add(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        match self.cpu_f32 {
            true => a.contiguous()?.apply_op2_no_bwd(
                &b.contiguous()?,
                &ZipMap {
                    name: "add",
                    map: |a, b| a + b,
                },
            ),
            false => a + b,
        }
    }

    pub fn swiglu(&self, gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
        match self.cpu_f32 {
            // silu(gate) · up
            true => gate.contiguous()?.apply_op2_no_bwd(
                &up.contiguous()?,
                &ZipMap {
                    name: "swiglu",
                    map: |gate: f32, up: f32| gate / (1.0 + (-gate).exp()) * up,
                },
            ),
            false => candle_nn::ops::silu(gate)? * up,
        }
    }

    /// `gelu(gate) · up` with the tanh approximation of GELU (Gemma's GeGLU).
    pub fn geglu(&self, gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
        match self.cpu_f32 {
            true => gate.contiguous()?.apply_op2_no_bwd(
                &up.contiguous()?,
                &ZipMap {
                    name: "geglu",
                    map: |gate: f32, up: f32| gelu_tanh(gate) * up,
                },
            ),
            // candle's `gelu` is the tanh approximation (`gelu_erf` is the exact one).
            false => gate.gelu()? * up,
        }
    }

    /// `x` (tokens, heads, head_dim) rotated, head-major (heads, tokens, head_dim).
    pub fn rope_head_major(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match self.cpu_f32 {
            true => x.contiguous()?.apply_op3_no_bwd(
                &cos.contiguous()?,
                &sin.contiguous()?,
                &RopeHeadMajor,
            ),
            false => candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?, cos, sin)?
                .squeeze(0)?
                .transpose(0, 1)?
                .contiguous(),
        }
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
        let (count, keys) = scores.dims().split_last().map_or((1, 1), |(&keys, rest)| {
            (rest.last().copied().unwrap_or(1), keys)
        });
        match self.cpu_f32 {
            true => scores.contiguous()?.apply_op1_no_bwd(&CausalSoftmax {
                scale: scale as f32,
                first_key,
                count,
            }),
            false => {
                let mask = chunk_mask(causal_block, first_key, count)?;
                debug_assert_eq!(mask.dim(1)?, keys);
                candle_nn::ops::softmax_last_dim(&scores.affine(scale, 0.0)?.broadcast_add(&mask)?)
            }
        }
    }
}

/// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`, PyTorch's `gelu(approximate="tanh")`.
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::max_abs_diff as max_diff;
    use candle_core::{DType, Device};

    const ON_CPU: Kernels = Kernels { cpu_f32: true };
    const CANDLE: Kernels = Kernels { cpu_f32: false };

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|i| ((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn each_kernel_computes_what_candles_ops_compute() {
        let (a, b) = (random(&[70, 300], 1), random(&[70, 300], 2));
        assert!(max_diff(&ON_CPU.add(&a, &b).unwrap(), &CANDLE.add(&a, &b).unwrap()) == 0.0);
        assert!(
            max_diff(
                &ON_CPU.swiglu(&a, &b).unwrap(),
                &CANDLE.swiglu(&a, &b).unwrap()
            ) < 1e-6
        );
        assert!(
            max_diff(
                &ON_CPU.geglu(&a, &b).unwrap(),
                &CANDLE.geglu(&a, &b).unwrap()
            ) < 1e-6
        );

        let x = random(&[37, 4, 16], 3);
        let (cos, sin) = (
            random(&[37, 8], 4).cos().unwrap(),
            random(&[37, 8], 5).sin().unwrap(),
        );
        let fused = ON_CPU.rope_head_major(&x, &cos, &sin).unwrap();
        assert_eq!(fused.dims(), &[4, 37, 16]);
        assert!(max_diff(&fused, &CANDLE.rope_head_major(&x, &cos, &sin).unwrap()) < 1e-6);

        let block = {
            let mask: Vec<f32> = (0..16)
                .flat_map(|i| (0..16).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            Tensor::from_vec(mask, (16, 16), &Device::Cpu).unwrap()
        };
        // Two key/value heads, groups of 3 query heads, a chunk of 5 queries after 9 keys.
        let scores = random(&[2, 3, 5, 14], 6);
        let fused = ON_CPU.causal_softmax(&scores, 0.125, 9, &block).unwrap();
        let reference = CANDLE.causal_softmax(&scores, 0.125, 9, &block).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-6);
        let rows = fused.sum_keepdim(3).unwrap().flatten_all().unwrap();
        assert!(
            rows.to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|s| (s - 1.0).abs() < 1e-5)
        );
        assert_eq!(fused.to_dtype(DType::F32).unwrap().dims(), scores.dims());
    }

    #[test]
    fn other_dtypes_are_refused_not_misread() {
        let a = random(&[4, 4], 1).to_dtype(DType::BF16).unwrap();
        assert!(ON_CPU.add(&a, &a).is_err());
    }
}
