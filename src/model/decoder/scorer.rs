//! A causal LM written for scoring, not generation: one forward over a packed batch (every
//! real token once, no padding, shared prefixes once; see [`Packing`]), no KV cache, and of
//! the LM head only the rows of the scoring tokens ("Yes", or yes and no), applied to each
//! sequence's last token. The same for every architecture; the layers are theirs.

use candle_core::{DType, Device, Module, Tensor};

use candle_nn::VarBuilder;

use super::config::ModelConfig;
use super::layer::{DecoderLayer, Norm, PassContext, QUERY_CHUNK, Residual, Rotary};
use crate::model::backend::Kernels;
use crate::model::backend::LinearGemm;
use crate::model::error::{ModelError, Result};
use crate::model::packing::Packing;
use crate::model::weights::SafetensorsFiles;

/// The scoring model: embeddings, decoder layers, final norm, and the scoring tokens' head rows.
pub struct Scorer {
    embed_tokens: candle_nn::Embedding,
    /// Gemma's √hidden_size, rounded to the weights' dtype as transformers does.
    embedding_scale: Option<f64>,
    layers: Vec<DecoderLayer>,
    /// Final norm and head row in f32: the last dot product is where precision matters.
    final_norm: Norm,
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

impl Scorer {
    /// `vb` reads `tensors` at the activations' dtype and device (`gemm` may store the
    /// weights in another); the head rows are read from `tensors` alone, without the rest of
    /// the vocabulary matrix.
    pub fn load(
        config: &ModelConfig,
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
        let block = config.architecture.block();
        let (device, dtype) = (vb.device().clone(), vb.dtype());
        let weight_dtype = gemm.weight_dtype(dtype);
        let model = vb.pp("model");
        let embed_tokens = candle_nn::embedding(
            config.vocab_size,
            config.hidden_size,
            model.pp("embed_tokens").set_dtype(weight_dtype),
        )
        .map_err(weights)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::load(config, block, model.pp("layers").pp(i), gemm))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(weights)?;
        let final_norm = Norm::load(
            block.norm,
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
        let embedding_scale = match block.scaled_embeddings {
            true => Some(
                Tensor::new((config.hidden_size as f32).sqrt(), &Device::Cpu)
                    .and_then(|scale| scale.to_dtype(weight_dtype)?.to_dtype(DType::F64))
                    .and_then(|scale| scale.to_scalar::<f64>())
                    .map_err(weights)?,
            ),
            false => None,
        };
        Ok(Scorer {
            embed_tokens,
            embedding_scale,
            layers,
            final_norm,
            head_rows,
            // Tables built on the device at load: a failure there is the device's.
            rotary: Rotary::new(config, dtype, &device)
                .map_err(|err| ModelError::Device(err.to_string()))?,
            causal_block: causal_mask(QUERY_CHUNK, dtype, &device)
                .map_err(|err| ModelError::Device(err.to_string()))?,
            kernels: Kernels::new(&device, dtype, gemm.multiplies_bf16()),
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
        let mut hidden =
            self.embed_tokens
                .forward(&Tensor::from_slice(&packing.ids, tokens, &self.device)?)?;
        if let Some(scale) = self.embedding_scale {
            hidden = hidden.affine(scale, 0.0)?;
        }
        let mut hidden = Residual {
            sum: hidden.to_dtype(self.dtype)?,
            pending: None,
        };
        for layer in &self.layers {
            hidden = layer.forward(hidden, &pass)?;
        }
        let last_tokens = Tensor::from_slice(
            &packing.last_tokens,
            packing.last_tokens.len(),
            &self.device,
        )?;
        let last = hidden.rows(&last_tokens)?.to_dtype(DType::F32)?;
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
