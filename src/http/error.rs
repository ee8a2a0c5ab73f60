//! Every failure a client can see, and the one place that maps it to a status and a body.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    Validation(String),
    #[error("request body is over the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{count} documents is over the limit of {limit} per request")]
    TooManyDocuments { count: usize, limit: usize },
    #[error("{0}")]
    InputTooLong(String),
    #[error("{0}")]
    RequestTooLarge(String),
    #[error("content type must be application/json, got `{0}`")]
    UnsupportedMediaType(String),
    #[error("content encoding `{0}` is not accepted; send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("request line and headers are over the limit of {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the request body did not arrive within {0:.1} s")]
    BodyTimeout(f64),
    #[error("the client closed the connection before sending the whole body")]
    ClientDisconnected,
    #[error(
        "model `{requested}` is not served here; served models: {served:?} (--model-name-policy any serves unknown names with the first model)"
    )]
    UnknownModel {
        requested: String,
        served: Vec<String>,
    },
    #[error("no route {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("server is at capacity: {message}; retry in {retry_after_secs} s")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    #[error("request took longer than the {0:.1} s limit")]
    Timeout(f64),
    #[error(
        "model `{model}` takes no instruction: its prompt has no place for one; send the request without `instruction`"
    )]
    InstructionNotAccepted { model: String },
    #[error("model is still loading")]
    NotReady,
    #[error("the model worker has stopped; the server needs a restart")]
    Unavailable,
    #[error("internal error: {0}")]
    Internal(String),
}

/// The one error body, readable by every client family: TEI and Haystack read `error` and
/// `error_type`, Cohere `message`, Jina and LangChain `detail`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// What went wrong, for people.
    error: &'a str,
    /// The kind, for programs: `invalid_json`, `validation`, `payload_too_large`,
    /// `too_many_documents`, `input_too_long`, `request_too_large`, `unsupported_media_type`,
    /// `unsupported_encoding`, `headers_too_large`, `body_timeout`, `client_disconnect`, `unknown_model`,
    /// `instruction_not_accepted`, `not_found`, `method_not_allowed`, `unauthorized`,
    /// `overloaded`, `timeout`, `not_ready`, `unavailable`, `internal_error`.
    error_type: &'a str,
    /// The same message (Cohere).
    message: &'a str,
    /// The same message (Jina, LangChain).
    detail: &'a str,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::InstructionNotAccepted { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge { .. }
            | ApiError::TooManyDocuments { .. }
            | ApiError::InputTooLong(_)
            | ApiError::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            // nginx's "client closed request": nobody reads it, the metrics count it.
            ApiError::ClientDisconnected => {
                StatusCode::from_u16(499).expect("499 is a valid status")
            }
            ApiError::UnknownModel { .. } | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NotReady | ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable kind; also the `kind` label of `zerank_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::Validation(_) => "validation",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::TooManyDocuments { .. } => "too_many_documents",
            ApiError::InputTooLong(_) => "input_too_long",
            ApiError::RequestTooLarge(_) => "request_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::ClientDisconnected => "client_disconnect",
            ApiError::UnknownModel { .. } => "unknown_model",
            ApiError::NotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Timeout(_) => "timeout",
            ApiError::InstructionNotAccepted { .. } => "instruction_not_accepted",
            ApiError::NotReady => "not_ready",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let kind = self.kind();
        // Loading is expected; failures of the server itself are not.
        match &self {
            ApiError::Internal(_) | ApiError::Unavailable => {
                tracing::error!(kind, %message, "request failed")
            }
            ApiError::Timeout(_) => tracing::warn!(kind, %message, "request timed out"),
            _ => tracing::debug!(kind, %message, "request refused"),
        }
        let body = ErrorBody {
            error: &message,
            error_type: kind,
            message: &message,
            detail: &message,
        };
        let mut response = (self.status(), Json(body)).into_response();
        match self {
            ApiError::Overloaded {
                retry_after_secs, ..
            } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
            }
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        // Read by the metrics middleware.
        response.extensions_mut().insert(ErrorKind(kind));
        response
    }
}

/// Marks a response as an error of this kind.
#[derive(Clone, Copy)]
pub struct ErrorKind(pub &'static str);

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::UnknownModel { requested, served } => {
                ApiError::UnknownModel { requested, served }
            }
            ServiceError::TooManyDocuments { count, limit } => {
                ApiError::TooManyDocuments { count, limit }
            }
            ServiceError::InstructionNotAccepted { model } => {
                ApiError::InstructionNotAccepted { model }
            }
            ServiceError::InputTooLong(message) => ApiError::InputTooLong(message),
            ServiceError::RequestTooLarge(message) => ApiError::RequestTooLarge(message),
            ServiceError::Overloaded {
                message,
                retry_after_secs,
            } => ApiError::Overloaded {
                message,
                retry_after_secs,
            },
            ServiceError::Timeout(seconds) => ApiError::Timeout(seconds),
            ServiceError::Unavailable => ApiError::Unavailable,
            ServiceError::Internal(message) => ApiError::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::BatchError;

    /// What the model finds wrong with an input during a batch stays the client's error.
    #[test]
    fn failures_in_a_batch_keep_their_kind_up_to_the_status() {
        let status = |err: BatchError| ApiError::from(ServiceError::from(err)).status();
        assert_eq!(
            status(BatchError::Input(
                "5000 tokens, the model allows 4096".into()
            )),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(BatchError::Model("non-finite logit".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(BatchError::Panicked("index out of bounds".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(status(BatchError::Stopped), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            status(BatchError::TooLarge {
                requested: 10,
                limit: 5
            }),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
