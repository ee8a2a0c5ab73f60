use crate::batcher::BatchError;
use crate::model::ModelError;

/// Why a request got no scores. Each kind keeps what it found, whichever layer found it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "model `{requested}` is not served here; served models: {served:?} (--model-name-policy any serves unknown names with the first model)"
    )]
    UnknownModel {
        requested: String,
        served: Vec<String>,
    },
    #[error(
        "{count} documents is over the limit of {limit} per request (`max_documents_per_request`); send fewer or raise the setting"
    )]
    TooManyDocuments { count: usize, limit: usize },
    #[error(
        "model `{model}` takes no instruction: its prompt has no place for one; send the request without `instruction`"
    )]
    InstructionNotAccepted { model: String },
    #[error("{0}")]
    InputTooLong(String),
    /// The request alone is more than the server can take (the queue's budget, or the
    /// request timeout at the measured throughput).
    #[error("{0}")]
    RequestTooLarge(String),
    #[error("server is at capacity: {message}; retry in {retry_after_secs} s")]
    Overloaded {
        message: String,
        /// When the queue should have room: the expected wait at the measured throughput.
        retry_after_secs: u64,
    },
    #[error("request took longer than the {0:.1} s limit")]
    Timeout(f64),
    #[error("the model worker has stopped; the server needs a restart")]
    Unavailable,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// A model error for the model served as `model`.
    pub fn from_model(err: ModelError, model: &str) -> Self {
        match err {
            ModelError::InputTooLong(message) => ServiceError::InputTooLong(message),
            ModelError::InstructionNotAccepted => ServiceError::InstructionNotAccepted {
                model: model.to_owned(),
            },
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

impl From<BatchError> for ServiceError {
    fn from(err: BatchError) -> Self {
        match err {
            BatchError::QueueFull { expected_wait, .. }
            | BatchError::Busy { expected_wait, .. } => ServiceError::Overloaded {
                message: err.to_string(),
                retry_after_secs: expected_wait.as_secs_f64().ceil() as u64,
            },
            BatchError::TooLarge { .. } | BatchError::TooSlow { .. } => {
                ServiceError::RequestTooLarge(err.to_string())
            }
            BatchError::Input(message) => ServiceError::InputTooLong(message),
            BatchError::Model(_) | BatchError::Panicked(_) => {
                ServiceError::Internal(err.to_string())
            }
            BatchError::Stopped => ServiceError::Unavailable,
        }
    }
}
