use std::path::PathBuf;

/// Everything that can go wrong below the HTTP layer, each variant naming what it found.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "no directory `{model}` in {}, and `{model}` is not a Hugging Face Hub id (owner/name)",
        cwd.display()
    )]
    ModelNotFound { model: String, cwd: PathBuf },
    /// A `--model` shaped like a Hub id that names no local directory either: a mistyped
    /// path reads as one, so the error says both.
    #[error("no directory `{model}` in {}; as a Hugging Face Hub id: {hub}", cwd.display())]
    NeitherDirectoryNorHub {
        model: String,
        cwd: PathBuf,
        hub: Box<ModelError>,
    },
    #[error("`{file}` is missing from model directory {}", dir.display())]
    MissingFile { dir: PathBuf, file: String },
    #[error(
        "could not fetch `{file}` of `{repo}` at revision `{revision}` from the Hugging Face Hub: {message}. \
         Check the id and --revision; a gated or private repo needs HF_TOKEN; without network, \
         pass a local checkpoint directory to --model, or set HF_HUB_OFFLINE=1 with the model in the HF_HOME cache"
    )]
    Hub {
        repo: String,
        revision: String,
        file: String,
        message: String,
    },
    #[error(
        "the checkpoint has its weights only as pytorch_model.bin (a pickle, which can run code \
         when read); convert it to model.safetensors first, e.g. `python -c \"from transformers \
         import AutoModelForSequenceClassification as M; M.from_pretrained('IN').save_pretrained('OUT')\"` \
         then copy the tokenizer files (or use the Hub's safetensors conversion, which opens a pull request)"
    )]
    PickleWeights,
    #[error("{}: {message}", path.display())]
    InvalidFile { path: PathBuf, message: String },
    #[error(
        "unsupported architecture: found architectures {found:?} (model_type {model_type:?}); zerank-server runs {supported}"
    )]
    UnsupportedArchitecture {
        found: Vec<String>,
        model_type: Option<String>,
        /// The class names the engine runs.
        supported: String,
    },
    #[error("unsupported model configuration: {0}")]
    UnsupportedConfig(String),
    #[error("could not load weights: {0}")]
    Weights(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("device: {0}")]
    Device(String),
    #[error("this model's prompt has no place for an instruction")]
    InstructionNotAccepted,
    #[error("input too long: {0}")]
    InputTooLong(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

impl From<candle_core::Error> for ModelError {
    fn from(err: candle_core::Error) -> Self {
        ModelError::Inference(err.to_string())
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// A `config.json` that does not describe a network this crate runs.
pub(crate) fn invalid_config(message: String) -> ModelError {
    ModelError::InvalidFile {
        path: "config.json".into(),
        message,
    }
}
