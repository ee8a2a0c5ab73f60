//! An encoder cross-encoder's input: the query and the document tokenized apart, joined by
//! the special tokens of the tokenizer's own pair template (`[CLS] A [SEP] B [SEP]`,
//! `<s> A </s></s> B </s>`), and cut to the model's length as Sentence Transformers' `predict`
//! cuts it: the tokenizer's `longest_first` truncation over the pair.

use tokenizers::Tokenizer;

use super::limits::{EncodedPair, TokenLimits, TruncationDirection};
use super::template::{Layout, Part, Slot};
use crate::model::error::{ModelError, Result};

/// The special tokens around and between the two texts of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairTemplate {
    before: Vec<u32>,
    between: Vec<u32>,
    after: Vec<u32>,
}

impl PairTemplate {
    /// Read from the tokenizer's encoding of a sample pair (without padding or
    /// truncation): tokens of neither text are the template's.
    pub fn read(tokenizer: &Tokenizer) -> Result<Self> {
        let error = |err: tokenizers::Error| ModelError::Tokenizer(err.to_string());
        let mut tokenizer = tokenizer.clone();
        tokenizer.with_truncation(None).map_err(error)?;
        tokenizer.with_padding(None);
        let pair = tokenizer.encode(("a", "b"), true).map_err(error)?;
        let mut template = PairTemplate {
            before: Vec::new(),
            between: Vec::new(),
            after: Vec::new(),
        };
        let mut seen = None;
        for (&id, sequence) in pair.get_ids().iter().zip(pair.get_sequence_ids()) {
            match (sequence, seen) {
                (Some(text), _) => seen = Some(text),
                (None, None) => template.before.push(id),
                (None, Some(0)) => template.between.push(id),
                (None, Some(_)) => template.after.push(id),
            }
        }
        if seen != Some(1) {
            return Err(ModelError::Tokenizer(
                "the tokenizer has no pair template (its post-processor does not join two texts)"
                    .into(),
            ));
        }
        Ok(template)
    }

    /// The template as a prompt layout, its special tokens as their text.
    pub fn layout(&self, tokenizer: &Tokenizer) -> Layout {
        let text = |ids: &[u32]| {
            Part::Text(
                ids.iter()
                    .filter_map(|&id| tokenizer.id_to_token(id))
                    .collect(),
            )
        };
        Layout {
            parts: vec![
                text(&self.before),
                Part::Slot(Slot::Query),
                text(&self.between),
                Part::Slot(Slot::Document),
                text(&self.after),
            ],
        }
    }

    /// The token that ends the query, where BERT's second token type starts after.
    pub fn separator(&self) -> Option<u32> {
        self.between.first().copied()
    }

    fn special_tokens(&self) -> usize {
        self.before.len() + self.between.len() + self.after.len()
    }

    /// A pair as an encoder reads it: the query's tokens, the document's (cut first to
    /// `max_tokens_per_doc` from `limits.direction`), the template's special tokens, and
    /// `longest_first` over the two to `max_length`. `tokens_of(text, n, from)` gives at
    /// least the first (or last) `n` tokens of a text, as the whole text tokenizes them.
    pub fn encode(
        &self,
        tokens_of: impl Fn(&str, usize, TruncationDirection) -> Result<Vec<u32>>,
        (query, document): (&str, &str),
        limits: TokenLimits,
        max_length: usize,
    ) -> Result<EncodedPair> {
        let budget = max_length.saturating_sub(self.special_tokens());
        let mut query = tokens_of(query, budget, TruncationDirection::Right)?;
        let requested = limits.max_tokens_per_doc.unwrap_or(usize::MAX);
        let mut document = tokens_of(document, budget.min(requested), limits.direction)?;
        let document_tokens = document.len();
        let (query_keep, document_keep) =
            longest_first(query.len(), document.len().min(requested), budget);
        query.truncate(query_keep);
        if document_keep < document.len() {
            match limits.direction {
                TruncationDirection::Right => document.truncate(document_keep),
                TruncationDirection::Left => {
                    document.drain(..document.len() - document_keep);
                }
            }
        }
        Ok(EncodedPair {
            ids: [
                &self.before[..],
                &query,
                &self.between,
                &document,
                &self.after,
            ]
            .concat(),
            truncated_tokens: document_tokens - document_keep,
            over_max_length: document_keep < document_tokens.min(requested),
        })
    }
}

/// How many tokens of each text `longest_first` keeps when they hold `query` and `document`
/// tokens and `budget` is the room the template leaves: the longer text gives up tokens
/// until it is as short as the other, then both in turn (the tokenizers library's rule).
pub fn longest_first(query: usize, document: usize, budget: usize) -> (usize, usize) {
    if query + document <= budget {
        return (query, document);
    }
    let (shorter, swapped) = match query > document {
        true => (document, true),
        false => (query, false),
    };
    let mut keep = (shorter, budget.saturating_sub(shorter).max(shorter));
    if shorter > budget {
        keep.1 = shorter;
    }
    if keep.0 + keep.1 > budget {
        keep = (budget / 2, budget / 2 + budget % 2);
    }
    match swapped {
        true => (keep.1, keep.0),
        false => keep,
    }
}

#[cfg(test)]
mod tests {
    use super::longest_first;

    #[test]
    fn longest_first_cuts_the_longer_text_then_both() {
        // Fits: nothing cut.
        assert_eq!(longest_first(5, 10, 20), (5, 10));
        // Only the longer one gives up tokens.
        assert_eq!(longest_first(5, 30, 20), (5, 15));
        assert_eq!(longest_first(30, 5, 20), (15, 5));
        // Both longer than half: half each, the odd token to the second text.
        assert_eq!(longest_first(30, 40, 21), (10, 11));
        assert_eq!(longest_first(40, 30, 21), (11, 10));
    }
}
