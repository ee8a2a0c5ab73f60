//! Encoder cross-encoders: a bidirectional transformer reads the pair as one sequence and a
//! classification head turns one pooled vector into one logit. BERT and the RoBERTa family
//! share `bert.rs`; ModernBERT has `modernbert.rs`. What they share is here: the config
//! dispatch, the refusal of more than one label, attention within each packed pair, and the
//! pooling.
//!
//! Packed as the decoders are (every real token once, no padding; see
//! [`Packing`](super::packing::Packing)), without prefix sharing: a query's hidden states
//! depend on the document after it, so a request's pairs have nothing in common to share.

mod bert;
mod modernbert;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::backend::{Kernels, LinearGemm, Mask, attend};
use super::checkpoint::Architecture;
use super::error::{ModelError, Result, invalid_config};
use super::packing::{Packing, Span};

/// An encoder checkpoint's settled `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum EncoderConfig {
    Bert(bert::BertConfig),
    ModernBert(modernbert::ModernBertConfig),
}

/// The fields of `config.json` every encoder reads for its head.
#[derive(Deserialize)]
struct Labels {
    #[serde(default)]
    id2label: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    num_labels: Option<usize>,
}

impl EncoderConfig {
    pub fn from_value(architecture: Architecture, value: serde_json::Value) -> Result<Self> {
        let fields =
            |err: serde_json::Error| invalid_config(format!("not a {architecture} config: {err}"));
        let labels: Labels = serde_json::from_value(value.clone()).map_err(fields)?;
        // transformers' own default is two labels (a softmax over classes).
        let num_labels = labels
            .id2label
            .map(|labels| labels.len())
            .or(labels.num_labels)
            .unwrap_or(2);
        if num_labels != 1 {
            return Err(ModelError::UnsupportedConfig(format!(
                "{architecture} with {num_labels} labels: a reranker's head has one logit per pair \
                 (num_labels 1); a multi-class classifier's scores are not relevance scores"
            )));
        }
        match architecture {
            Architecture::ModernBert => {
                serde_json::from_value::<modernbert::ModernBertConfig>(value)
                    .map_err(fields)?
                    .settle()
                    .map(EncoderConfig::ModernBert)
            }
            _ => serde_json::from_value::<bert::BertConfig>(value)
                .map_err(fields)?
                .settle(architecture)
                .map(EncoderConfig::Bert),
        }
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            EncoderConfig::Bert(config) => config.architecture,
            EncoderConfig::ModernBert(_) => Architecture::ModernBert,
        }
    }

    /// The longest sequence its positions cover.
    pub fn max_positions(&self) -> usize {
        match self {
            EncoderConfig::Bert(config) => config.max_positions(),
            EncoderConfig::ModernBert(config) => config.max_position_embeddings,
        }
    }

    pub fn num_hidden_layers(&self) -> usize {
        match self {
            EncoderConfig::Bert(config) => config.num_hidden_layers,
            EncoderConfig::ModernBert(config) => config.num_hidden_layers,
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            EncoderConfig::Bert(config) => config.hidden_size,
            EncoderConfig::ModernBert(config) => config.hidden_size,
        }
    }
}

/// A loaded encoder with its classification head.
pub struct CrossEncoder {
    model: EncoderModel,
    max_positions: usize,
}

enum EncoderModel {
    Bert(bert::Bert),
    ModernBert(modernbert::ModernBert),
}

impl CrossEncoder {
    /// `separator`: the token that ends the query in a pair, where token types start over
    /// (BERT's `[SEP]`).
    pub fn load(
        config: &EncoderConfig,
        vb: VarBuilder,
        gemm: &LinearGemm,
        separator: Option<u32>,
    ) -> Result<Self> {
        let model = match config {
            EncoderConfig::Bert(config) => {
                bert::Bert::load(config, vb, gemm, separator).map(EncoderModel::Bert)
            }
            EncoderConfig::ModernBert(config) => {
                modernbert::ModernBert::load(config, vb, gemm).map(EncoderModel::ModernBert)
            }
        };
        Ok(CrossEncoder {
            model: model.map_err(|err| ModelError::Weights(err.to_string()))?,
            max_positions: config.max_positions(),
        })
    }

    /// One logit per packed sequence, in input order.
    pub fn logits(&self, packing: &Packing) -> Result<Vec<f32>> {
        if let Some(&position) = packing.positions.iter().max()
            && position as usize >= self.max_positions
        {
            return Err(ModelError::InputTooLong(format!(
                "{} tokens, the model allows {}",
                position + 1,
                self.max_positions
            )));
        }
        let logits = match &self.model {
            EncoderModel::Bert(model) => model.forward(packing)?,
            EncoderModel::ModernBert(model) => model.forward(packing)?,
        };
        Ok(logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

/// Queries attended at once: bounds the score matrix to heads × 512 × length (bge-reranker-v2-m3
/// takes 8,192 tokens a pair).
const QUERY_CHUNK: usize = 512;

/// Multi-head self-attention of each span over itself only, both directions: `q`, `k`, `v`
/// are head-major (heads, tokens, head_dim) over all packed tokens, in the attention
/// matmuls' dtype; `window`: a key further than this from its query is not seen
/// (ModernBERT's local layers). Returns (tokens, heads × head_dim).
fn attend_within_spans(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    spans: &[Span],
    window: Option<usize>,
    (gemm, kernels): (&LinearGemm, Kernels),
) -> candle_core::Result<Tensor> {
    if kernels.cpu_f32 && gemm.fuses_attention() {
        return attend((q, k, v), spans, Mask::Bidirectional { window }, gemm);
    }
    let (heads, _, head_dim) = q.dims3()?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let outputs = spans
        .iter()
        .flat_map(|span| {
            let (start, len) = (span.tokens.start, span.tokens.len());
            (0..len).step_by(QUERY_CHUNK).map(move |first| {
                let count = QUERY_CHUNK.min(len - first);
                let queries = q.narrow(1, start + first, count)?;
                let scores = gemm.matmul(&queries, &k.narrow(1, start, len)?.t()?)?;
                let probs = kernels.bidirectional_softmax(&scores, scale, first, window)?;
                gemm.matmul(&probs, &v.narrow(1, start, len)?)?
                    .transpose(0, 1)?
                    .reshape((count, heads * head_dim))
            })
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&outputs, 0)
}

/// How a sequence's hidden states become the one vector its head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's (`[CLS]`, `<s>`).
    First,
    /// The mean over the sequence's tokens.
    Mean,
}

impl Pooling {
    /// (sequences, hidden) of packed hidden states (tokens, hidden); spans in input order.
    fn pool(self, hidden: &Tensor, spans: &[Span]) -> candle_core::Result<Tensor> {
        let rows = spans
            .iter()
            .map(|span| match self {
                Pooling::First => hidden.narrow(0, span.tokens.start, 1),
                Pooling::Mean => hidden
                    .narrow(0, span.tokens.start, span.tokens.len())?
                    .mean_keepdim(0),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::model::backend::testing::{attention_reference, max_abs_diff};

    #[test]
    fn attention_in_query_chunks_equals_one_matmul_with_and_without_a_window() {
        let len = 2 * QUERY_CHUNK + 37;
        let random = || Tensor::randn(0f32, 1.0, (2, len, 8), &Device::Cpu).unwrap();
        let (q, k, v) = (random(), random(), random());
        let span = [Span {
            tokens: 0..len,
            context: None,
        }];
        let on_cpu = Kernels::new(&Device::Cpu, candle_core::DType::F32, false);
        for window in [None, Some(64)] {
            let chunked =
                attend_within_spans((&q, &k, &v), &span, window, (&LinearGemm::Candle, on_cpu))
                    .unwrap();
            let whole = attention_reference((&q, &k, &v), &span, Mask::Bidirectional { window });
            assert!(max_abs_diff(&chunked, &whole) < 1e-5, "{window:?}");
        }
    }
}
