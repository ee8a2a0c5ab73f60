//! The model layer: a reranker checkpoint loaded once, turning pairs into token ids (its
//! [`Engine::encoder`]) and batches of ids into scores ([`Engine::score_batch`]).
//!
//! Rooms: `checkpoint/` (what the checkpoint says and how pairs become ids, nothing of the
//! network), a room per model family (`decoder/`: the causal-LM rerankers, their configs,
//! layers and scoring forward; `encoder/`: the encoder cross-encoders, BERT, RoBERTa,
//! XLM-RoBERTa and ModernBERT), and `backend/` (device, dtype, matmuls and kernels); here,
//! what every family shares (the engine, packing, batches, the weight files, the networks'
//! matrix shapes that benchmarks count FLOPs from).

mod backend;
mod batch;
mod checkpoint;
mod decoder;
mod encoder;
mod error;
mod packing;
mod precision;
mod shape;
mod weights;

use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

pub use backend::{Blas, CpuFeatures, CpuLibrary, DTypeSpec, DeviceSpec, LinearGemm, matmul_time};
pub use batch::{BatchBudget, plan_batches};
pub use checkpoint::{
    Architecture, Calibration, CheckpointFiles, Chunking, DOCUMENT_CHAR_LIMIT, EncodedPair,
    ModelSource, PromptEncoder, QUERY_CHAR_LIMIT, RecipeChoice, TokenLimits, TruncationDirection,
    Window, cut_and_strip,
};
pub use decoder::{ModelConfig, NetworkConfig};
pub use error::{ModelError, Result};
pub use shape::{AttentionReach, NetworkShape};

use checkpoint::{PromptFiles, Recipe};
use decoder::Scorer;
use encoder::CrossEncoder;
use packing::Packing;
use precision::Precision;
use weights::SafetensorsFiles;

/// One pair's relevance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// `sigmoid(margin / temperature)`, in (0, 1).
    pub score: f32,
    /// What the model's reference returns unscaled: `margin / 5` for zerank-1 (its published
    /// raw score), the margin itself otherwise (Sentence Transformers' `predict` without
    /// activation).
    pub raw: f32,
    /// `logit[true] - logit[false]`, or `logit[true]` when the head has one token, or an
    /// encoder classifier's logit.
    pub margin: f32,
}

impl Score {
    pub fn new(margin: f32, calibration: Calibration) -> Self {
        Score {
            score: 1.0 / (1.0 + (-margin / calibration.temperature).exp()),
            raw: margin / calibration.raw_divisor,
            margin,
        }
    }
}

/// What the warm-up ran and measured.
#[derive(Debug, Clone, Copy)]
pub struct WarmUp {
    pub pairs: usize,
    pub tokens_each: usize,
    /// The tokens the forward computed (after prefix sharing).
    pub computed_tokens: usize,
    /// The measured run's time.
    pub seconds: f64,
}

impl WarmUp {
    pub fn tokens(&self) -> usize {
        self.pairs * self.tokens_each
    }
}

/// A batch's scores, in its order.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredBatch {
    pub scores: Vec<Score>,
    /// Tokens the forward pass computed: packed without padding, a shared prefix once.
    pub computed_tokens: usize,
}

/// What to load and where to run it.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A local checkpoint directory or a Hub id.
    pub model: String,
    pub revision: Option<String>,
    pub device: DeviceSpec,
    pub dtype: DTypeSpec,
    /// Cap on prompt length in tokens; the model's own limit when `None`.
    pub max_length: Option<usize>,
    /// Compute a prefix that sequences of one batch share (a request's query) once.
    pub prefix_sharing: bool,
    /// The CPU's f32 matmul.
    pub cpu_blas: CpuLibrary,
    /// The CPU's bf16 matmul under bf16 (MKL or oneDNN).
    pub cpu_bf16_gemm: CpuLibrary,
    /// How pairs become prompts and logits become scores.
    pub recipe: RecipeChoice,
    /// `score = sigmoid(margin / score_temperature)`; the recipe's convention when `None`.
    pub score_temperature: Option<f32>,
    /// Used when a request brings no instruction; the checkpoint's default prompt when `None`.
    pub instruction: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            model: String::new(),
            revision: None,
            device: DeviceSpec::default(),
            dtype: DTypeSpec::default(),
            max_length: None,
            prefix_sharing: true,
            cpu_blas: CpuLibrary::default(),
            cpu_bf16_gemm: CpuLibrary::default(),
            recipe: RecipeChoice::default(),
            score_temperature: None,
            instruction: None,
        }
    }
}

/// What was loaded, for `/info` and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub model: String,
    pub revision: Option<String>,
    pub device: String,
    pub dtype: String,
    /// Why this dtype: as set, or what `auto` found (the CPU's bf16 instructions, a library).
    pub dtype_choice: String,
    pub max_length: usize,
    /// The checkpoint's network, as transformers names it (`Qwen3ForCausalLM`,
    /// `BertForSequenceClassification`, ...).
    pub architecture: &'static str,
    pub num_layers: usize,
    pub hidden_size: usize,
    /// `zerank`, `sentence-transformers`, `qwen3-reranker`, `bge-gemma`, `mxbai-rerank`, or
    /// `cross-encoder` (an encoder's classifier).
    pub recipe: &'static str,
    /// The head token whose logit scores relevance ("Yes", "yes"); none for an encoder,
    /// whose classifier has one logit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub true_token_id: Option<u32>,
    /// The token whose logit is subtracted ("no"), when the recipe has one.
    pub false_token_id: Option<u32>,
    pub calibration: Calibration,
    /// An encoder's Sentence Transformers `activation_fn`: what `CrossEncoder.predict` applies
    /// to the logit (score is its sigmoid whatever this says; raw is the logit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    /// Whether requests may bring an `instruction`.
    pub accepts_instruction: bool,
    pub default_instruction: Option<String>,
    /// `/info` has always called it `share_prefixes`; clients read that key. Always off for an
    /// encoder: its query reads the document after it, so pairs share nothing.
    #[serde(rename = "share_prefixes")]
    pub prefix_sharing: bool,
    /// What runs the linear layers' matmuls: a BLAS library, oneDNN's bf16 GEMM, widened
    /// bf16 weights, or candle's gemm.
    pub matmul: String,
    /// The CPU's model and the instructions its matmuls can use (on the CPU only).
    pub cpu: Option<CpuFeatures>,
}

/// A loaded reranker checkpoint.
pub struct Engine {
    encoder: PromptEncoder,
    network: Network,
    info: ModelInfo,
}

/// What turns a packed batch into logits.
enum Network {
    /// A causal LM, read at its scoring tokens' head rows.
    Decoder(Scorer),
    /// An encoder with a one-logit classifier.
    Encoder(CrossEncoder),
}

impl Engine {
    pub fn load(options: &LoadOptions) -> Result<Self> {
        // The device and dtype first: a combination that cannot run is refused before a
        // download.
        let (device, device_spec) = options.device.open()?;
        let cpu = device.is_cpu().then(CpuFeatures::detect);
        if device.is_cpu() {
            crate::keep_freed_memory();
        }
        let features = cpu.clone().unwrap_or_default();
        let source = ModelSource::parse(&options.model, options.revision.as_deref())?;
        let files = source.locate()?;
        let config = NetworkConfig::from_file(&files.config)?;
        let architecture = config.architecture();
        let recipe = Recipe::resolve(options.recipe, &files, architecture)?;
        let default_instruction = options
            .instruction
            .clone()
            .or_else(|| recipe.default_instruction().map(str::to_owned));
        let encoder = PromptEncoder::load(
            PromptFiles {
                tokenizer: &files.tokenizer,
                tokenizer_config: files.tokenizer_config.as_deref(),
                chat_template: files.chat_template.as_deref(),
            },
            &recipe,
            default_instruction,
            options.max_length,
            config.max_positions(),
        )?;
        let head_tokens = recipe.head_token_ids(|text| encoder.token_id(text))?;
        let Precision {
            dtype,
            activations,
            gemm,
            reason: dtype_choice,
        } = precision::choose(
            options.dtype,
            &device,
            &features,
            (&options.cpu_blas, &options.cpu_bf16_gemm),
        )?;
        // The server's "model ready" line carries it at info (`info.dtype_choice`).
        tracing::debug!(dtype = ?dtype, matmul = %gemm.description(), "{dtype_choice}");
        let network = load_weights(
            &files,
            &config,
            (&device, activations),
            (&head_tokens, encoder.pair_separator()),
            &gemm,
        )?;
        let info = ModelInfo {
            model: options.model.clone(),
            revision: options.revision.clone(),
            device: device_spec.to_string(),
            dtype: format!("{dtype:?}").to_lowercase(),
            dtype_choice,
            max_length: encoder.max_length(),
            architecture: architecture.class_name(),
            num_layers: config.num_hidden_layers(),
            hidden_size: config.hidden_size(),
            recipe: recipe.name(),
            true_token_id: head_tokens.first().copied(),
            false_token_id: head_tokens.get(1).copied(),
            calibration: recipe.calibration(options.score_temperature),
            activation: recipe.activation().map(str::to_owned),
            accepts_instruction: encoder.accepts_instruction(),
            default_instruction: encoder.default_instruction().map(str::to_owned),
            prefix_sharing: options.prefix_sharing && !architecture.is_encoder(),
            matmul: gemm.description(),
            cpu,
        };
        Ok(Engine {
            encoder,
            network,
            info,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Turns pairs into the token ids this model scores.
    pub fn encoder(&self) -> &PromptEncoder {
        &self.encoder
    }

    /// Scores of the sequences (each non-empty), run as one forward pass, with what the
    /// forward pass computed.
    pub fn score_batch(&self, sequences: &[&[u32]]) -> Result<ScoredBatch> {
        if sequences.is_empty() {
            return Ok(ScoredBatch {
                scores: Vec::new(),
                computed_tokens: 0,
            });
        }
        if sequences.iter().any(|s| s.is_empty()) {
            return Err(ModelError::Inference(
                "an empty sequence has no score".into(),
            ));
        }
        let packing = Packing::new(sequences, self.info.prefix_sharing);
        let margins = match &self.network {
            Network::Decoder(scorer) => scorer.logit_margins(&packing)?,
            Network::Encoder(model) => model.logits(&packing)?,
        };
        if let Some(bad) = margins.iter().position(|l| !l.is_finite()) {
            return Err(ModelError::Inference(format!(
                "the model produced a non-finite logit ({}) for a sequence of {} tokens",
                margins[bad],
                sequences[bad].len()
            )));
        }
        let calibration = self.info.calibration;
        Ok(ScoredBatch {
            scores: margins
                .into_iter()
                .map(|m| Score::new(m, calibration))
                .collect(),
            computed_tokens: packing.ids.len(),
        })
    }

    /// Runs a batch twice, so that a model that does not fit shows at boot rather than on
    /// the first user, and measures the second run, the rate admission starts from: on a GPU
    /// a batch that fills the budget, on a CPU one of up to 1,024 tokens in sequences of up
    /// to 128 (a batch of real traffic's shape; a full budget takes a minute there).
    pub fn warm_up(&self, budget: BatchBudget) -> Result<WarmUp> {
        const CPU_WARMUP_TOKENS: usize = 128;
        const CPU_WARMUP_BATCH_TOKENS: usize = 1_024;
        let sample = self.encoder.encode(
            "What does a reranker do?",
            "A reranker scores each retrieved document against the query.",
            None,
            TokenLimits::default(),
        )?;
        let (count, length) = if self.info.device == "cpu" {
            let length = CPU_WARMUP_TOKENS
                .min(self.info.max_length)
                .max(sample.ids.len());
            let batch_tokens = CPU_WARMUP_BATCH_TOKENS.min(budget.max_tokens);
            (
                (batch_tokens / length).clamp(1, budget.max_sequences.max(1)),
                length,
            )
        } else {
            let length = (budget.max_tokens / budget.max_sequences.max(1))
                .clamp(sample.ids.len(), self.info.max_length);
            (
                (budget.max_tokens / length).clamp(1, budget.max_sequences),
                length,
            )
        };
        let mut warm = sample.ids.clone();
        // The sample again and again: real text, and no shared prefix beyond its own.
        while warm.len() < length {
            let more = (length - warm.len()).min(sample.ids.len());
            warm.extend_from_slice(&sample.ids[..more]);
        }
        let batch = vec![warm.as_slice(); count];
        self.score_batch(&batch)?;
        let started = Instant::now();
        let scored = self.score_batch(&batch)?;
        Ok(WarmUp {
            pairs: count,
            tokens_each: length,
            computed_tokens: scored.computed_tokens,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Scores of encoded sequences, batched within `budget` in their order; `scored` gets
    /// each batch's scores as soon as it has run, so that callers can write them out and
    /// report progress, and may stop the run with an error of their own.
    pub fn score_sequences<E: From<ModelError>>(
        &self,
        sequences: &[Vec<u32>],
        budget: BatchBudget,
        mut scored: impl FnMut(&[Score]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        for batch in plan_batches(&lengths, budget) {
            let batch: Vec<&[u32]> = batch.iter().map(|&i| sequences[i].as_slice()).collect();
            scored(&self.score_batch(&batch)?.scores)?;
        }
        Ok(())
    }
}

/// `head_tokens`: a decoder's scoring tokens; `separator`: an encoder's token between query
/// and document.
fn load_weights(
    files: &CheckpointFiles,
    config: &NetworkConfig,
    (device, dtype): (&Device, DType),
    (head_tokens, separator): (&[u32], Option<u32>),
    gemm: &LinearGemm,
) -> Result<Network> {
    // Two readers of the same headers: one behind the VarBuilder, one for the head rows.
    let open = || {
        SafetensorsFiles::open(&files.weights).map_err(|err| ModelError::Weights(err.to_string()))
    };
    let tensors = open()?;
    let vb = VarBuilder::from_backend(Box::new(open()?), dtype, device.clone());
    match config {
        NetworkConfig::Decoder(config) => {
            Scorer::load(config, &tensors, vb, head_tokens, gemm).map(Network::Decoder)
        }
        NetworkConfig::Encoder(config) => {
            CrossEncoder::load(config, vb, gemm, separator).map(Network::Encoder)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERANK: Calibration = Calibration {
        raw_divisor: 5.0,
        temperature: 5.0,
    };

    #[test]
    fn zerank_scores_are_sigmoid_of_a_fifth_of_the_logit() {
        let s = Score::new(5.0, ZERANK);
        assert_eq!(s.raw, 1.0);
        assert!((s.score - 0.731_058_6).abs() < 1e-6);
        assert_eq!(Score::new(0.0, ZERANK).score, 0.5);
    }

    #[test]
    fn log_odds_scores_are_their_sigmoid() {
        let unit = Calibration {
            raw_divisor: 1.0,
            temperature: 1.0,
        };
        let s = Score::new(2.0, unit);
        assert_eq!(s.raw, 2.0);
        assert!((s.score - 0.880_797).abs() < 1e-6);
    }
}
