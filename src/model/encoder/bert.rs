//! BERT (ms-marco-MiniLM) and the RoBERTa family (XLM-RoBERTa: bge-reranker-base/large,
//! bge-reranker-v2-m3): post-norm layers of attention and a GELU MLP over word, position and
//! token-type embeddings. They differ in the weights' prefix, in where positions start, in
//! token types, and in the head:
//!
//! - BERT: token type 1 from the token after the query's `[SEP]`; positions from 0; the
//!   pooler (dense + tanh on `[CLS]`), then `classifier`.
//! - RoBERTa, XLM-RoBERTa: one token type; positions from `pad_token_id + 1`, as
//!   transformers numbers the tokens that are not padding; `classifier.dense` + tanh on
//!   `<s>`, then `classifier.out_proj`.

use candle_core::{D, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

use super::{Pooling, attend_within_spans};
use crate::model::backend::{Gelu, Kernels, Linear, LinearGemm};
use crate::model::checkpoint::Architecture;
use crate::model::error::{ModelError, Result};
use crate::model::packing::Packing;

/// `config.json` of a `BertForSequenceClassification` or a RoBERTa one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    #[serde(skip, default = "bert")]
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn bert() -> Architecture {
    Architecture::Bert
}

fn gelu() -> String {
    "gelu".into()
}

fn two() -> usize {
    2
}

fn bert_eps() -> f64 {
    1e-12
}

impl BertConfig {
    pub fn settle(mut self, architecture: Architecture) -> Result<Self> {
        self.architecture = architecture;
        if let Some(kind) = self.position_embedding_type.as_deref()
            && kind != "absolute"
        {
            return Err(ModelError::UnsupportedConfig(format!(
                "position_embedding_type `{kind}` (only absolute)"
            )));
        }
        if !matches!(
            self.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return Err(ModelError::UnsupportedConfig(format!(
                "hidden_act `{}` (only gelu, gelu_new or gelu_pytorch_tanh)",
                self.hidden_act
            )));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(ModelError::UnsupportedConfig(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.is_roberta() && self.pad_token_id.is_none() {
            return Err(ModelError::UnsupportedConfig(format!(
                "{architecture} without pad_token_id: its positions start after it"
            )));
        }
        Ok(self)
    }

    fn is_roberta(&self) -> bool {
        self.architecture != Architecture::Bert
    }

    /// The first position's index: RoBERTa's count from `pad_token_id + 1`.
    fn position_offset(&self) -> usize {
        match self.is_roberta() {
            true => self.pad_token_id.map_or(0, |pad| pad as usize + 1),
            false => 0,
        }
    }

    /// The longest sequence: the position table less RoBERTa's offset (514 rows hold 512).
    pub fn max_positions(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }
}

/// Attention, then the MLP, each added back and layer-normed (post-norm).
struct Layer {
    /// query, key and value stacked: (3 × hidden, hidden).
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(config: &BertConfig, vb: VarBuilder, gemm: &LinearGemm) -> candle_core::Result<Self> {
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        let linear = |i, o, vb: VarBuilder| Linear::load(i, o, true, vb, gemm);
        let norm = |vb: VarBuilder| candle_nn::layer_norm(hidden, config.layer_norm_eps, vb);
        let attention = vb.pp("attention");
        let projections = ["query", "key", "value"].map(|name| attention.pp("self").pp(name));
        Ok(Layer {
            qkv: Linear::load_stacked(hidden, &[hidden; 3], true, &projections, gemm)?,
            attention_out: linear(hidden, hidden, attention.pp("output").pp("dense"))?,
            attention_norm: norm(attention.pp("output").pp("LayerNorm"))?,
            intermediate: linear(hidden, inner, vb.pp("intermediate").pp("dense"))?,
            output: linear(inner, hidden, vb.pp("output").pp("dense"))?,
            output_norm: norm(vb.pp("output").pp("LayerNorm"))?,
        })
    }

    /// Each projection's bias is added by the kernel after it.
    fn forward(&self, x: &Tensor, model: &Bert, packing: &Packing) -> candle_core::Result<Tensor> {
        let kernels = model.kernels;
        let qkv = kernels.split_heads(&self.qkv.product(x)?, self.qkv.bias(), 3, model.heads)?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let attended =
            attend_within_spans((&q, &k, &v), &packing.spans, None, (&model.gemm, kernels))?;
        let x = kernels.add_layer_norm(
            &self.attention_out.product(&attended)?,
            self.attention_out.bias(),
            x,
            &self.attention_norm,
        )?;
        let inner = kernels.bias_gelu(
            &self.intermediate.product(&x)?,
            self.intermediate.bias(),
            model.gelu,
        )?;
        kernels.add_layer_norm(
            &self.output.product(&inner)?,
            self.output.bias(),
            &x,
            &self.output_norm,
        )
    }
}

/// A BERT or RoBERTa sequence classifier.
pub struct Bert {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    /// BERT's pooler or RoBERTa's `classifier.dense`, both followed by tanh.
    pooler: Linear,
    classifier: Linear,
    heads: usize,
    gelu: Gelu,
    position_offset: u32,
    /// BERT's `[SEP]`: the second token type starts after its first one.
    separator: Option<u32>,
    gemm: LinearGemm,
    kernels: Kernels,
}

impl Bert {
    pub fn load(
        config: &BertConfig,
        vb: VarBuilder,
        gemm: &LinearGemm,
        separator: Option<u32>,
    ) -> candle_core::Result<Self> {
        let hidden = config.hidden_size;
        let (body, pooler, classifier) = match config.is_roberta() {
            true => (
                vb.pp("roberta"),
                vb.pp("classifier").pp("dense"),
                vb.pp("classifier").pp("out_proj"),
            ),
            false => (
                vb.pp("bert"),
                vb.pp("bert").pp("pooler").pp("dense"),
                vb.pp("classifier"),
            ),
        };
        let embeddings = body.pp("embeddings");
        let table = |rows, name| candle_nn::embedding(rows, hidden, embeddings.pp(name));
        // The vocabulary (XLM-R's 250k rows) in the weights' dtype: bf16 halves it.
        let words = embeddings
            .pp("word_embeddings")
            .set_dtype(gemm.weight_dtype(vb.dtype()));
        Ok(Bert {
            word_embeddings: candle_nn::embedding(config.vocab_size, hidden, words)?,
            position_embeddings: table(config.max_position_embeddings, "position_embeddings")?,
            token_type_embeddings: table(config.type_vocab_size, "token_type_embeddings")?,
            embedding_norm: candle_nn::layer_norm(
                hidden,
                config.layer_norm_eps,
                embeddings.pp("LayerNorm"),
            )?,
            layers: (0..config.num_hidden_layers)
                .map(|i| Layer::load(config, body.pp("encoder").pp("layer").pp(i), gemm))
                .collect::<candle_core::Result<_>>()?,
            pooler: Linear::load(hidden, hidden, true, pooler, gemm)?,
            classifier: Linear::load(hidden, 1, true, classifier, gemm)?,
            heads: config.num_attention_heads,
            gelu: match config.hidden_act.as_str() {
                "gelu" => Gelu::Erf,
                _ => Gelu::Tanh,
            },
            position_offset: config.position_offset() as u32,
            separator: separator.filter(|_| !config.is_roberta() && config.type_vocab_size > 1),
            gemm: gemm.clone(),
            kernels: Kernels::new(vb.device(), vb.dtype(), gemm.multiplies_bf16()),
        })
    }

    /// Token type of each packed token: 0 up to the first separator of its sequence, 1
    /// after it (what the tokenizer's pair template gives the document and its `[SEP]`).
    fn token_types(&self, packing: &Packing) -> Vec<u32> {
        let mut types = vec![0; packing.ids.len()];
        let Some(separator) = self.separator else {
            return types;
        };
        for span in &packing.spans {
            let ids = &packing.ids[span.tokens.clone()];
            if let Some(first) = ids.iter().position(|&id| id == separator) {
                types[span.tokens.start + first + 1..span.tokens.end].fill(1);
            }
        }
        types
    }

    /// (sequences, 1) logits.
    pub fn forward(&self, packing: &Packing) -> candle_core::Result<Tensor> {
        let device = self.word_embeddings.embeddings().device();
        let tokens = packing.ids.len();
        let ids = Tensor::from_slice(&packing.ids, tokens, device)?;
        let positions: Vec<u32> = packing
            .positions
            .iter()
            .map(|p| p + self.position_offset)
            .collect();
        let positions = Tensor::from_vec(positions, tokens, device)?;
        let types = Tensor::from_vec(self.token_types(packing), tokens, device)?;
        let words = self.word_embeddings.forward(&ids)?;
        let positions = self.position_embeddings.forward(&positions)?;
        let embedded = (words.to_dtype(positions.dtype())? + positions)?
            .add(&self.token_type_embeddings.forward(&types)?)?;
        let mut hidden = self.embedding_norm.forward(&embedded)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, self, packing)?;
        }
        let first = Pooling::First.pool(&hidden, &packing.spans)?;
        let pooled = self.pooler.forward(&first)?.tanh()?;
        self.classifier.forward(&pooled)?.squeeze(D::Minus1)
    }
}
