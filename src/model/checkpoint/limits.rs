//! What a pair's encoding may be cut to, and what it became: shared by the prompts of both
//! families (`prompt.rs`, `pair.rs`).

/// Which end of an over-long document is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruncationDirection {
    /// Keep the beginning, drop the end (the default).
    #[default]
    Right,
    /// Keep the end, drop the beginning.
    Left,
}

/// Token limits on the document, on top of the recipe's own cuts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenLimits {
    /// At most this many document tokens.
    pub max_tokens_per_doc: Option<usize>,
    pub direction: TruncationDirection,
}

/// A pair ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    pub ids: Vec<u32>,
    /// Document tokens dropped by the token limits.
    pub truncated_tokens: usize,
    /// Whether the model's length limit, not just `max_tokens_per_doc`, cut the document.
    pub over_max_length: bool,
}
