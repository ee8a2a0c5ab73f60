//! Prompt layouts: a chat template rendered once, with placeholders, into fixed text and the
//! places where the instruction, the query and the document go.
//!
//! Whether a template can carry a pair is decided by rendering it, as Sentence Transformers
//! does, never by reading its source. The template and the special tokens it is rendered
//! with come from `tokenizer_config.json` (or `chat_template.jinja`).

use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::Deserialize;

use crate::model::error::{ModelError, Result};

/// What a hole in the prompt holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Instruction,
    Query,
    Document,
}

impl Slot {
    fn name(self) -> &'static str {
        match self {
            Slot::Instruction => "instruction",
            Slot::Query => "query",
            Slot::Document => "document",
        }
    }

    /// Surrounding whitespace in the placeholder shows a template that trims its content.
    fn placeholder(self) -> String {
        format!(" \n\u{1}zerank-{}\u{1}\n ", self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Slot(Slot),
    /// The text on either side is tokenized apart, as a recipe that joins token lists does.
    Break,
}

/// A prompt with holes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub parts: Vec<Part>,
}

/// How a pair becomes chat messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Messages {
    /// zerank-1: the query as the system turn, the document as the user turn, and the
    /// generation prompt.
    SystemQueryUserDocument,
    /// Sentence Transformers 6: `[system: instruction]?, query, document`, rendered as the
    /// template says (no generation prompt unless its kwargs ask for one).
    QueryDocument { structured: bool },
}

/// The published Qwen3-Reranker recipe: a fixed system turn, then
/// `<Instruct>: ...\n<Query>: ...\n<Document>: ...` as the user turn, and an empty thinking
/// block as the assistant's start.
pub const QWEN3_RERANKER_DEFAULT_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";
const QWEN3_RERANKER_PREFIX: &str = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n";
const QWEN3_RERANKER_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";

impl Layout {
    pub fn qwen3_reranker() -> Layout {
        Layout {
            parts: vec![
                Part::Text(format!("{QWEN3_RERANKER_PREFIX}<Instruct>: ")),
                Part::Slot(Slot::Instruction),
                Part::Text("\n<Query>: ".into()),
                Part::Slot(Slot::Query),
                Part::Text("\n<Document>: ".into()),
                Part::Slot(Slot::Document),
                Part::Text(QWEN3_RERANKER_SUFFIX.into()),
            ],
        }
    }
}

/// FlagEmbedding's decoder-only reranker (bge-reranker-v2-gemma): BOS, `A: {query}`, `\n`,
/// `B: {passage}`, `\n`, then the prompt, each tokenized alone and the token lists joined
/// (FlagEmbedding/inference/reranker/decoder_only/base.py). Its `prompt` argument replaces
/// the fixed question: that is the instruction's place, the question its default.
pub const BGE_GEMMA_DEFAULT_INSTRUCTION: &str = "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a prediction of either 'Yes' or 'No'.";

impl Layout {
    /// `bos`: the BOS token FlagEmbedding puts first (none when the tokenizer has none, or
    /// when it is the padding token).
    pub fn bge_gemma(bos: Option<&str>) -> Layout {
        let sep = || Part::Text("\n".into());
        let mut parts: Vec<Part> = bos
            .map(|bos| Part::Text(bos.to_owned()))
            .into_iter()
            .collect();
        parts.extend([
            Part::Text("A: ".into()),
            Part::Slot(Slot::Query),
            Part::Break,
            sep(),
            Part::Break,
            Part::Text("B: ".into()),
            Part::Slot(Slot::Document),
            Part::Break,
            sep(),
            Part::Break,
            Part::Slot(Slot::Instruction),
        ]);
        Layout { parts }
    }
}

/// mxbai-rerank-v2's own prompt (mxbai_rerank/mxbai_rerank_v2.py): its chat prefix,
/// `query: {query}` (after `instruction: {instruction}\n` when there is one), `\n`,
/// `document: {document}`, `\n`, its task prompt and its chat suffix, each tokenized alone.
const MXBAI_PREFIX: &str = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n";
const MXBAI_TASK: &str = "You are a search relevance expert who evaluates how well documents match search queries. For each query-document pair, carefully analyze the semantic relationship between them, then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:";
const MXBAI_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n";

impl Layout {
    pub fn mxbai_rerank(with_instruction: bool) -> Layout {
        let text = |t: &str| Part::Text(t.to_owned());
        let mut parts = vec![text(MXBAI_PREFIX), Part::Break];
        if with_instruction {
            parts.extend([
                text("instruction: "),
                Part::Slot(Slot::Instruction),
                text("\n"),
            ]);
        }
        parts.extend([
            text("query: "),
            Part::Slot(Slot::Query),
            Part::Break,
            text("\n"),
            Part::Break,
            text("document: "),
            Part::Slot(Slot::Document),
            Part::Break,
            text("\n"),
            Part::Break,
            text(MXBAI_TASK),
            Part::Break,
            text(MXBAI_SUFFIX),
        ]);
        Layout { parts }
    }
}

/// A chat template with the variables it is rendered with besides the messages.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Special-token strings and the checkpoint's chat-template kwargs.
    variables: serde_json::Map<String, serde_json::Value>,
}

impl ChatTemplate {
    /// Renders like transformers' `apply_chat_template`: trim_blocks, lstrip_blocks, Python
    /// string methods, `raise_exception`.
    pub fn new(
        source: &str,
        variables: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_owned())
            .map_err(template_error)?;
        Ok(ChatTemplate { env, variables })
    }

    fn render(&self, messages: Messages, contents: [Option<&str>; 3]) -> Result<String> {
        use serde_json::json;
        let [instruction, query, document] = contents;
        let message = |role: &str, text: &str| match messages {
            Messages::QueryDocument { structured: true } => {
                json!({ "role": role, "content": [{ "type": "text", "text": text }] })
            }
            _ => json!({ "role": role, "content": text }),
        };
        let mut variables = self.variables.clone();
        let list = match messages {
            Messages::SystemQueryUserDocument => {
                variables.insert("add_generation_prompt".into(), json!(true));
                vec![
                    message("system", query.unwrap_or_default()),
                    message("user", document.unwrap_or_default()),
                ]
            }
            Messages::QueryDocument { .. } => {
                variables
                    .entry("add_generation_prompt")
                    .or_insert(json!(false));
                let mut list: Vec<serde_json::Value> = instruction
                    .map(|text| message("system", text))
                    .into_iter()
                    .collect();
                list.push(message("query", query.unwrap_or_default()));
                list.push(message("document", document.unwrap_or_default()));
                list
            }
        };
        variables.insert("messages".into(), json!(list));
        self.env
            .get_template("chat")
            .map_err(template_error)?
            .render(Value::from(minijinja::value::Serde(&variables)))
            .map_err(template_error)
    }

    /// The layout of a pair's prompt, with an instruction (system message) or without.
    /// `Ok(None)`: with an instruction asked for, the template has no place for one.
    pub fn layout(&self, messages: Messages, with_instruction: bool) -> Result<Option<Layout>> {
        let slots: &[Slot] = if with_instruction {
            &[Slot::Instruction, Slot::Query, Slot::Document]
        } else {
            &[Slot::Query, Slot::Document]
        };
        let placeholders: Vec<(Slot, String)> =
            slots.iter().map(|&s| (s, s.placeholder())).collect();
        let content = |slot: Slot| {
            placeholders
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, p)| p.as_str())
        };
        let rendered = self.render(
            messages,
            [
                content(Slot::Instruction),
                content(Slot::Query),
                content(Slot::Document),
            ],
        )?;
        let mut found: Vec<(usize, Slot, usize)> = Vec::new();
        for (slot, placeholder) in &placeholders {
            let places: Vec<usize> = rendered
                .match_indices(placeholder.as_str())
                .map(|(at, _)| at)
                .collect();
            match places.as_slice() {
                [at] => found.push((*at, *slot, placeholder.len())),
                [] if *slot == Slot::Instruction => {
                    if self.reaches_prompt(messages, *slot)? {
                        tracing::warn!(
                            "the chat template changes the instruction rather than placing it verbatim; instructions are refused"
                        );
                    }
                    return Ok(None);
                }
                [] if self.reaches_prompt(messages, *slot)? => {
                    return Err(ModelError::Template(format!(
                        "the chat template changes the {} text (trims or rewrites it); zerank-server needs it placed verbatim",
                        slot.name()
                    )));
                }
                [] => {
                    return Err(ModelError::Template(format!(
                        "the chat template cannot carry a query/document pair: the {} content does not reach the rendered prompt",
                        slot.name()
                    )));
                }
                many => {
                    return Err(ModelError::Template(format!(
                        "the chat template places the {} {} times; zerank-server needs it exactly once",
                        slot.name(),
                        many.len()
                    )));
                }
            }
        }
        found.sort_by_key(|&(at, _, _)| at);
        let mut parts = Vec::new();
        let mut cursor = 0;
        for (at, slot, len) in found {
            if at > cursor {
                parts.push(Part::Text(rendered[cursor..at].to_owned()));
            }
            parts.push(Part::Slot(slot));
            cursor = at + len;
        }
        if cursor < rendered.len() {
            parts.push(Part::Text(rendered[cursor..].to_owned()));
        }
        Ok(Some(Layout { parts }))
    }

    /// Whether changing `slot`'s content changes the render (Sentence Transformers' probe).
    fn reaches_prompt(&self, messages: Messages, slot: Slot) -> Result<bool> {
        let probe = |text: &'static str| {
            let mut contents = [Some("alpha"), Some("bravo"), Some("charlie")];
            let index = match slot {
                Slot::Instruction => 0,
                Slot::Query => 1,
                Slot::Document => 2,
            };
            contents[index] = Some(text);
            if slot != Slot::Instruction {
                contents[0] = None;
            }
            self.render(messages, contents)
        };
        Ok(probe("delta")? != probe("foxtrot golf")?)
    }
}

/// What a checkpoint's `tokenizer_config.json` says that prompts need.
#[derive(Deserialize, Default)]
pub(super) struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<ChatTemplateField>,
    #[serde(default)]
    pub model_max_length: Option<f64>,
    #[serde(default)]
    pad_token: Option<SpecialToken>,
    #[serde(default)]
    eos_token: Option<SpecialToken>,
    #[serde(default)]
    bos_token: Option<SpecialToken>,
    #[serde(default)]
    unk_token: Option<SpecialToken>,
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

impl TokenizerConfig {
    /// `tokenizer_config.json`, or nothing when the checkpoint has none.
    pub(super) fn read(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(TokenizerConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|err| ModelError::Tokenizer(format!("{}: {err}", path.display())))?;
        serde_json::from_str(&text).map_err(|err| ModelError::InvalidFile {
            path: path.to_owned(),
            message: err.to_string(),
        })
    }

    pub(super) fn template(&self) -> Result<String> {
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

    /// The BOS token a recipe that prepends one uses: none without one, or when it is also
    /// the padding token (FlagEmbedding's rule).
    pub(super) fn prompt_bos(&self) -> Option<&str> {
        let bos = self.bos_token.as_ref()?.content();
        let pad = self.pad_token.as_ref().map(SpecialToken::content);
        (pad != Some(bos)).then_some(bos)
    }

    /// What transformers hands a template besides the messages: the special tokens, then
    /// the checkpoint's own chat-template kwargs.
    pub(super) fn template_variables(
        &self,
        kwargs: serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut variables = serde_json::Map::new();
        for (name, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
            ("unk_token", &self.unk_token),
        ] {
            let value = token
                .as_ref()
                .map_or(serde_json::Value::Null, |t| t.content().into());
            variables.insert(name.into(), value);
        }
        variables.extend(kwargs);
        variables
    }
}

fn template_error(err: JinjaError) -> ModelError {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    ModelError::Template(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(source, serde_json::Map::new()).unwrap()
    }

    const NATIVE: Messages = Messages::QueryDocument { structured: false };

    #[test]
    fn a_score_template_gives_fixed_text_and_slots_in_order() {
        let t = template(
            "{% for m in messages %}{% if m.role == 'system' %}[I]{{ m.content }}{% endif %}{% endfor %}\
             <D>{{ (messages | selectattr('role', 'eq', 'document') | first).content }}\
             <Q>{{ (messages | selectattr('role', 'eq', 'query') | first).content }}<end>",
        );
        let plain = t.layout(NATIVE, false).unwrap().unwrap();
        assert_eq!(
            plain.parts,
            vec![
                Part::Text("<D>".into()),
                Part::Slot(Slot::Document),
                Part::Text("<Q>".into()),
                Part::Slot(Slot::Query),
                Part::Text("<end>".into()),
            ]
        );
        let instructed = t.layout(NATIVE, true).unwrap().unwrap();
        assert_eq!(instructed.parts[0], Part::Text("[I]".into()));
        assert_eq!(instructed.parts[1], Part::Slot(Slot::Instruction));
    }

    #[test]
    fn a_template_that_drops_the_system_message_has_no_instruction_place() {
        let t = template(
            "{% for m in messages %}{% if m.role != 'system' %}{{ m.role }}:{{ m.content }};{% endif %}{% endfor %}",
        );
        assert!(t.layout(NATIVE, true).unwrap().is_none());
        assert!(t.layout(NATIVE, false).unwrap().is_some());
    }

    #[test]
    fn a_template_that_drops_or_trims_a_role_is_refused() {
        // The plain chat template ignores unknown roles: no document, no query.
        let chatml = template(
            "{% for m in messages %}{% if m.role in ['system', 'user'] %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}",
        );
        let err = chatml.layout(NATIVE, false).unwrap_err().to_string();
        assert!(err.contains("cannot carry a query/document pair"), "{err}");
        let trims =
            template("{% for m in messages %}{{ m.role }}:{{ m.content | trim }};{% endfor %}");
        let err = trims.layout(NATIVE, false).unwrap_err().to_string();
        assert!(err.contains("verbatim"), "{err}");
        let twice = template("{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}");
        let err = twice.layout(NATIVE, false).unwrap_err().to_string();
        assert!(err.contains("2 times"), "{err}");
    }

    #[test]
    fn the_fixed_recipes_have_every_slot() {
        for layout in [
            Layout::qwen3_reranker(),
            Layout::bge_gemma(Some("<bos>")),
            Layout::mxbai_rerank(true),
        ] {
            for slot in [Slot::Instruction, Slot::Query, Slot::Document] {
                assert!(layout.parts.contains(&Part::Slot(slot)));
            }
        }
    }
}
