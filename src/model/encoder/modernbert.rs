//! ModernBERT (gte-reranker-modernbert-base): pre-norm layers without biases, rotary
//! positions, GeGLU, and attention that alternates between global (every
//! `global_attn_every_n_layers`-th layer, from the first, rotary θ `global_rope_theta`) and a
//! sliding window of `local_attention` tokens (θ `local_rope_theta`). The first layer has no
//! attention norm (the embeddings' norm precedes it); a final norm closes the stack. The head
//! pools (`classifier_pooling`: `cls` or `mean`), then dense → GELU → norm → classifier.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

use super::{Pooling, attend_within_spans};
use crate::model::backend::{Gelu, Kernels, Linear, LinearGemm};
use crate::model::error::{ModelError, Result};
use crate::model::packing::Packing;

/// `config.json` of a `ModernBertForSequenceClassification`: the released checkpoints' keys
/// (`global_rope_theta`, `global_attn_every_n_layers`) or newer transformers'
/// (`rope_parameters`, `layer_types`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModernBertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "norm_eps")]
    norm_eps: f64,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    classifier_bias: bool,
    #[serde(default = "gelu")]
    hidden_activation: String,
    #[serde(default = "gelu")]
    classifier_activation: String,
    #[serde(default = "cls")]
    classifier_pooling: String,
    #[serde(default = "local_attention")]
    local_attention: usize,
    #[serde(default = "every_third")]
    global_attn_every_n_layers: usize,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default = "global_theta")]
    global_rope_theta: f64,
    #[serde(default = "local_theta")]
    local_rope_theta: f64,
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct RopeParameters {
    full_attention: Option<Theta>,
    sliding_attention: Option<Theta>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Theta {
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_type: Option<String>,
}

fn max_positions() -> usize {
    8192
}
fn norm_eps() -> f64 {
    1e-5
}
fn gelu() -> String {
    "gelu".into()
}
fn cls() -> String {
    "cls".into()
}
fn local_attention() -> usize {
    128
}
fn every_third() -> usize {
    3
}
fn global_theta() -> f64 {
    160_000.0
}
fn local_theta() -> f64 {
    10_000.0
}

impl ModernBertConfig {
    pub fn settle(mut self) -> Result<Self> {
        for act in [&self.hidden_activation, &self.classifier_activation] {
            if act != "gelu" {
                return Err(ModelError::UnsupportedConfig(format!(
                    "ModernBERT activation `{act}` (only gelu)"
                )));
            }
        }
        if !matches!(self.classifier_pooling.as_str(), "cls" | "mean") {
            return Err(ModelError::UnsupportedConfig(format!(
                "classifier_pooling `{}` (only cls or mean)",
                self.classifier_pooling
            )));
        }
        if self.num_attention_heads == 0
            || !(self.hidden_size / self.num_attention_heads).is_multiple_of(2)
        {
            return Err(ModelError::UnsupportedConfig(format!(
                "hidden_size {} over {} heads is not an even head size",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if let Some(rope) = self.rope_parameters.take() {
            for (theta, into) in [
                (rope.full_attention, &mut self.global_rope_theta),
                (rope.sliding_attention, &mut self.local_rope_theta),
            ] {
                let Some(theta) = theta else { continue };
                if let Some(kind) = theta.rope_type.filter(|k| k != "default") {
                    return Err(ModelError::UnsupportedConfig(format!(
                        "rope type `{kind}` (only default)"
                    )));
                }
                *into = theta.rope_theta.unwrap_or(*into);
            }
        }
        let every = self.global_attn_every_n_layers.max(1);
        let layer_types = self.layer_types.get_or_insert_with(|| {
            (0..self.num_hidden_layers)
                .map(|i| match i % every {
                    0 => "full_attention".to_owned(),
                    _ => "sliding_attention".to_owned(),
                })
                .collect()
        });
        if layer_types.len() != self.num_hidden_layers
            || layer_types
                .iter()
                .any(|t| t != "full_attention" && t != "sliding_attention")
        {
            return Err(ModelError::UnsupportedConfig(format!(
                "layer_types {layer_types:?} for {} layers",
                self.num_hidden_layers
            )));
        }
        Ok(self)
    }

    /// Half the local window for a sliding layer (a key further than this from its query is
    /// not seen), `None` for a global one.
    pub fn attention_window(&self, layer: usize) -> Option<usize> {
        let sliding = self.layer_types.as_ref().expect("settled")[layer] == "sliding_attention";
        sliding.then_some(self.local_attention / 2)
    }
}

/// Rotary tables of one θ for positions `0..max_len`: (max_len, head_dim / 2) each.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(
        theta: f64,
        head_dim: usize,
        max_len: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?;
        let positions = Tensor::arange(0u32, max_len as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_len, 1))?;
        let freqs = positions.broadcast_mul(&inv_freq)?;
        Ok(Rotary {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    /// The rotation of each packed token: (cos, sin) rows, (tokens, head_dim / 2) each.
    fn at(&self, positions: &Tensor, dtype: DType) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?.to_dtype(dtype)?,
            self.sin.index_select(positions, 0)?.to_dtype(dtype)?,
        ))
    }
}

/// What every layer of one forward pass shares: the packing and each θ's rotation of its
/// tokens.
struct Pass<'a> {
    packing: &'a Packing,
    global: (Tensor, Tensor),
    local: (Tensor, Tensor),
}

struct Layer {
    /// None on the first layer: the embeddings' norm comes right before it.
    attention_norm: Option<LayerNorm>,
    qkv: Linear,
    attention_out: Linear,
    mlp_norm: LayerNorm,
    /// Input and gate halves, in that order.
    mlp_in: Linear,
    mlp_out: Linear,
    /// Half the local window, for sliding layers.
    window: Option<usize>,
}

fn layer_norm(config: &ModernBertConfig, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    let weight = vb.get(config.hidden_size, "weight")?;
    Ok(match config.norm_bias {
        true => LayerNorm::new(weight, vb.get(config.hidden_size, "bias")?, config.norm_eps),
        false => LayerNorm::new_no_bias(weight, config.norm_eps),
    })
}

impl Layer {
    fn load(
        config: &ModernBertConfig,
        index: usize,
        vb: VarBuilder,
        gemm: &LinearGemm,
    ) -> candle_core::Result<Self> {
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        Ok(Layer {
            attention_norm: (index > 0)
                .then(|| layer_norm(config, vb.pp("attn_norm")))
                .transpose()?,
            qkv: Linear::load(
                hidden,
                3 * hidden,
                config.attention_bias,
                vb.pp("attn").pp("Wqkv"),
                gemm,
            )?,
            attention_out: Linear::load(
                hidden,
                hidden,
                config.attention_bias,
                vb.pp("attn").pp("Wo"),
                gemm,
            )?,
            mlp_norm: layer_norm(config, vb.pp("mlp_norm"))?,
            mlp_in: Linear::load(
                hidden,
                2 * inner,
                config.mlp_bias,
                vb.pp("mlp").pp("Wi"),
                gemm,
            )?,
            mlp_out: Linear::load(inner, hidden, config.mlp_bias, vb.pp("mlp").pp("Wo"), gemm)?,
            window: config.attention_window(index),
        })
    }

    fn forward(&self, x: &Tensor, model: &ModernBert, pass: &Pass) -> candle_core::Result<Tensor> {
        let kernels = model.kernels;
        let normed = match &self.attention_norm {
            Some(norm) => norm.forward(x)?,
            None => x.clone(),
        };
        let tokens = x.dim(0)?;
        let qkv = self
            .qkv
            .forward(&normed)?
            .reshape((tokens, 3, model.heads, ()))?;
        let (cos, sin) = match self.window {
            Some(_) => &pass.local,
            None => &pass.global,
        };
        let part = |index| qkv.narrow(1, index, 1)?.squeeze(1);
        let q = kernels.rope_head_major(&part(0)?, None, (cos, sin))?;
        let k = kernels.rope_head_major(&part(1)?, None, (cos, sin))?;
        let v = kernels.head_major(&part(2)?)?;
        let attended = attend_within_spans(
            (&q, &k, &v),
            &pass.packing.spans,
            self.window,
            (&model.gemm, kernels),
        )?;
        let x = kernels.add(x, &self.attention_out.forward(&attended)?)?;
        let inner = self.mlp_in.forward(&self.mlp_norm.forward(&x)?)?;
        let half = inner.dim(D::Minus1)? / 2;
        let gated = kernels.geglu(
            &inner.narrow(D::Minus1, 0, half)?,
            &inner.narrow(D::Minus1, half, half)?,
            Gelu::Erf,
        )?;
        kernels.add(&x, &self.mlp_out.forward(&gated)?)
    }
}

/// A ModernBERT sequence classifier.
pub struct ModernBert {
    embeddings: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    pooling: Pooling,
    head_dense: Linear,
    head_norm: LayerNorm,
    classifier: Linear,
    global_rotary: Rotary,
    local_rotary: Rotary,
    heads: usize,
    gemm: LinearGemm,
    kernels: Kernels,
    /// Of the activations (the embedding table may be stored in another).
    dtype: DType,
}

impl ModernBert {
    pub fn load(
        config: &ModernBertConfig,
        vb: VarBuilder,
        gemm: &LinearGemm,
    ) -> candle_core::Result<Self> {
        let hidden = config.hidden_size;
        let model = vb.pp("model");
        let head_dim = hidden / config.num_attention_heads;
        let rotary =
            |theta| Rotary::new(theta, head_dim, config.max_position_embeddings, vb.device());
        Ok(ModernBert {
            // The vocabulary in the weights' dtype: bf16 halves it.
            embeddings: candle_nn::embedding(
                config.vocab_size,
                hidden,
                model
                    .pp("embeddings")
                    .pp("tok_embeddings")
                    .set_dtype(gemm.weight_dtype(vb.dtype())),
            )?,
            dtype: vb.dtype(),
            embedding_norm: layer_norm(config, model.pp("embeddings").pp("norm"))?,
            layers: (0..config.num_hidden_layers)
                .map(|i| Layer::load(config, i, model.pp("layers").pp(i), gemm))
                .collect::<candle_core::Result<_>>()?,
            final_norm: layer_norm(config, model.pp("final_norm"))?,
            pooling: match config.classifier_pooling.as_str() {
                "mean" => Pooling::Mean,
                _ => Pooling::First,
            },
            head_dense: Linear::load(
                hidden,
                hidden,
                config.classifier_bias,
                vb.pp("head").pp("dense"),
                gemm,
            )?,
            head_norm: layer_norm(config, vb.pp("head").pp("norm"))?,
            classifier: Linear::load(hidden, 1, true, vb.pp("classifier"), gemm)?,
            global_rotary: rotary(config.global_rope_theta)?,
            local_rotary: rotary(config.local_rope_theta)?,
            heads: config.num_attention_heads,
            gemm: gemm.clone(),
            kernels: Kernels::new(vb.device(), vb.dtype(), gemm.multiplies_bf16()),
        })
    }

    /// (sequences, 1) logits.
    pub fn forward(&self, packing: &Packing) -> candle_core::Result<Tensor> {
        let device = self.embeddings.embeddings().device();
        let tokens = packing.ids.len();
        let ids = Tensor::from_slice(&packing.ids, tokens, device)?;
        let positions = Tensor::from_slice(&packing.positions, tokens, device)?;
        let embedded = self.embeddings.forward(&ids)?.to_dtype(self.dtype)?;
        let mut hidden = self.embedding_norm.forward(&embedded)?;
        let pass = Pass {
            packing,
            global: self.global_rotary.at(&positions, self.dtype)?,
            local: self.local_rotary.at(&positions, self.dtype)?,
        };
        for layer in &self.layers {
            hidden = layer.forward(&hidden, self, &pass)?;
        }
        let hidden = self.final_norm.forward(&hidden)?;
        let pooled = self.pooling.pool(&hidden, &packing.spans)?;
        let head = self
            .head_norm
            .forward(&self.head_dense.forward(&pooled)?.gelu_erf()?)?;
        self.classifier.forward(&head)?.squeeze(D::Minus1)
    }
}
