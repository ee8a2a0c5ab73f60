//! The model layer: a zerank checkpoint loaded once, turning pairs into token ids
//! ([`Engine::encode`]) and batches of ids into scores ([`Engine::score_batch`]).

mod batch;
mod config;
mod error;
mod files;
mod linear;
mod packing;
mod prompt;
mod qwen3;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

pub use batch::{BatchBudget, plan_batches};
pub use config::Qwen3Config;
pub use error::{ModelError, Result};
pub use files::{CheckpointFiles, ModelSource};
pub use linear::{Blas, CpuBlas};
pub use prompt::{
    DOCUMENT_CHAR_LIMIT, EncodedPair, QUERY_CHAR_LIMIT, TokenLimits, TruncationDirection,
    cut_and_strip,
};

use packing::Packing;
use prompt::PromptEncoder;
use qwen3::Qwen3Scorer;

/// The published score is `sigmoid(yes_logit / 5)`; `yes_logit / 5` is the raw score.
const LOGIT_SCALE: f32 = 5.0;

/// One pair's relevance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// `sigmoid(raw)`, in (0, 1).
    pub score: f32,
    /// `yes_logit / 5`.
    pub raw: f32,
}

impl Score {
    pub fn from_yes_logit(yes_logit: f32) -> Self {
        let raw = yes_logit / LOGIT_SCALE;
        Score {
            score: 1.0 / (1.0 + (-raw).exp()),
            raw,
        }
    }

    pub fn yes_logit(&self) -> f32 {
        self.raw * LOGIT_SCALE
    }
}

/// A batch's scores, in its order.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredBatch {
    pub scores: Vec<Score>,
    /// Tokens the forward pass computed: packed without padding, a shared prefix once.
    pub computed_tokens: usize,
}

/// A document's place in a ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Position of the document in the request.
    pub index: usize,
    pub score: Score,
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA 0 when built with CUDA and a GPU is present, else Metal when built with it, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let ordinal = |rest: &str| -> std::result::Result<usize, String> {
            match rest {
                "" => Ok(0),
                _ => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("bad device ordinal in `{s}`")),
            }
        };
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            _ if s.starts_with("cuda") => Ok(DeviceSpec::Cuda(ordinal(&s[4..])?)),
            _ if s.starts_with("metal") => Ok(DeviceSpec::Metal(ordinal(&s[5..])?)),
            _ => Err(format!(
                "unknown device `{s}` (expected auto, cpu, cuda[:N] or metal[:N])"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl DeviceSpec {
    fn open(self) -> Result<(Device, DeviceSpec)> {
        let device_error = |err: candle_core::Error| ModelError::Device(err.to_string());
        match self {
            // A GPU build on a machine without one still runs, on the CPU.
            DeviceSpec::Auto => [DeviceSpec::Cuda(0), DeviceSpec::Metal(0)]
                .into_iter()
                .find_map(|gpu| gpu.open().ok())
                .map_or(Ok((Device::Cpu, DeviceSpec::Cpu)), Ok),
            DeviceSpec::Cpu => Ok((Device::Cpu, self)),
            DeviceSpec::Cuda(n) => Ok((Device::new_cuda(n).map_err(device_error)?, self)),
            DeviceSpec::Metal(n) => Ok((Device::new_metal(n).map_err(device_error)?, self)),
        }
    }
}

/// Compute dtype of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeSpec {
    /// f32 on CPU (candle's CPU half-precision matmuls convert on every call), bf16 on GPUs.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl FromStr for DTypeSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DTypeSpec::Auto),
            "f32" | "float32" => Ok(DTypeSpec::F32),
            "bf16" | "bfloat16" => Ok(DTypeSpec::Bf16),
            "f16" | "float16" | "half" => Ok(DTypeSpec::F16),
            other => Err(format!(
                "unknown dtype `{other}` (expected auto, f32, bf16 or f16)"
            )),
        }
    }
}

impl DTypeSpec {
    fn resolve(self, device: &Device) -> DType {
        match self {
            DTypeSpec::Auto if device.is_cpu() => DType::F32,
            DTypeSpec::Auto => DType::BF16,
            DTypeSpec::F32 => DType::F32,
            DTypeSpec::Bf16 => DType::BF16,
            DTypeSpec::F16 => DType::F16,
        }
    }
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
    pub share_prefixes: bool,
    /// The CPU's f32 matmul.
    pub cpu_blas: CpuBlas,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            model: String::new(),
            revision: None,
            device: DeviceSpec::default(),
            dtype: DTypeSpec::default(),
            max_length: None,
            share_prefixes: true,
            cpu_blas: CpuBlas::default(),
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
    pub max_length: usize,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub yes_token_id: u32,
    pub share_prefixes: bool,
    /// What runs the f32 matmuls: a BLAS library, or candle's gemm.
    pub matmul: String,
    #[serde(skip)]
    pub load_time: Duration,
}

/// A loaded zerank checkpoint.
pub struct Engine {
    encoder: PromptEncoder,
    scorer: Qwen3Scorer,
    config: Qwen3Config,
    info: ModelInfo,
}

impl Engine {
    pub fn load(options: &LoadOptions) -> Result<Self> {
        let started = Instant::now();
        let source = ModelSource::parse(&options.model, options.revision.as_deref())?;
        let files = source.locate()?;
        let config = Qwen3Config::from_file(&files.config)?;
        let model_limit = options
            .max_length
            .map_or(config.max_position_embeddings, |n| {
                n.min(config.max_position_embeddings)
            });
        let encoder = PromptEncoder::load(
            &files.tokenizer,
            files.tokenizer_config.as_deref(),
            files.chat_template.as_deref(),
            model_limit,
        )?;
        let (device, device_spec) = options.device.open()?;
        let dtype = options.dtype.resolve(&device);
        // Only f32 on the CPU goes through a BLAS.
        let blas = match (device.is_cpu(), dtype) {
            (true, DType::F32) => Blas::open(&options.cpu_blas)?,
            _ => None,
        };
        let scorer = load_weights(
            &files,
            &config,
            (&device, dtype),
            encoder.yes_token_id(),
            blas.as_ref(),
        )?;
        let info = ModelInfo {
            model: options.model.clone(),
            revision: options.revision.clone(),
            device: device_spec.to_string(),
            dtype: format!("{dtype:?}").to_lowercase(),
            max_length: encoder.max_length(),
            num_layers: config.num_hidden_layers,
            hidden_size: config.hidden_size,
            yes_token_id: encoder.yes_token_id(),
            share_prefixes: options.share_prefixes,
            matmul: blas
                .as_ref()
                .map_or_else(|| "candle".into(), |b| b.description().to_owned()),
            load_time: started.elapsed(),
        };
        Ok(Engine {
            encoder,
            scorer,
            config,
            info,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The checkpoint's architecture settings.
    pub fn config(&self) -> &Qwen3Config {
        &self.config
    }

    /// Token ids of the prompt for one pair.
    pub fn encode(&self, query: &str, document: &str, limits: TokenLimits) -> Result<EncodedPair> {
        self.encoder.encode(query, document, limits)
    }

    /// Scores of the sequences (each non-empty), run as one forward pass.
    pub fn score_batch(&self, sequences: &[&[u32]]) -> Result<Vec<Score>> {
        self.run_batch(sequences).map(|batch| batch.scores)
    }

    /// [`Engine::score_batch`], with what the forward pass computed.
    pub fn run_batch(&self, sequences: &[&[u32]]) -> Result<ScoredBatch> {
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
        let packing = Packing::new(sequences, self.info.share_prefixes);
        let logits = self.scorer.yes_logits(&packing)?;
        if let Some(bad) = logits.iter().position(|l| !l.is_finite()) {
            return Err(ModelError::Inference(format!(
                "the model produced a non-finite logit ({}) for a sequence of {} tokens",
                logits[bad],
                sequences[bad].len()
            )));
        }
        Ok(ScoredBatch {
            scores: logits.into_iter().map(Score::from_yes_logit).collect(),
            computed_tokens: packing.ids.len(),
        })
    }

    /// Scores of arbitrary pairs, in their order, batched within `budget`.
    pub fn score_pairs(
        &self,
        pairs: &[(&str, &str)],
        limits: TokenLimits,
        budget: BatchBudget,
    ) -> Result<Vec<Score>> {
        let encoded = pairs
            .iter()
            .map(|(q, d)| self.encode(q, d, limits).map(|e| e.ids))
            .collect::<Result<Vec<_>>>()?;
        let lengths: Vec<usize> = encoded.iter().map(Vec::len).collect();
        let mut scores = vec![Score::from_yes_logit(0.0); pairs.len()];
        for batch in plan_batches(&lengths, budget) {
            let sequences: Vec<&[u32]> = batch.iter().map(|&i| encoded[i].as_slice()).collect();
            for (&i, score) in batch.iter().zip(self.score_batch(&sequences)?) {
                scores[i] = score;
            }
        }
        Ok(scores)
    }

    /// The documents ranked against the query, best first; `top_n` of them when given.
    pub fn rank(
        &self,
        query: &str,
        documents: &[&str],
        top_n: Option<usize>,
        limits: TokenLimits,
        budget: BatchBudget,
    ) -> Result<Vec<Ranked>> {
        let pairs: Vec<(&str, &str)> = documents.iter().map(|d| (query, *d)).collect();
        let scores = self.score_pairs(&pairs, limits, budget)?;
        Ok(rank_scores(&scores, top_n))
    }
}

/// Indices sorted by descending score (ties keep input order), cut to `top_n` when given.
pub fn rank_scores(scores: &[Score], top_n: Option<usize>) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = scores
        .iter()
        .enumerate()
        .map(|(index, &score)| Ranked { index, score })
        .collect();
    ranked.sort_by(|a, b| b.score.raw.total_cmp(&a.score.raw));
    if let Some(n) = top_n {
        ranked.truncate(n);
    }
    ranked
}

fn load_weights(
    files: &CheckpointFiles,
    config: &Qwen3Config,
    (device, dtype): (&Device, DType),
    yes_token_id: u32,
    blas: Option<&std::sync::Arc<Blas>>,
) -> Result<Qwen3Scorer> {
    let open = || {
        // SAFETY: the files are memory-mapped read-only; like every safetensors loader we
        // rely on nobody truncating them while the process runs.
        unsafe { MmapedSafetensors::multi(&files.weights) }.map_err(|err| {
            ModelError::Weights(format!(
                "{}: {err}",
                files
                    .weights
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    };
    let tensors = open()?;
    let vb = VarBuilder::from_backend(Box::new(open()?), dtype, device.clone());
    Qwen3Scorer::load(config, &tensors, vb, yes_token_id, blas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_sigmoid_of_a_fifth_of_the_logit() {
        let s = Score::from_yes_logit(5.0);
        assert_eq!(s.raw, 1.0);
        assert!((s.score - 0.731_058_6).abs() < 1e-6);
        assert_eq!(Score::from_yes_logit(0.0).score, 0.5);
    }

    #[test]
    fn ranking_is_descending_and_stable() {
        let scores: Vec<Score> = [0.1, 2.0, 0.1, -3.0]
            .into_iter()
            .map(Score::from_yes_logit)
            .collect();
        let order: Vec<usize> = rank_scores(&scores, None).iter().map(|r| r.index).collect();
        assert_eq!(order, vec![1, 0, 2, 3]);
        assert_eq!(rank_scores(&scores, Some(2)).len(), 2);
        assert_eq!(rank_scores(&scores, Some(10)).len(), 4);
    }

    #[test]
    fn device_and_dtype_names() {
        assert_eq!("cuda:1".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(1)));
        assert_eq!("CUDA".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("metal".parse::<DeviceSpec>(), Ok(DeviceSpec::Metal(0)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("bfloat16".parse::<DTypeSpec>(), Ok(DTypeSpec::Bf16));
        assert!("int8".parse::<DTypeSpec>().is_err());
    }
}
