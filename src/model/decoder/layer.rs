//! The decoder layer every architecture shares, written for scoring: packed tokens (no
//! padding, a shared prefix once; see [`Packing`](crate::model::packing::Packing)), no KV cache.
//! What differs between architectures is a [`Block`]: which norm, which gated activation,
//! whether q and k are normalised per head; each architecture's file states its own.

use candle_core::{DType, Device, Module, Tensor};

use candle_nn::{RmsNorm, VarBuilder};

use super::config::ModelConfig;
use crate::model::backend::{Gelu, Kernels, Mask, attend};
use crate::model::backend::{Linear, LinearGemm};
use crate::model::packing::Span;

/// Queries attended at once: bounds the score matrix to heads × 512 × length.
pub(super) const QUERY_CHUNK: usize = 512;

/// What an architecture's decoder block is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Block {
    /// RMSNorm of each head's q and k before the rotation (Qwen3).
    pub qk_norm: bool,
    pub norm: NormKind,
    pub activation: Activation,
    /// Embeddings multiplied by √hidden_size (Gemma).
    pub scaled_embeddings: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NormKind {
    /// `x̂ · w`.
    Plain,
    /// `x̂ · (1 + w)`, computed in f32 whatever the activations (Gemma).
    OnePlusWeight,
}

/// The gate's activation in `act(gate) · up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activation {
    /// SwiGLU.
    Silu,
    /// GeGLU with the tanh approximation of GELU (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// An RMSNorm of either kind.
pub(super) struct Norm {
    norm: RmsNorm,
    /// Computes in f32 and returns the input's dtype.
    in_f32: bool,
}

impl Norm {
    pub fn load(
        kind: NormKind,
        size: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        match kind {
            NormKind::Plain => Ok(Norm {
                norm: candle_nn::rms_norm(size, eps, vb)?,
                in_f32: false,
            }),
            NormKind::OnePlusWeight => {
                let weight = (vb.set_dtype(DType::F32).get(size, "weight")? + 1.0)?;
                Ok(Norm {
                    norm: RmsNorm::new(weight, eps),
                    in_f32: true,
                })
            }
        }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.in_f32 && x.dtype() != DType::F32 {
            return self
                .norm
                .forward(&x.to_dtype(DType::F32)?)?
                .to_dtype(x.dtype());
        }
        self.norm.forward(x)
    }

    /// The stream `x` with what is pending added, and `before_matmul` of it: the add and the
    /// norm in one pass on the f32 CPU.
    pub fn add_before_matmul(
        &self,
        x: Residual,
        kernels: Kernels,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let sum = match x.pending {
            // The (1 + w) weight is already folded in, and the kernel computes in f32.
            Some(delta) if kernels.cpu_f32 => {
                return kernels.add_rms_norm(&x.sum, delta, &self.norm);
            }
            Some(delta) => kernels.add(&x.sum, &delta)?,
            None => x.sum,
        };
        let normed = self.before_matmul(&sum, kernels)?;
        Ok((sum, normed))
    }

    /// `forward(x)` where its output feeds a linear layer: written as that layer's input
    /// dtype (bf16 on the CPU's bf16 path; the (1 + w) weight is already folded in).
    pub fn before_matmul(&self, x: &Tensor, kernels: Kernels) -> candle_core::Result<Tensor> {
        match kernels.bf16_matmul_inputs {
            true => kernels.rms_norm(x, &self.norm),
            false => self.forward(x),
        }
    }
}

/// Rotary tables for positions `0..max_len`, shared by every layer.
pub(super) struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub fn new(config: &ModelConfig, dtype: DType, device: &Device) -> candle_core::Result<Self> {
        let half = config.head_dim / 2;
        let max_len = config.max_position_embeddings;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                (1.0 / config
                    .rope_theta
                    .powf(2.0 * i as f64 / config.head_dim as f64)) as f32
            })
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, max_len as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_len, 1))?;
        let freqs = positions.broadcast_mul(&inv_freq)?;
        Ok(Rotary {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// The rotation of each packed token, by its position in its own sequence.
    pub fn at(&self, positions: &Tensor) -> candle_core::Result<Rotation> {
        Ok(Rotation {
            cos: self.cos.index_select(positions, 0)?,
            sin: self.sin.index_select(positions, 0)?,
        })
    }
}

/// Rotary rows of the packed tokens: (tokens, head_dim / 2) each.
pub(super) struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

impl Rotation {
    /// `x`: (tokens, heads, head_dim) → normalised per head by `norm` where given, rotated,
    /// head-major (heads, tokens, head_dim), so that a span is a row range of every head.
    fn apply(
        &self,
        x: &Tensor,
        norm: Option<&RmsNorm>,
        kernels: Kernels,
    ) -> candle_core::Result<Tensor> {
        kernels.rope_head_major(x, norm, (&self.cos, &self.sin))
    }
}

/// What every layer of one forward pass shares.
pub(super) struct PassContext<'a> {
    pub rotation: Rotation,
    pub spans: &'a [Span],
    /// Additive causal mask of one query chunk against itself.
    pub causal_block: &'a Tensor,
    pub kernels: Kernels,
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Per-head norms of q and k, where the block has them.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    /// For the attention matmuls, as for the projections.
    gemm: LinearGemm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(
        config: &ModelConfig,
        block: Block,
        vb: VarBuilder,
        gemm: &LinearGemm,
    ) -> candle_core::Result<Self> {
        let (hidden, head_dim) = (config.hidden_size, config.head_dim);
        let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
        let linear =
            |in_dim, out_dim, bias, name| Linear::load(in_dim, out_dim, bias, vb.pp(name), gemm);
        let bias = config.attention_bias;
        let qk_norm = match block.qk_norm {
            true => Some((
                candle_nn::rms_norm(head_dim, config.rms_norm_eps, vb.pp("q_norm"))?,
                candle_nn::rms_norm(head_dim, config.rms_norm_eps, vb.pp("k_norm"))?,
            )),
            false => None,
        };
        Ok(Attention {
            q_proj: linear(hidden, heads * head_dim, bias, "q_proj")?,
            k_proj: linear(hidden, kv_heads * head_dim, bias, "k_proj")?,
            v_proj: linear(hidden, kv_heads * head_dim, bias, "v_proj")?,
            o_proj: linear(heads * head_dim, hidden, false, "o_proj")?,
            qk_norm,
            gemm: gemm.clone(),
            heads,
            kv_heads,
            head_dim,
        })
    }

    /// `x`: (tokens, hidden), packed.
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        let tokens = x.dim(0)?;
        let split_heads = |t: Tensor, n: usize| t.reshape((tokens, n, self.head_dim));
        let fused = pass.kernels.cpu_f32 && self.gemm.fuses_attention();
        let q = split_heads(self.q_proj.forward(x)?, self.heads)?;
        let k = split_heads(self.k_proj.forward(x)?, self.kv_heads)?;
        let v = split_heads(self.v_proj.forward(x)?, self.kv_heads)?;
        let v = match fused && !pass.kernels.bf16_matmul_inputs {
            // The f32 kernel reads the values where they lie, token-major through a transpose.
            // (On the bf16 path the head-major copy is also their rounding to bf16.)
            true => v.transpose(0, 1)?,
            false => pass.kernels.head_major(&v)?,
        };
        let (q_norm, k_norm) = match &self.qk_norm {
            Some((q_norm, k_norm)) => (Some(q_norm), Some(k_norm)),
            None => (None, None),
        };
        let (q, k) = (
            pass.rotation.apply(&q, q_norm, pass.kernels)?,
            pass.rotation.apply(&k, k_norm, pass.kernels)?,
        );
        if fused {
            let attended = attend((&q, &k, &v), pass.spans, Mask::Causal, &self.gemm)?;
            return self.o_proj.forward(&attended);
        }
        let spans = pass
            .spans
            .iter()
            .map(|span| self.attend_span(&q, &k, &v, span, pass))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.o_proj.forward(&Tensor::cat(&spans.concat(), 0)?)
    }

    /// Causal attention of one span's queries over its context and itself, `QUERY_CHUNK`
    /// queries at a time, so that the score matrix stays heads × chunk × keys however long
    /// the span. `q`, `k`, `v` are head-major over all packed tokens. Returns the span's
    /// output rows, (chunk, heads × head_dim) each.
    fn attend_span(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        span: &Span,
        pass: &PassContext,
    ) -> candle_core::Result<Vec<Tensor>> {
        let keys_of = |t: &Tensor| -> candle_core::Result<Tensor> {
            let own = t.narrow(1, span.tokens.start, span.tokens.len())?;
            match &span.context {
                Some(context) => {
                    Tensor::cat(&[&t.narrow(1, context.start, context.len())?, &own], 1)
                }
                None => Ok(own),
            }
        };
        let (k, v) = (keys_of(k)?, keys_of(v)?);
        let before = span.context.as_ref().map_or(0, |c| c.len());
        let len = span.tokens.len();
        // Query heads of one key/value head are adjacent: a head group is one matmul batch.
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        (0..len)
            .step_by(QUERY_CHUNK)
            .map(|start| {
                let count = QUERY_CHUNK.min(len - start);
                // Causal: these queries see the context and their span up to themselves.
                let visible = before + start + count;
                let queries = q.narrow(1, span.tokens.start + start, count)?.reshape((
                    self.kv_heads,
                    group * count,
                    self.head_dim,
                ))?;
                let scores = self
                    .gemm
                    .matmul(&queries, &k.narrow(1, 0, visible)?.t()?)?
                    .reshape((self.kv_heads, group, count, visible))?;
                let probs = pass
                    .kernels
                    .causal_softmax(&scores, scale, before + start, pass.causal_block)?
                    .reshape((self.kv_heads, group * count, visible))?;
                self.gemm
                    .matmul(&probs, &v.narrow(1, 0, visible)?)?
                    .reshape((self.heads, count, self.head_dim))?
                    .transpose(0, 1)?
                    .reshape((count, self.heads * self.head_dim))
            })
            .collect()
    }
}

/// `down(act(gate(x)) · up(x))`.
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    activation: Activation,
}

impl Mlp {
    fn load(
        config: &ModelConfig,
        activation: Activation,
        vb: VarBuilder,
        gemm: &LinearGemm,
    ) -> candle_core::Result<Self> {
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        let linear =
            |in_dim, out_dim, name| Linear::load(in_dim, out_dim, false, vb.pp(name), gemm);
        Ok(Mlp {
            gate_proj: linear(hidden, inner, "gate_proj")?,
            up_proj: linear(hidden, inner, "up_proj")?,
            down_proj: linear(inner, hidden, "down_proj")?,
            activation,
        })
    }

    fn forward(&self, x: &Tensor, kernels: Kernels) -> candle_core::Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        let gated = match self.activation {
            Activation::Silu => kernels.swiglu(&gate, &up)?,
            Activation::GeluTanh => kernels.geglu(&gate, &up, Gelu::Tanh)?,
        };
        self.down_proj.forward(&gated)
    }
}

/// A pre-norm decoder layer: attention and MLP, each added back to the residual stream.
pub(super) struct DecoderLayer {
    input_layernorm: Norm,
    attention: Attention,
    post_attention_layernorm: Norm,
    mlp: Mlp,
}

impl DecoderLayer {
    pub fn load(
        config: &ModelConfig,
        block: Block,
        vb: VarBuilder,
        gemm: &LinearGemm,
    ) -> candle_core::Result<Self> {
        let norm = |name| {
            Norm::load(
                block.norm,
                config.hidden_size,
                config.rms_norm_eps,
                vb.pp(name),
            )
        };
        Ok(DecoderLayer {
            input_layernorm: norm("input_layernorm")?,
            attention: Attention::load(config, block, vb.pp("self_attn"), gemm)?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: Mlp::load(config, block.activation, vb.pp("mlp"), gemm)?,
        })
    }

    pub fn forward(&self, x: Residual, pass: &PassContext) -> candle_core::Result<Residual> {
        let kernels = pass.kernels;
        let (x, normed) = self.input_layernorm.add_before_matmul(x, kernels)?;
        let attended = self.attention.forward(&normed, pass)?;
        let (x, normed) = self.post_attention_layernorm.add_before_matmul(
            Residual {
                sum: x,
                pending: Some(attended),
            },
            kernels,
        )?;
        Ok(Residual {
            sum: x,
            pending: Some(self.mlp.forward(&normed, kernels)?),
        })
    }
}

/// The residual stream between layers: its sum so far, and the last block's output not yet
/// added, which the next layer's first norm adds in its own pass (and the scorer only at the
/// rows it reads).
pub(super) struct Residual {
    pub sum: Tensor,
    pub pending: Option<Tensor>,
}

impl Residual {
    /// Rows `rows` of the stream, what is pending added.
    pub fn rows(&self, rows: &Tensor) -> candle_core::Result<Tensor> {
        let sum = self.sum.index_select(rows, 0)?;
        match &self.pending {
            Some(pending) => sum + pending.index_select(rows, 0)?,
            None => Ok(sum),
        }
    }
}
