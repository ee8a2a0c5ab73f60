//! The ranges each setting must fall in: below a bound the server cannot work, above one
//! the value is a typo.

use super::{MAX_BATCH_TOKENS, ScoringSettings, ServerSettings, Settings};

/// Past any model's window: a larger chunk overlap is a typo.
const MAX_CHUNK_OVERLAP_TOKENS: usize = 1 << 20;

/// A day: a longer duration setting is a typo.
const MAX_DURATION_SECS: f64 = 86_400.0;

/// Every value in `least..=most`, or an error naming the first that is not.
fn check_counts(counts: &[(&str, usize, usize, usize)]) -> anyhow::Result<()> {
    for &(name, value, least, most) in counts {
        anyhow::ensure!(
            (least..=most).contains(&value),
            "{name} must be between {least} and {most}; got {value}"
        );
    }
    Ok(())
}

impl Settings {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        self.scoring.validate()?;
        self.server.validate()?;
        self.models()?;
        Ok(())
    }
}

impl ScoringSettings {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        check_counts(&[
            (
                "max_batch_tokens",
                self.max_batch_tokens,
                1,
                MAX_BATCH_TOKENS as usize,
            ),
            ("max_batch_pairs", self.max_batch_pairs, 1, 1 << 16),
        ])?;
        for (name, value) in [
            ("max_tokens_per_doc", self.max_tokens_per_doc),
            ("max_length", self.max_length),
        ] {
            let most = MAX_BATCH_TOKENS as usize;
            anyhow::ensure!(
                value.is_none_or(|v| (1..=most).contains(&v)),
                "{name} must be between 1 and {most}; got {}",
                value.unwrap_or_default()
            );
        }
        self.loads()?;
        Ok(())
    }
}

impl ServerSettings {
    fn validate(&self) -> anyhow::Result<()> {
        // Each range holds only values a server can work with: below a bound, every request
        // (or every probe) would fail; above one, the value is a typo.
        check_counts(&[
            (
                "max_concurrent_requests",
                self.max_concurrent_requests,
                1,
                1 << 20,
            ),
            // Under a few hundred tokens no request of one short pair fits.
            ("max_queued_tokens", self.max_queued_tokens, 256, 1 << 40),
            (
                "max_documents_per_request",
                self.max_documents_per_request,
                1,
                1 << 20,
            ),
            // The smallest rerank body is tens of bytes; past a GiB, JSON parsing is the
            // wrong tool.
            (
                "payload_limit_bytes",
                self.payload_limit_bytes,
                1 << 10,
                1 << 30,
            ),
            // Smaller than any request's estimate: each tokenizes alone, which still works.
            (
                "tokenizing_memory_bytes",
                self.tokenizing_memory_bytes,
                1 << 10,
                1 << 40,
            ),
            // Past a TiB, the value is a typo (and it must hold one body, below).
            (
                "request_body_memory_bytes",
                self.request_body_memory_bytes,
                1 << 10,
                1 << 40,
            ),
            ("max_connections", self.max_connections, 1, 1 << 20),
            // One stream serves one request; past a thousand, one connection is a flood.
            (
                "http2_max_concurrent_streams",
                self.http2_max_concurrent_streams as usize,
                1,
                1_000,
            ),
            // A probe's or a browser's head is hundreds of bytes.
            ("max_header_bytes", self.max_header_bytes, 1 << 10, 1 << 20),
            (
                "max_chunks_per_document",
                self.max_chunks_per_document,
                1,
                1 << 12,
            ),
            ("score_cache_bytes", self.score_cache_bytes, 0, 1 << 40),
        ])?;
        anyhow::ensure!(
            self.request_body_memory_bytes >= self.payload_limit_bytes,
            "request_body_memory_bytes ({}) must hold at least one body of payload_limit_bytes ({}): raise it or lower payload_limit_bytes",
            self.request_body_memory_bytes,
            self.payload_limit_bytes
        );
        // Checked against each model's window once it is loaded, too.
        anyhow::ensure!(
            self.chunk_overlap_tokens <= MAX_CHUNK_OVERLAP_TOKENS,
            "chunk_overlap_tokens must be at most {MAX_CHUNK_OVERLAP_TOKENS}, and under half of a chunk window; got {}",
            self.chunk_overlap_tokens
        );
        if let Some(admin_port) = self.admin_port {
            anyhow::ensure!(
                admin_port != 0 && admin_port != self.port,
                "admin_port must be a port of its own, not 0 or port ({}); got {admin_port}",
                self.port
            );
        }
        self.check_durations()?;
        if let Some(endpoint) = &self.otlp_endpoint {
            crate::telemetry::traces_url(endpoint)?;
        }
        if let Some(key) = &self.api_key {
            anyhow::ensure!(
                !key.trim().is_empty(),
                "api_key is empty: set a key, or leave ZERANK_API_KEY / --api-key unset to serve without one"
            );
        }
        Ok(())
    }

    pub(super) fn check_durations(&self) -> anyhow::Result<()> {
        // Below a second, clients on slow links lose connections mid-request; below 0.1 s no
        // request finishes on any model.
        let durations = [
            ("request_timeout_secs", self.request_timeout_secs, 0.1),
            (
                "header_read_timeout_secs",
                self.header_read_timeout_secs,
                1.0,
            ),
            ("body_read_timeout_secs", self.body_read_timeout_secs, 1.0),
            (
                "response_write_timeout_secs",
                self.response_write_timeout_secs,
                1.0,
            ),
            ("drain_deadline_secs", self.drain_deadline_secs, 0.1),
        ];
        for (name, value, least) in durations {
            anyhow::ensure!(
                value.is_finite() && (least..=MAX_DURATION_SECS).contains(&value),
                "{name} must be between {least} and {MAX_DURATION_SECS} seconds (a day); got {value}"
            );
        }
        Ok(())
    }
}
