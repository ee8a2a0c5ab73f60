//! A long document scored whole: split into windows of the prompt's room, each its own
//! prompt (`long_documents: "chunk"`).

use std::ops::Range;

use super::prompt::{
    CUT_MARGIN_TOKENS, DOCUMENT_CHAR_LIMIT, EncodedPair, PromptEncoder, TYPICAL_CHARS_PER_TOKEN,
    TokenLimits, TruncationDirection, is_python_whitespace,
};
use super::recipe::TextRule;
use crate::model::error::{ModelError, Result};

/// How a document longer than the prompt's room is split into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    /// Tokens a window repeats from the end of the one before.
    pub overlap_tokens: usize,
    /// Most windows per document; more is an error.
    pub max_chunks: usize,
}

/// One window of a document, ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub encoded: EncodedPair,
    /// Where the window lies in the document, in characters (Unicode scalar values).
    pub chars: Range<usize>,
}

/// Tokens kept free in each window: inside the prompt, the window's first and last tokens
/// may merge with the template's text and tokenize a little longer than alone.
const WINDOW_SLACK_TOKENS: usize = 4;

impl PromptEncoder {
    /// The prompts of a document's windows: the whole document when it fits the prompt's
    /// room (and the recipe's character cut), else token windows of that room that end on
    /// whitespace where they can, each `overlap_tokens` into the one before (at most half
    /// of it). `limits.max_tokens_per_doc` caps a window's size. A document of whitespace
    /// only is one window, cut as `truncate` cuts it.
    ///
    /// A document longer than `max_chunks` windows can hold, at the most characters a token
    /// stands for, is refused before it is tokenized; the others are tokenized a window at
    /// a time.
    pub fn encode_windows(
        &self,
        query: &str,
        document: &str,
        instruction: Option<&str>,
        limits: TokenLimits,
        chunking: Chunking,
    ) -> Result<Vec<Window>> {
        if document.chars().all(is_python_whitespace) {
            let encoded = self.encode(query, document, instruction, limits)?;
            let chars = 0..document.chars().count();
            return Ok(vec![Window { encoded, chars }]);
        }
        let whole_limits = TokenLimits {
            max_tokens_per_doc: None,
            ..limits
        };
        let fixed = self.encode(query, "", instruction, whole_limits)?.ids.len();
        let room = (self.max_length - fixed)
            .min(limits.max_tokens_per_doc.unwrap_or(usize::MAX))
            .saturating_sub(WINDOW_SLACK_TOKENS)
            .max(1);
        let window = WindowSize {
            tokens: room,
            chars: match self.text_rule {
                TextRule::ReferenceCuts => Some(DOCUMENT_CHAR_LIMIT),
                TextRule::Verbatim => None,
            },
        };
        let chars = document.chars().count();
        if chars
            > chunking
                .max_chunks
                .saturating_mul(window.most_chars(self.max_token_chars))
        {
            return Err(window.too_many(chars, chunking));
        }
        let spans = self.window_spans(document, window, chunking)?;
        spans
            .into_iter()
            .map(|bytes| {
                let encoded =
                    self.encode(query, &document[bytes.clone()], instruction, whole_limits)?;
                let start = document[..bytes.start].chars().count();
                let chars = start..start + document[bytes].chars().count();
                Ok(Window { encoded, chars })
            })
            .collect()
    }

    /// Byte ranges of the windows over a document: at most `window` each, cut before a
    /// token that starts with whitespace when one lies in the window's second half. Each
    /// window's tokens are found by tokenizing from its start just past where it can end.
    fn window_spans(
        &self,
        document: &str,
        window: WindowSize,
        chunking: Chunking,
    ) -> Result<Vec<Range<usize>>> {
        let most_chars = window.chars.unwrap_or(usize::MAX);
        let mut spans = Vec::new();
        let mut start = 0;
        loop {
            let rest = &document[start..];
            let (piece, tokens) = self.head(
                rest,
                window.tokens + CUT_MARGIN_TOKENS,
                most_chars.saturating_add(1),
                TruncationDirection::Right,
            )?;
            let tokens = match tokens {
                Some(tokens) => tokens,
                None => self.tokenize(piece)?,
            };
            let offsets = tokens.get_offsets();
            let to_the_end = piece.len() == rest.len();
            if offsets.is_empty() {
                // Only text the tokenizer drops is left.
                if spans.is_empty() {
                    spans.push(0..document.len());
                }
                break;
            }
            let text_of = |end: usize| &rest[offsets[0].0..offsets[end - 1].1];
            let mut end = window.tokens.min(offsets.len());
            while end > 1 && text_of(end).chars().count() > most_chars {
                end = end * 3 / 4;
            }
            let last_window = to_the_end && end == offsets.len();
            if last_window && spans.is_empty() {
                // The whole document fits one window.
                spans.push(0..document.len());
                break;
            }
            if !last_window
                && let Some(cut) = (end / 2 + 1..end).rev().find(|&k| {
                    rest[offsets[k].0..]
                        .chars()
                        .next()
                        .is_some_and(char::is_whitespace)
                })
            {
                end = cut;
            }
            // Byte-level tokens may split a character; a window keeps it whole.
            let (mut first, mut last) = (offsets[0].0, offsets[end - 1].1);
            while !rest.is_char_boundary(first) {
                first -= 1;
            }
            while !rest.is_char_boundary(last) {
                last += 1;
            }
            spans.push(start + first..start + last);
            if spans.len() > chunking.max_chunks {
                return Err(window.too_many(document.chars().count(), chunking));
            }
            if last_window {
                break;
            }
            // Step back by the overlap, at most half this window: windows advance by at
            // least half a window, however much the character cut shortened it.
            let mut next = offsets[end - chunking.overlap_tokens.min(end / 2)].0;
            while !rest.is_char_boundary(next) {
                next -= 1;
            }
            if next == 0 {
                next = rest.chars().next().map_or(rest.len(), char::len_utf8);
            }
            start += next;
        }
        Ok(spans)
    }
}

/// The most a chunk window holds.
#[derive(Debug, Clone, Copy)]
struct WindowSize {
    /// The prompt's room for the document.
    tokens: usize,
    /// The recipe's character cut, when it has one.
    chars: Option<usize>,
}

impl WindowSize {
    /// Characters a window can hold at most, at `max_token_chars` characters a token.
    fn most_chars(self, max_token_chars: usize) -> usize {
        let by_tokens = self.tokens.saturating_mul(max_token_chars);
        self.chars.map_or(by_tokens, |chars| chars.min(by_tokens))
    }

    /// The refusal of a document that needs more than `max_chunks` windows, naming the
    /// limit of the window that binds in its own unit: characters under the recipe's cut
    /// when a window of the prompt's room would pass it, else tokens.
    fn too_many(self, chars: usize, chunking: Chunking) -> ModelError {
        let window = match self.chars {
            Some(cut) if self.tokens.saturating_mul(TYPICAL_CHARS_PER_TOKEN) > cut => {
                format!(
                    "{cut} characters each (the recipe cuts what it scores of a text to {cut} characters)"
                )
            }
            _ => format!(
                "{} tokens each (the model's length less the query, instruction and template)",
                self.tokens
            ),
        };
        ModelError::InputTooLong(format!(
            "a document of {chars} characters needs more than {} windows (max_chunks_per_document) of at most {window}; send a shorter document or ask for `long_documents: \"truncate\"`",
            chunking.max_chunks
        ))
    }
}
