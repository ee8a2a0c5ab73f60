//! From a (query, document) pair, and an instruction where the recipe has one, to the token
//! ids the model scores.
//!
//! A prompt layout (fixed text and slots, see [`super::template`]) is split once at the
//! special markers of its fixed text. Per pair, the slots are filled and each run of text
//! between markers is tokenized as a whole, as the reference tokenizes the rendered prompt,
//! but as plain text: a document that contains `<|im_end|>` cannot close its own turn.

use std::ops::Range;
use std::path::Path;

use tokenizers::{Encoding, Tokenizer};

pub use super::limits::{EncodedPair, TokenLimits, TruncationDirection};
use super::pair::PairTemplate;
use super::recipe::{Recipe, TextRule};
use super::template::{ChatTemplate, Layout, Messages, Part, Slot, TokenizerConfig};
use crate::model::error::{ModelError, Result};

/// The zerank-1 reference cuts query and document to these many characters before stripping.
pub const QUERY_CHAR_LIMIT: usize = 2_000;
pub const DOCUMENT_CHAR_LIMIT: usize = 10_000;

/// Characters a token of ordinary text stands for, about (English runs near 4).
pub(super) const TYPICAL_CHARS_PER_TOKEN: usize = 4;

/// Characters tokenized first, per token looked for. More are tokenized, doubling, only
/// when the text holds fewer tokens than that.
const CHARS_PER_TOKEN_GUESS: usize = 2 * TYPICAL_CHARS_PER_TOKEN;

/// Tokens tokenized past the last one kept, so that where a long text is cut never changes
/// a kept token: the tokenizer looks past a character only within its pre-token (a word, a
/// run of spaces or punctuation), which 64 tokens span many times over.
pub(super) const CUT_MARGIN_TOKENS: usize = 64;

/// Memory the tokenizer takes per byte of text it tokenizes at once (offsets and alignments
/// per byte, a string per token): 856 MiB for a 7.5 MB document, measured.
const TOKENIZER_BYTES_PER_BYTE: usize = 120;

/// A layout's fixed text split at its special markers.
#[derive(Debug, Clone)]
enum Piece {
    Special(u32),
    Text(String),
    Slot(Slot),
    /// Ends a run of text: what follows is tokenized apart.
    Break,
}

/// A checkpoint's prompt: its layouts split at special markers, its tokenizer, and the
/// recipe's text rule and length limit.
pub struct PromptEncoder {
    /// Never parses special markers: user text only passes through this one.
    text_tokenizer: Tokenizer,
    plain: Vec<Piece>,
    /// `None`: the prompt has no place for an instruction.
    instructed: Option<Vec<Piece>>,
    /// An encoder's pair template, which `encode` follows instead of the pieces.
    pair: Option<PairTemplate>,
    default_instruction: Option<String>,
    pub(super) text_rule: TextRule,
    pub(super) max_length: usize,
    /// The most characters one token can stand for: twice the longest vocabulary entry, as
    /// Unicode normalization may compose several characters into one.
    pub(super) max_token_chars: usize,
}

/// Where the prompt's pieces come from.
pub struct PromptFiles<'a> {
    pub tokenizer: &'a Path,
    pub tokenizer_config: Option<&'a Path>,
    pub chat_template: Option<&'a Path>,
}

impl PromptEncoder {
    /// `max_length` caps the whole prompt (template included); `None` takes the recipe's
    /// limit (Sentence Transformers' `max_seq_length`, the tokenizer's `model_max_length`,
    /// Qwen3-Reranker's 8192), never more than `max_position`.
    pub fn load(
        files: PromptFiles,
        recipe: &Recipe,
        default_instruction: Option<String>,
        max_length: Option<usize>,
        max_position: usize,
    ) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(files.tokenizer).map_err(|err| {
            ModelError::Tokenizer(format!("{}: {err}", files.tokenizer.display()))
        })?;
        let config = TokenizerConfig::read(files.tokenizer_config)?;
        let max_length = max_length
            .or(recipe.max_length())
            .or(config
                .model_max_length
                .filter(|&n| n >= 1.0 && n < max_position as f64)
                .map(|n| n as usize))
            .map_or(max_position, |n| n.min(max_position));
        let pair = match recipe {
            Recipe::CrossEncoder(_) => Some(PairTemplate::read(&tokenizer)?),
            _ => None,
        };
        let (plain, instructed) = match (&pair, recipe.fixed_layouts(config.prompt_bos())) {
            (Some(pair), _) => (pair.layout(&tokenizer), None),
            (None, Some((plain, instructed))) => (plain, Some(instructed)),
            (None, None) => {
                let source = match files.chat_template {
                    Some(path) => std::fs::read_to_string(path).map_err(|err| {
                        ModelError::Template(format!("{}: {err}", path.display()))
                    })?,
                    None => config.template()?,
                };
                let (messages, kwargs) = recipe.chat_messages();
                let template = ChatTemplate::new(&source, config.template_variables(kwargs))?;
                let plain = template
                    .layout(messages, false)?
                    .expect("a layout without an instruction always has its slots");
                let instructed = match messages {
                    Messages::QueryDocument { .. } => template.layout(messages, true)?,
                    Messages::SystemQueryUserDocument => None,
                };
                (plain, instructed)
            }
        };
        if default_instruction.is_some() && instructed.is_none() {
            return Err(ModelError::Template(format!(
                "an instruction is configured, but the {} prompt has no place for one",
                recipe.name()
            )));
        }
        Self::new(
            tokenizer,
            (&plain, instructed.as_ref(), pair),
            default_instruction,
            recipe.text_rule(),
            max_length,
        )
    }

    fn new(
        mut tokenizer: Tokenizer,
        (plain, instructed, pair): (&Layout, Option<&Layout>, Option<PairTemplate>),
        default_instruction: Option<String>,
        text_rule: TextRule,
        max_length: usize,
    ) -> Result<Self> {
        tokenizer
            .with_truncation(None)
            .map_err(|err| ModelError::Tokenizer(err.to_string()))?;
        tokenizer.with_padding(None);
        let mut specials: Vec<(String, u32)> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, token)| (token.content, id))
            .collect();
        // Longest first, so that a marker never matches as the prefix of a longer one.
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        // Special markers in user text are split as text.
        tokenizer.set_encode_special_tokens(true);
        let max_token_chars = 2 * tokenizer
            .get_vocab(true)
            .keys()
            .map(|token| token.chars().count())
            .max()
            .unwrap_or(1);
        let encoder = PromptEncoder {
            text_tokenizer: tokenizer,
            plain: split_at_specials(plain, &specials),
            instructed: instructed.map(|layout| split_at_specials(layout, &specials)),
            pair,
            default_instruction,
            text_rule,
            max_length,
            max_token_chars,
        };
        let template_len = encoder
            .assemble(
                encoder.pieces(encoder.default_instruction.is_some())?,
                ["", "", encoder.default_instruction.as_deref().unwrap_or("")],
            )?
            .0
            .len();
        if template_len >= max_length {
            return Err(ModelError::Template(format!(
                "the template alone takes {template_len} tokens, the model allows {max_length}"
            )));
        }
        Ok(encoder)
    }

    /// The longest prompt the model accepts, template included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// About the most memory the tokenizer takes for `text`: [`TOKENIZER_BYTES_PER_BYTE`]
    /// times the most of it tokenized at once, a recipe cut or a doubling past what the
    /// prompt holds, 4 bytes a character.
    pub fn tokenizing_bytes(&self, text: &str) -> usize {
        let at_once_chars = match self.text_rule {
            TextRule::ReferenceCuts => DOCUMENT_CHAR_LIMIT + 1,
            TextRule::Verbatim => (self.max_length + CUT_MARGIN_TOKENS) * CHARS_PER_TOKEN_GUESS * 2,
        };
        TOKENIZER_BYTES_PER_BYTE.saturating_mul(text.len().min(at_once_chars * 4))
    }

    /// The vocabulary id of one token.
    pub fn token_id(&self, token: &str) -> Result<u32> {
        self.text_tokenizer
            .token_to_id(token)
            .ok_or_else(|| ModelError::Tokenizer(format!("the vocabulary has no token `{token}`")))
    }

    /// Whether a request may bring its own instruction.
    pub fn accepts_instruction(&self) -> bool {
        self.instructed.is_some()
    }

    pub fn default_instruction(&self) -> Option<&str> {
        self.default_instruction.as_deref()
    }

    /// An encoder's token between query and document (BERT's `[SEP]`).
    pub fn pair_separator(&self) -> Option<u32> {
        self.pair.as_ref().and_then(PairTemplate::separator)
    }

    fn pieces(&self, instructed: bool) -> Result<&[Piece]> {
        if !instructed {
            return Ok(&self.plain);
        }
        self.instructed
            .as_deref()
            .ok_or(ModelError::InstructionNotAccepted)
    }

    /// The token ids of the prompt for one pair: the recipe's text rule, the layout, joined
    /// tokenization; then the token limits, which only ever shorten the document.
    ///
    /// Memory follows what the prompt can hold, not the text's size: a document is first
    /// cut, at the end the token limits drop, to a piece that still tokenizes to more than
    /// the model keeps (and a margin), so the tokens kept are the same as from the whole; a
    /// query or instruction longer than the model's length is refused from such a piece.
    pub fn encode(
        &self,
        query: &str,
        document: &str,
        instruction: Option<&str>,
        limits: TokenLimits,
    ) -> Result<EncodedPair> {
        let (query, document) = match self.text_rule {
            TextRule::ReferenceCuts => (
                cut_and_strip(query, QUERY_CHAR_LIMIT),
                cut_and_strip(document, DOCUMENT_CHAR_LIMIT),
            ),
            TextRule::Verbatim => (query, document),
        };
        let instruction = instruction.or(self.default_instruction.as_deref());
        if let Some(pair) = &self.pair {
            return match instruction {
                Some(_) => Err(ModelError::InstructionNotAccepted),
                None => pair.encode(
                    |text, tokens, from| self.head_ids(text, tokens, from),
                    (query, document),
                    limits,
                    self.max_length,
                ),
            };
        }
        for (what, text) in [("query", Some(query)), ("instruction", instruction)] {
            let text = text.unwrap_or("");
            let (piece, _) = self.head(
                text,
                self.max_length,
                usize::MAX,
                TruncationDirection::Right,
            )?;
            if piece.len() < text.len() {
                return Err(ModelError::InputTooLong(format!(
                    "the {what} alone takes more than the model's {} tokens",
                    self.max_length
                )));
            }
        }
        let kept_at_most = self
            .max_length
            .min(limits.max_tokens_per_doc.unwrap_or(usize::MAX));
        let document = self
            .head(
                document,
                kept_at_most + CUT_MARGIN_TOKENS,
                usize::MAX,
                limits.direction,
            )?
            .0;
        let pieces = self.pieces(instruction.is_some())?;
        let (mut ids, document_span) =
            self.assemble(pieces, [query, document, instruction.unwrap_or("")])?;
        let fixed = ids.len() - document_span.len();
        if fixed > self.max_length {
            return Err(ModelError::InputTooLong(format!(
                "the prompt without the document takes {fixed} tokens (query, instruction and template), over the model's {}",
                self.max_length
            )));
        }
        let requested = document_span
            .len()
            .min(limits.max_tokens_per_doc.unwrap_or(usize::MAX));
        let room = self.max_length - fixed;
        let over_max_length = requested > room;
        let keep = requested.min(room);
        let truncated_tokens = document_span.len() - keep;
        if truncated_tokens > 0 {
            let dropped = match limits.direction {
                TruncationDirection::Right => document_span.start + keep..document_span.end,
                TruncationDirection::Left => {
                    document_span.start..document_span.start + truncated_tokens
                }
            };
            ids.drain(dropped);
        }
        Ok(EncodedPair {
            ids,
            truncated_tokens,
            over_max_length,
        })
    }

    /// A prefix (`Right`) or suffix (`Left`) of `text` long enough to hold more than
    /// `tokens` tokens or `chars` characters, whichever is shorter, and its tokens; all of
    /// `text` when it holds neither, untokenized (`None`) when its length alone shows it.
    /// Tokenizes doubling lengths, from `tokens` times a guess of characters per token, so
    /// that work and memory follow what is asked for, not the text's size.
    pub(super) fn head<'t>(
        &self,
        text: &'t str,
        tokens: usize,
        chars: usize,
        from: TruncationDirection,
    ) -> Result<(&'t str, Option<Encoding>)> {
        let mut take = tokens
            .saturating_mul(CHARS_PER_TOKEN_GUESS)
            .min(chars)
            .max(1);
        // A text of fewer bytes has fewer characters, too.
        if text.len() <= take {
            return Ok((text, None));
        }
        loop {
            let piece = match from {
                TruncationDirection::Right => {
                    &text[..text.char_indices().nth(take).map_or(text.len(), |(i, _)| i)]
                }
                TruncationDirection::Left => {
                    &text[text
                        .char_indices()
                        .rev()
                        .nth(take - 1)
                        .map_or(0, |(i, _)| i)..]
                }
            };
            let encoding = self.tokenize(piece)?;
            if piece.len() == text.len() || encoding.len() > tokens || take >= chars {
                return Ok((piece, Some(encoding)));
            }
            take = take.saturating_mul(2).min(chars);
        }
    }

    /// The ids of at least the first (`Right`) or last (`Left`) `tokens` tokens of `text`,
    /// as the whole text tokenizes them.
    fn head_ids(&self, text: &str, tokens: usize, from: TruncationDirection) -> Result<Vec<u32>> {
        let (piece, encoding) = self.head(text, tokens + CUT_MARGIN_TOKENS, usize::MAX, from)?;
        Ok(match encoding {
            Some(encoding) => encoding.get_ids().to_vec(),
            None => self.tokenize(piece)?.get_ids().to_vec(),
        })
    }

    pub(super) fn tokenize(&self, text: &str) -> Result<Encoding> {
        self.text_tokenizer
            .encode(text, false)
            .map_err(|err| ModelError::Tokenizer(err.to_string()))
    }

    /// The ids of `pieces` with the slots filled by `[query, document, instruction]`, and
    /// the positions of the document's own tokens among them.
    fn assemble(&self, pieces: &[Piece], texts: [&str; 3]) -> Result<(Vec<u32>, Range<usize>)> {
        let [query, document, instruction] = texts;
        let mut ids = Vec::new();
        let mut document_span = 0..0;
        let mut run = String::new();
        let mut document_bytes: Option<Range<usize>> = None;
        for piece in pieces {
            match piece {
                Piece::Special(id) => {
                    self.flush(&mut run, &mut document_bytes, &mut ids, &mut document_span)?;
                    ids.push(*id);
                }
                Piece::Break => {
                    self.flush(&mut run, &mut document_bytes, &mut ids, &mut document_span)?
                }
                Piece::Text(text) => run.push_str(text),
                Piece::Slot(slot) => {
                    let text = match slot {
                        Slot::Query => query,
                        Slot::Document => document,
                        Slot::Instruction => instruction,
                    };
                    if *slot == Slot::Document {
                        document_bytes = Some(run.len()..run.len() + text.len());
                    }
                    run.push_str(text);
                }
            }
        }
        self.flush(&mut run, &mut document_bytes, &mut ids, &mut document_span)?;
        Ok((ids, document_span))
    }

    /// Tokenizes a run of text; when it holds the document, finds the tokens that lie
    /// wholly inside it (a token the document shares with the template stays).
    fn flush(
        &self,
        run: &mut String,
        document_bytes: &mut Option<Range<usize>>,
        ids: &mut Vec<u32>,
        document_span: &mut Range<usize>,
    ) -> Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let tokenizer_error = |err: tokenizers::Error| ModelError::Tokenizer(err.to_string());
        match document_bytes.take() {
            None => {
                let encoding = self
                    .text_tokenizer
                    .encode_fast(run.as_str(), false)
                    .map_err(tokenizer_error)?;
                ids.extend_from_slice(encoding.get_ids());
            }
            Some(bytes) => {
                let encoding = self
                    .text_tokenizer
                    .encode(run.as_str(), false)
                    .map_err(tokenizer_error)?;
                let inside: Vec<usize> = encoding
                    .get_offsets()
                    .iter()
                    .enumerate()
                    .filter(|(_, (start, end))| {
                        *start >= bytes.start && *end <= bytes.end && end > start
                    })
                    .map(|(i, _)| i)
                    .collect();
                *document_span = match (inside.first(), inside.last()) {
                    (Some(&first), Some(&last)) => ids.len() + first..ids.len() + last + 1,
                    _ => ids.len()..ids.len(),
                };
                ids.extend_from_slice(encoding.get_ids());
            }
        }
        run.clear();
        Ok(())
    }
}

/// A layout's fixed text cut at the tokenizer's special markers.
fn split_at_specials(layout: &Layout, specials: &[(String, u32)]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    for part in &layout.parts {
        let text = match part {
            Part::Slot(slot) => {
                pieces.push(Piece::Slot(*slot));
                continue;
            }
            Part::Break => {
                pieces.push(Piece::Break);
                continue;
            }
            Part::Text(text) => text.as_str(),
        };
        let mut plain_start = 0;
        let mut at = 0;
        while at < text.len() {
            match specials
                .iter()
                .find(|(marker, _)| text[at..].starts_with(marker.as_str()))
            {
                Some((marker, id)) => {
                    if plain_start < at {
                        pieces.push(Piece::Text(text[plain_start..at].to_owned()));
                    }
                    pieces.push(Piece::Special(*id));
                    at += marker.len();
                    plain_start = at;
                }
                None => at += text[at..].chars().next().map_or(1, char::len_utf8),
            }
        }
        if plain_start < text.len() {
            pieces.push(Piece::Text(text[plain_start..].to_owned()));
        }
    }
    pieces
}

/// The reference's `text[:limit].strip()`: a cut at `limit` characters (code points), then
/// Python's notion of whitespace stripped from both ends.
pub fn cut_and_strip(text: &str, limit: usize) -> &str {
    let end = text
        .char_indices()
        .nth(limit)
        .map_or(text.len(), |(i, _)| i);
    text[..end].trim_matches(is_python_whitespace)
}

/// `str.isspace()`: Unicode White_Space plus the separators U+001C..U+001F.
pub(super) fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests;
