//! From a (query, document) pair to the token ids the model scores.
//!
//! The model's own chat template is rendered once, with placeholder contents, and split at
//! the placeholders into three template pieces. Those are tokenized once with their special
//! markers parsed; query and document are tokenized per pair as plain text, so a document
//! that contains `<|im_end|>` cannot close its own turn.

use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::Deserialize;
use tokenizers::Tokenizer;

use super::error::{ModelError, Result};

/// The reference cuts query and document to these many characters before stripping.
pub const QUERY_CHAR_LIMIT: usize = 2_000;
pub const DOCUMENT_CHAR_LIMIT: usize = 10_000;
/// The token whose logit is the relevance score.
pub const YES_TOKEN: &str = "Yes";

const QUERY_PLACEHOLDER: &str = "\u{1}zerank-query\u{1}";
const DOCUMENT_PLACEHOLDER: &str = "\u{1}zerank-document\u{1}";

/// Which end of an over-long document is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruncationDirection {
    /// Keep the beginning, drop the end (the default).
    #[default]
    Right,
    /// Keep the end, drop the beginning.
    Left,
}

/// Token limits applied on top of the reference's character cuts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenLimits {
    /// At most this many document tokens.
    pub max_document_tokens: Option<usize>,
    pub direction: TruncationDirection,
}

/// A pair ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    pub ids: Vec<u32>,
    /// Document tokens dropped by the token limits.
    pub truncated_tokens: usize,
    /// Whether the model's length limit, not just `max_document_tokens`, cut the document.
    pub over_max_length: bool,
}

pub struct PromptEncoder {
    /// Never parses special markers: user text only passes through this one.
    text_tokenizer: Tokenizer,
    head: Vec<u32>,
    middle: Vec<u32>,
    tail: Vec<u32>,
    max_length: usize,
    yes_token_id: u32,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<ChatTemplateField>,
    #[serde(default)]
    model_max_length: Option<f64>,
    #[serde(default)]
    pad_token: Option<SpecialToken>,
    #[serde(default)]
    eos_token: Option<SpecialToken>,
    #[serde(default)]
    bos_token: Option<SpecialToken>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChatTemplateField {
    Single(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    fn content(&self) -> &str {
        match self {
            SpecialToken::Text(s) | SpecialToken::Added { content: s } => s,
        }
    }
}

impl PromptEncoder {
    /// `max_length` caps the whole prompt (template included); `None` takes the model's limit
    /// (the smaller of `model_max_position` and the tokenizer's `model_max_length`).
    pub fn load(
        tokenizer_path: &Path,
        tokenizer_config_path: Option<&Path>,
        chat_template_path: Option<&Path>,
        model_max_position: usize,
    ) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(tokenizer_path)
            .map_err(|err| ModelError::Tokenizer(format!("{}: {err}", tokenizer_path.display())))?;
        let config: TokenizerConfig = match tokenizer_config_path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|err| ModelError::Tokenizer(format!("{}: {err}", path.display())))?;
                serde_json::from_str(&text).map_err(|err| ModelError::InvalidFile {
                    path: path.to_owned(),
                    message: err.to_string(),
                })?
            }
            None => TokenizerConfig::default(),
        };
        let template = match chat_template_path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|err| ModelError::Template(format!("{}: {err}", path.display())))?,
            None => config.template()?,
        };
        let max_length = config
            .model_max_length
            .filter(|&n| n >= 1.0 && n < model_max_position as f64)
            .map_or(model_max_position, |n| n as usize);
        Self::new(tokenizer, &template, &config, max_length)
    }

    fn new(
        tokenizer: Tokenizer,
        template: &str,
        config: &TokenizerConfig,
        max_length: usize,
    ) -> Result<Self> {
        let token_id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                ModelError::Tokenizer(format!("the vocabulary has no token `{token}`"))
            })
        };
        let yes_token_id = token_id(YES_TOKEN)?;
        let rendered = render_template(template, config)?;
        let (head, middle, tail) = split_rendered(&rendered)?;
        let mut tokenizer = tokenizer;
        tokenizer
            .with_truncation(None)
            .map_err(|err| ModelError::Tokenizer(err.to_string()))?;
        tokenizer.with_padding(None);
        // The template's own markers are parsed as special tokens...
        tokenizer.set_encode_special_tokens(false);
        let encode = |text: &str| encode_with(&tokenizer, text);
        let (head, middle, tail) = (encode(head)?, encode(middle)?, encode(tail)?);
        // ...user text never is.
        let mut text_tokenizer = tokenizer;
        text_tokenizer.set_encode_special_tokens(true);
        let template_len = head.len() + middle.len() + tail.len();
        if template_len >= max_length {
            return Err(ModelError::Template(format!(
                "the template alone takes {template_len} tokens, the model allows {max_length}"
            )));
        }
        Ok(PromptEncoder {
            text_tokenizer,
            head,
            middle,
            tail,
            max_length,
            yes_token_id,
        })
    }

    pub fn yes_token_id(&self) -> u32 {
        self.yes_token_id
    }

    /// The longest prompt the model accepts, template included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The token ids of the prompt for one pair, per the reference recipe: character cuts,
    /// whitespace strip, template, tokenization; then the token limits, which only ever
    /// shorten the document.
    pub fn encode(&self, query: &str, document: &str, limits: TokenLimits) -> Result<EncodedPair> {
        let query = self.encode_text(cut_and_strip(query, QUERY_CHAR_LIMIT))?;
        let mut document = self.encode_text(cut_and_strip(document, DOCUMENT_CHAR_LIMIT))?;
        let fixed = self.head.len() + query.len() + self.middle.len() + self.tail.len();
        if fixed > self.max_length {
            return Err(ModelError::InputTooLong(format!(
                "the query takes {} tokens; with the template that is {fixed}, over the model's {}",
                query.len(),
                self.max_length
            )));
        }
        let requested = document
            .len()
            .min(limits.max_document_tokens.unwrap_or(usize::MAX));
        let over_max_length = requested > self.max_length - fixed;
        let room = requested.min(self.max_length - fixed);
        let truncated_tokens = document.len() - room;
        if truncated_tokens > 0 {
            match limits.direction {
                TruncationDirection::Right => document.truncate(room),
                TruncationDirection::Left => {
                    document.drain(..truncated_tokens);
                }
            }
        }
        let mut ids = Vec::with_capacity(fixed + document.len());
        for part in [&self.head, &query, &self.middle, &document, &self.tail] {
            ids.extend_from_slice(part);
        }
        Ok(EncodedPair {
            ids,
            truncated_tokens,
            over_max_length,
        })
    }

    fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        encode_with(&self.text_tokenizer, text)
    }
}

impl TokenizerConfig {
    fn template(&self) -> Result<String> {
        match &self.chat_template {
            Some(ChatTemplateField::Single(t)) => Ok(t.clone()),
            Some(ChatTemplateField::Named(list)) => list
                .iter()
                .find(|t| t.name == "default")
                .or(list.first())
                .map(|t| t.template.clone())
                .ok_or_else(|| ModelError::Template("`chat_template` list is empty".into())),
            None => Err(ModelError::Template(
                "no chat template: neither tokenizer_config.json `chat_template` nor chat_template.jinja".into(),
            )),
        }
    }
}

fn encode_with(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    tokenizer
        .encode_fast(text, false)
        .map(|enc| enc.get_ids().to_vec())
        .map_err(|err| ModelError::Tokenizer(err.to_string()))
}

/// Renders the template as transformers does (trim_blocks, lstrip_blocks, Python string
/// methods) for a system turn holding the query and a user turn holding the document.
fn render_template(template: &str, config: &TokenizerConfig) -> Result<String> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|err| ModelError::Template(err.to_string()))?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        },
    );
    let template_error = |err: JinjaError| ModelError::Template(err.to_string());
    env.add_template("chat", template).map_err(template_error)?;
    let special = |t: &Option<SpecialToken>| t.as_ref().map(|t| t.content().to_owned());
    env.get_template("chat")
        .map_err(template_error)?
        .render(context! {
            messages => vec![
                context! { role => "system", content => QUERY_PLACEHOLDER },
                context! { role => "user", content => DOCUMENT_PLACEHOLDER },
            ],
            add_generation_prompt => true,
            bos_token => special(&config.bos_token),
            eos_token => special(&config.eos_token),
            pad_token => special(&config.pad_token),
        })
        .map_err(template_error)
}

/// `text` split around its one occurrence of `placeholder`.
fn split_once_exactly<'a>(
    text: &'a str,
    placeholder: &str,
    what: &str,
) -> Result<(&'a str, &'a str)> {
    let parts: Vec<&str> = text.split(placeholder).collect();
    match parts.as_slice() {
        [before, after] => Ok((*before, *after)),
        _ => Err(ModelError::Template(format!(
            "the template must place the {what} exactly once, verbatim; it placed it {} times",
            parts.len() - 1
        ))),
    }
}

/// The rendered template around the two placeholders; each must appear exactly once.
fn split_rendered(rendered: &str) -> Result<(&str, &str, &str)> {
    let (head, rest) = split_once_exactly(rendered, QUERY_PLACEHOLDER, "query (system turn)")?;
    let (middle, tail) = split_once_exactly(rest, DOCUMENT_PLACEHOLDER, "document (user turn)")?;
    if middle.contains(QUERY_PLACEHOLDER) || head.contains(DOCUMENT_PLACEHOLDER) {
        return Err(ModelError::Template(
            "the template places the document before the query".into(),
        ));
    }
    Ok((head, middle, tail))
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
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_count_characters_and_strip_python_whitespace() {
        assert_eq!(cut_and_strip("  héllo  ", 100), "héllo");
        assert_eq!(cut_and_strip("ééééé", 3), "ééé");
        assert_eq!(cut_and_strip("ab   cd", 4), "ab");
        assert_eq!(
            cut_and_strip("\u{1c}\u{a0}\u{3000}x\u{85}\u{2029}", 100),
            "x"
        );
        assert_eq!(cut_and_strip("🙂🙂", 1), "🙂");
        assert_eq!(cut_and_strip("", 10), "");
        // Zero-width space is not whitespace to Python either.
        assert_eq!(cut_and_strip("\u{200b}x", 10), "\u{200b}x");
    }

    #[test]
    fn split_needs_each_placeholder_once() {
        let ok = format!("<a>{QUERY_PLACEHOLDER}<b>{DOCUMENT_PLACEHOLDER}<c>");
        assert_eq!(split_rendered(&ok).unwrap(), ("<a>", "<b>", "<c>"));
        let twice = format!("{QUERY_PLACEHOLDER}{QUERY_PLACEHOLDER}{DOCUMENT_PLACEHOLDER}");
        assert!(split_rendered(&twice).is_err());
        assert!(split_rendered("no placeholders").is_err());
        let swapped = format!("{DOCUMENT_PLACEHOLDER}x{QUERY_PLACEHOLDER}");
        assert!(split_rendered(&swapped).is_err());
    }
}
