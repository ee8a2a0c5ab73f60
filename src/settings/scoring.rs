//! The settings of the models and their batching: what `serve` and `score` share.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::models::one_or_many;
use crate::model::{BatchBudget, CpuLibrary, DTypeSpec, DeviceSpec};

pub const DEFAULT_MODEL: &str = "zeroentropy/zerank-1-small";

/// What to load and how to score with it. The file keys are the field names.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Models and batching")]
#[serde(default)]
pub struct ScoringSettings {
    /// Local checkpoint directory or Hugging Face Hub id; repeat (or comma-separate) to serve
    /// several models. Requests without `model` go to the first.
    #[arg(long, env = "ZERANK_MODEL", value_delimiter = ',', default_value = DEFAULT_MODEL)]
    #[serde(deserialize_with = "one_or_many")]
    pub model: Vec<String>,
    /// Hub revision (branch, tag or commit): one for every model, or one per model [default: main].
    #[arg(long, env = "ZERANK_REVISION", value_delimiter = ',')]
    #[serde(deserialize_with = "one_or_many")]
    pub revision: Vec<String>,
    /// Scoring recipe: auto (Sentence Transformers' native layout when the checkpoint has it,
    /// else bge-gemma for a Gemma, else zerank), zerank, sentence-transformers, qwen3-reranker
    /// (the original Qwen3-Reranker prompt), bge-gemma (FlagEmbedding's prompt), mxbai-rerank
    /// (mxbai-rerank-v2's library prompt); one for every model, or one per model [default: auto].
    #[arg(long, env = "ZERANK_RECIPE", value_delimiter = ',', ignore_case = true)]
    #[serde(deserialize_with = "one_or_many")]
    pub recipe: Vec<crate::model::RecipeChoice>,
    /// Instruction used when a request brings none: one for every model, or repeat the flag
    /// once per model [default: the checkpoint's own default prompt, if any].
    #[arg(long, env = "ZERANK_INSTRUCTION")]
    #[serde(deserialize_with = "one_or_many")]
    pub instruction: Vec<String>,
    /// score = sigmoid(margin / T): one for every model, or one per model [default: 5 for a
    /// lone "Yes" logit (zerank), 1 for yes/no log-odds (Qwen3-Reranker)].
    #[arg(long, env = "ZERANK_SCORE_TEMPERATURE", value_delimiter = ',')]
    #[serde(deserialize_with = "one_or_many")]
    pub score_temperature: Vec<f32>,
    /// Compute dtype: auto (bf16 on GPUs and on CPUs with AVX512-BF16 or AMX where a bf16 GEMM
    /// library loads, else f32), f32, bf16, f16 (GPUs only).
    #[arg(long, env = "ZERANK_DTYPE", default_value = "auto", ignore_case = true)]
    pub dtype: DTypeSpec,
    /// Device: auto, cpu, cuda[:N], metal[:N].
    #[arg(long, env = "ZERANK_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Most prompt tokens in one forward pass (batches are packed, no padding).
    #[arg(long, env = "ZERANK_MAX_BATCH_TOKENS", default_value_t = 16_384)]
    pub max_batch_tokens: usize,
    /// Most pairs in one forward pass.
    #[arg(long, env = "ZERANK_MAX_BATCH_PAIRS", default_value_t = 64)]
    pub max_batch_pairs: usize,
    /// Cut documents to this many tokens (after the zerank recipe's 10,000-character cut).
    #[arg(long, env = "ZERANK_MAX_TOKENS_PER_DOC")]
    pub max_tokens_per_doc: Option<usize>,
    /// Cap on a whole prompt in tokens [default: the recipe's, at most the model's
    /// max_position_embeddings].
    #[arg(long, env = "ZERANK_MAX_LENGTH")]
    pub max_length: Option<usize>,
    /// Compute the query prefix that a request's documents share once; a bare switch means true.
    #[arg(long, env = "ZERANK_PREFIX_SHARING", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub prefix_sharing: bool,
    /// CPU f32 matmuls: auto (an installed OpenBLAS, BLIS or MKL, else candle's gemm), off
    /// (candle's gemm), or a BLAS library name or path.
    #[arg(long, env = "ZERANK_CPU_BLAS", default_value = "auto")]
    pub cpu_blas: CpuLibrary,
    /// CPU bf16 matmuls under bf16: auto (MKL, libmkl_rt.so.3, else oneDNN, libdnnl.so.3 or
    /// .so.2, where the CPU has AVX512-BF16 or AMX; else bf16 weights widened to f32 for each
    /// matmul), off (always widen), or an MKL or oneDNN library name or path.
    #[arg(
        long,
        alias = "cpu-onednn",
        env = "ZERANK_CPU_BF16_GEMM",
        default_value = "auto"
    )]
    #[serde(alias = "cpu_onednn")]
    pub cpu_bf16_gemm: CpuLibrary,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        super::declared_defaults()
    }
}

impl ScoringSettings {
    pub fn batch_budget(&self) -> BatchBudget {
        BatchBudget {
            max_tokens: self.max_batch_tokens,
            max_sequences: self.max_batch_pairs,
        }
    }
}
