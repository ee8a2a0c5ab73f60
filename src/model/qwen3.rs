//! Qwen3 written for scoring, not generation: one forward over a packed batch (every real
//! token once, no padding, shared prefixes once; see [`Packing`]), no KV cache, and of the LM
//! head only the rows of the scoring tokens ("Yes", or yes and no), applied to each sequence's last token.

use candle_core::{DType, Device, Module, Tensor};

use candle_nn::{RmsNorm, VarBuilder};

use super::config::Qwen3Config;
use super::error::{ModelError, Result};
use super::kernels::Kernels;
use super::linear::{Linear, LinearGemm};
use super::packing::{Packing, Span};
use super::weights::SafetensorsFiles;

/// Queries attended at once: bounds the score matrix to heads × 512 × length.
const QUERY_CHUNK: usize = 512;

/// Rotary tables for positions `0..max_len`, shared by every layer.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(config: &Qwen3Config, dtype: DType, device: &Device) -> candle_core::Result<Self> {
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
    fn at(&self, positions: &Tensor) -> candle_core::Result<Rotation> {
        Ok(Rotation {
            cos: self.cos.index_select(positions, 0)?,
            sin: self.sin.index_select(positions, 0)?,
        })
    }
}

/// Rotary rows of the packed tokens: (tokens, head_dim / 2) each.
struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

impl Rotation {
    /// `x`: (tokens, heads, head_dim) → rotated, head-major (heads, tokens, head_dim), so that
    /// a span is a row range of every head.
    fn apply(&self, x: &Tensor, kernels: Kernels) -> candle_core::Result<Tensor> {
        kernels.rope_head_major(x, &self.cos, &self.sin)
    }
}

/// What every layer of one forward pass shares.
struct PassContext<'a> {
    rotation: Rotation,
    spans: &'a [Span],
    /// Additive causal mask of one query chunk against itself.
    causal_block: &'a Tensor,
    kernels: Kernels,
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    /// For the attention matmuls, as for the projections.
    gemm: LinearGemm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(config: &Qwen3Config, vb: VarBuilder, gemm: &LinearGemm) -> candle_core::Result<Self> {
        let (hidden, head_dim) = (config.hidden_size, config.head_dim);
        let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
        let linear = |in_dim, out_dim, name| {
            Linear::load(in_dim, out_dim, config.attention_bias, vb.pp(name), gemm)
        };
        Ok(Attention {
            q_proj: linear(hidden, heads * head_dim, "q_proj")?,
            k_proj: linear(hidden, kv_heads * head_dim, "k_proj")?,
            v_proj: linear(hidden, kv_heads * head_dim, "v_proj")?,
            o_proj: linear(heads * head_dim, hidden, "o_proj")?,
            q_norm: candle_nn::rms_norm(head_dim, config.rms_norm_eps, vb.pp("q_norm"))?,
            k_norm: candle_nn::rms_norm(head_dim, config.rms_norm_eps, vb.pp("k_norm"))?,
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
        // Qwen3 normalises each head's q and k before the rotation.
        let q = self
            .q_norm
            .forward(&split_heads(self.q_proj.forward(x)?, self.heads)?)?;
        let k = self
            .k_norm
            .forward(&split_heads(self.k_proj.forward(x)?, self.kv_heads)?)?;
        let v = pass
            .kernels
            .head_major(&split_heads(self.v_proj.forward(x)?, self.kv_heads)?)?;
        let (q, k) = (
            pass.rotation.apply(&q, pass.kernels)?,
            pass.rotation.apply(&k, pass.kernels)?,
        );
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

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(config: &Qwen3Config, vb: VarBuilder, gemm: &LinearGemm) -> candle_core::Result<Self> {
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        let linear =
            |in_dim, out_dim, name| Linear::load(in_dim, out_dim, false, vb.pp(name), gemm);
        Ok(Mlp {
            gate_proj: linear(hidden, inner, "gate_proj")?,
            up_proj: linear(hidden, inner, "up_proj")?,
            down_proj: linear(inner, hidden, "down_proj")?,
        })
    }

    fn forward(&self, x: &Tensor, kernels: Kernels) -> candle_core::Result<Tensor> {
        let gated = kernels.swiglu(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?)?;
        self.down_proj.forward(&gated)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    attention: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(config: &Qwen3Config, vb: VarBuilder, gemm: &LinearGemm) -> candle_core::Result<Self> {
        let eps = config.rms_norm_eps;
        Ok(DecoderLayer {
            input_layernorm: candle_nn::rms_norm(
                config.hidden_size,
                eps,
                vb.pp("input_layernorm"),
            )?,
            attention: Attention::load(config, vb.pp("self_attn"), gemm)?,
            post_attention_layernorm: candle_nn::rms_norm(
                config.hidden_size,
                eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::load(config, vb.pp("mlp"), gemm)?,
        })
    }

    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        let kernels = pass.kernels;
        let attended = self
            .attention
            .forward(&kernels.rms_norm(x, &self.input_layernorm)?, pass)?;
        let x = kernels.add(x, &attended)?;
        let transformed = self.mlp.forward(
            &kernels.rms_norm(&x, &self.post_attention_layernorm)?,
            kernels,
        )?;
        pass.kernels.add(&x, &transformed)
    }
}

/// The scoring model: embeddings, decoder layers, final norm, and the scoring tokens' head rows.
pub struct Qwen3Scorer {
    embed_tokens: candle_nn::Embedding,
    layers: Vec<DecoderLayer>,
    /// Final norm and head row in f32: the last dot product is where precision matters.
    final_norm: RmsNorm,
    /// Rows of the head's scoring tokens, (1 or 2, hidden): true, then false.
    head_rows: Tensor,
    rotary: Rotary,
    /// Additive causal mask of one query chunk against itself.
    causal_block: Tensor,
    kernels: Kernels,
    device: Device,
    /// Of the activations (the embedding table may be stored in another).
    dtype: DType,
    max_length: usize,
}

impl Qwen3Scorer {
    /// `vb` reads `tensors` at the activations' dtype and device (`gemm` may store the
    /// weights in another); the head rows are read from `tensors` alone, without the rest of
    /// the vocabulary matrix.
    pub fn load(
        config: &Qwen3Config,
        tensors: &SafetensorsFiles,
        vb: VarBuilder,
        head_tokens: &[u32],
        gemm: &LinearGemm,
    ) -> Result<Self> {
        let weights = |err: candle_core::Error| ModelError::Weights(err.to_string());
        if let Some(&id) = head_tokens
            .iter()
            .find(|&&id| id as usize >= config.vocab_size)
        {
            return Err(ModelError::Weights(format!(
                "scoring token id {id} is outside the vocabulary of {}",
                config.vocab_size
            )));
        }
        let (device, dtype) = (vb.device().clone(), vb.dtype());
        let model = vb.pp("model");
        let embed_tokens = candle_nn::embedding(
            config.vocab_size,
            config.hidden_size,
            model.pp("embed_tokens").set_dtype(gemm.weight_dtype(dtype)),
        )
        .map_err(weights)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::load(config, model.pp("layers").pp(i), gemm))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(weights)?;
        let final_norm = candle_nn::rms_norm(
            config.hidden_size,
            config.rms_norm_eps,
            vb.set_dtype(DType::F32).pp("model").pp("norm"),
        )
        .map_err(weights)?;
        let head = if config.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let head_rows = head_tokens
            .iter()
            .map(|&id| tensors.read_row(head, id as usize))
            .collect::<candle_core::Result<Vec<_>>>()
            .and_then(|rows| Tensor::stack(&rows, 0))
            .and_then(|rows| rows.to_device(&device))
            .map_err(weights)?;
        Ok(Qwen3Scorer {
            embed_tokens,
            layers,
            final_norm,
            head_rows,
            // Tables built on the device at load: a failure there is the device's.
            rotary: Rotary::new(config, dtype, &device)
                .map_err(|err| ModelError::Device(err.to_string()))?,
            causal_block: causal_mask(QUERY_CHUNK, dtype, &device)
                .map_err(|err| ModelError::Device(err.to_string()))?,
            kernels: Kernels::new(&device, dtype, gemm),
            device,
            dtype,
            max_length: config.max_position_embeddings,
        })
    }

    /// The logit margin of each packed sequence, in the packing's input order:
    /// `logit[true] - logit[false]`, or `logit[true]` when the head has one token.
    pub fn logit_margins(&self, packing: &Packing) -> Result<Vec<f32>> {
        if let Some(&position) = packing.positions.iter().max()
            && position as usize >= self.max_length
        {
            return Err(ModelError::InputTooLong(format!(
                "{} tokens, the model allows {}",
                position + 1,
                self.max_length
            )));
        }
        let tokens = packing.ids.len();
        let positions = Tensor::from_slice(&packing.positions, tokens, &self.device)?;
        let pass = PassContext {
            rotation: self.rotary.at(&positions)?,
            spans: &packing.spans,
            causal_block: &self.causal_block,
            kernels: self.kernels,
        };
        let mut hidden = self
            .embed_tokens
            .forward(&Tensor::from_slice(&packing.ids, tokens, &self.device)?)?
            .to_dtype(self.dtype)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &pass)?;
        }
        let last_tokens = Tensor::from_slice(
            &packing.last_tokens,
            packing.last_tokens.len(),
            &self.device,
        )?;
        let last = hidden.index_select(&last_tokens, 0)?.to_dtype(DType::F32)?;
        let normed = self.final_norm.forward(&last)?;
        let logits = normed
            .matmul(&self.head_rows.t()?)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        Ok(logits
            .into_iter()
            .map(|row| match row.as_slice() {
                [true_logit, false_logit] => true_logit - false_logit,
                _ => row[0],
            })
            .collect())
    }
}

fn causal_mask(seq_len: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..seq_len)
        .flat_map(|i| (0..seq_len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq_len, seq_len), device)?.to_dtype(dtype)
}
