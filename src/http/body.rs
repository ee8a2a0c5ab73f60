//! Request bodies: JSON read within the payload limit and the body deadline, and each way
//! reading one can fail answered as an [`ApiError`].

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::body_budget::BodyMemoryFull;
use super::error::ApiError;
use super::state::AppState;

/// A JSON body, with every way it can be wrong answered as an [`ApiError`].
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let body_timeout = state.settings.server.body_read_timeout_secs;
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            let value = content_type.to_str().unwrap_or("").to_ascii_lowercase();
            let mime = value.split(';').next().unwrap_or("").trim();
            if mime != "application/json" && !mime.ends_with("+json") {
                return Err(ApiError::UnsupportedMediaType(value));
            }
        }
        let limit = state.settings.server.payload_limit_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        let mut reading = BodyRead {
            metrics: &state.metrics,
            ended: false,
        };
        let read = axum::body::Bytes::from_request(req, state).await;
        reading.ended = true;
        let bytes = read.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else if caused_by::<BodyMemoryFull>(&rejection) {
                ApiError::BodyMemoryFull {
                    limit: state.settings.server.request_body_memory_bytes,
                }
            } else if caused_by::<tower_http::timeout::TimeoutError>(&rejection) {
                ApiError::BodyTimeout(body_timeout)
            } else if client_went_away(&rejection) {
                state.metrics.client_disconnects.inc();
                ApiError::ClientDisconnected
            } else {
                ApiError::InvalidJson(rejection.body_text())
            }
        })?;
        // hyper ends an HTTP/2 body that its client cancels (RST_STREAM CANCEL) as if it were
        // complete: short of its declared length, it was cut off.
        if declared.is_some_and(|declared| bytes.len() < declared) {
            state.metrics.client_disconnects.inc();
            return Err(ApiError::ClientDisconnected);
        }
        if nesting_depth(&bytes) > MAX_JSON_NESTING {
            return Err(ApiError::InvalidJson(format!(
                "JSON nested deeper than {MAX_JSON_NESTING} levels"
            )));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|err| match err.classify() {
                serde_json::error::Category::Data => ApiError::Validation(err.to_string()),
                _ => ApiError::InvalidJson(err.to_string()),
            })
    }
}

/// A request body being read. Dropped before the read ends, the client went away: an
/// HTTP/2 client that resets its stream mid-body gets its handler dropped, never answered,
/// so it is counted here.
struct BodyRead<'a> {
    metrics: &'a crate::metrics::Metrics,
    ended: bool,
}

impl Drop for BodyRead<'_> {
    fn drop(&mut self) {
        // Its request and error are counted by the metrics middleware, dropped with it.
        if !self.ended {
            self.metrics.client_disconnects.inc();
        }
    }
}

/// serde_json's own limit inside values; fields it skips (unknown ones) have none.
const MAX_JSON_NESTING: usize = 128;

/// The deepest nesting of arrays and objects in a JSON text (brackets inside strings do not
/// count). Malformed text is left to the parser.
fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        match (in_string, byte) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') => in_string = false,
            (true, _) => {}
            (false, b'"') => in_string = true,
            (false, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Whether reading the body failed for a reason of type `E`: its deadline passed, or the
/// body memory was full.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(err) = source {
        if err.is::<E>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Whether reading the body failed because the client closed its connection (HTTP/1) or
/// reset its stream (HTTP/2) before sending all of it.
fn client_went_away(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let connection_lost = |err: &std::io::Error| {
        matches!(
            err.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        )
    };
    let mut source = Some(error);
    while let Some(err) = source {
        let gone = if let Some(err) = err.downcast_ref::<hyper::Error>() {
            err.is_incomplete_message() || err.is_canceled() || err.is_closed()
        } else if let Some(err) = err.downcast_ref::<std::io::Error>() {
            connection_lost(err)
        } else if let Some(err) = err.downcast_ref::<h2::Error>() {
            // h2's errors have no `source()`: their io error is asked for.
            ((err.is_reset() || err.is_go_away()) && err.is_remote())
                || err.get_io().is_some_and(connection_lost)
        } else {
            false
        };
        if gone {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_brackets_outside_strings() {
        assert_eq!(nesting_depth(br#"{"a": [1, {"b": "[[[["}]}"#), 3);
        assert_eq!(nesting_depth(br#"{"a": "\"[{"}"#), 1);
        assert_eq!(nesting_depth(b"[]"), 1);
        assert_eq!(nesting_depth(b"\"x\""), 0);
        let deep = format!("{{\"unknown\": {}{}}}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(nesting_depth(deep.as_bytes()), 1001);
    }
}
