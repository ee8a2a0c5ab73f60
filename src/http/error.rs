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
    #[error("content type must be application/json, got `{0}`")]
    UnsupportedMediaType(String),
    #[error("content encoding `{0}` is not accepted; send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("request line and headers are over the limit of {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the request body did not arrive within {0:.1} s")]
    BodyTimeout(f64),
    #[error(
        "the request bodies being read or served fill request_body_memory_bytes ({limit} bytes); retry in 1 s"
    )]
    BodyMemoryFull { limit: usize },
    #[error("the client closed the connection before sending the whole body")]
    ClientDisconnected,
    #[error("no route {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("model is still loading")]
    NotReady,
    /// The handler itself failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// What the service refused or failed at; its kinds map to statuses below.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// The one error body, readable by every client family: TEI and Haystack read `error` and
/// `error_type`, Cohere `message`, Jina and LangChain `detail`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// What went wrong, for people.
    error: &'a str,
    /// The kind, for programs: `invalid_json`, `validation`, `payload_too_large`,
    /// `too_many_documents`, `input_too_long`, `request_too_large`, `unsupported_media_type`,
    /// `unsupported_encoding`, `headers_too_large`, `body_timeout`, `body_memory_full`, `client_disconnect`, `unknown_model`,
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
            ApiError::InvalidJson(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyMemoryFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // nginx's "client closed request": nobody reads it, the metrics count it.
            ApiError::ClientDisconnected => {
                StatusCode::from_u16(499).expect("499 is a valid status")
            }
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Service(err) => match err {
                ServiceError::InstructionNotAccepted { .. } => StatusCode::BAD_REQUEST,
                ServiceError::TooManyDocuments { .. }
                | ServiceError::InputTooLong(_)
                | ServiceError::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                ServiceError::UnknownModel { .. } => StatusCode::NOT_FOUND,
                ServiceError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
                ServiceError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                ServiceError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// A stable machine-readable kind; also the `kind` label of `zerank_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::Validation(_) => "validation",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::BodyMemoryFull { .. } => "body_memory_full",
            ApiError::ClientDisconnected => "client_disconnect",
            ApiError::NotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotReady => "not_ready",
            ApiError::Internal(_) => "internal_error",
            ApiError::Service(err) => match err {
                ServiceError::UnknownModel { .. } => "unknown_model",
                ServiceError::TooManyDocuments { .. } => "too_many_documents",
                ServiceError::InstructionNotAccepted { .. } => "instruction_not_accepted",
                ServiceError::InputTooLong(_) => "input_too_long",
                ServiceError::RequestTooLarge(_) => "request_too_large",
                ServiceError::Overloaded { .. } => "overloaded",
                ServiceError::Timeout(_) => "timeout",
                ServiceError::Unavailable => "unavailable",
                ServiceError::Internal(_) => "internal_error",
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let kind = self.kind();
        // Loading is expected; failures of the server itself are not.
        match &self {
            ApiError::Internal(_)
            | ApiError::Service(ServiceError::Internal(_) | ServiceError::Unavailable) => {
                tracing::error!(kind, %message, "request failed")
            }
            ApiError::Service(ServiceError::Timeout(_)) => {
                tracing::warn!(kind, %message, "request timed out")
            }
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
            ApiError::Service(ServiceError::Overloaded {
                retry_after_secs, ..
            }) => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
            }
            ApiError::BodyMemoryFull { .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
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
