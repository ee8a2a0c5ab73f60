//! Settings whose values are a fixed set of words, declared once as clap's `ValueEnum`: the
//! same words, in any case, on the command line, in the environment and in the settings file
//! (through `FromStr` and `Display`, which serde uses).

use std::fmt;

use clap::ValueEnum;

/// One of `T`'s words (or an alias), in any case; `what` names the setting in the error.
pub(crate) fn parse<T: ValueEnum>(what: &str, text: &str) -> Result<T, String> {
    let text = text.trim();
    T::from_str(text, true).map_err(|_| {
        let words: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|value| Some(value.to_possible_value()?.get_name().to_owned()))
            .collect();
        let expected = match words.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => words.join(""),
        };
        format!(
            "unknown {what} `{}` (expected {expected})",
            text.to_ascii_lowercase()
        )
    })
}

/// Writes the word `value` is spelled as.
pub(crate) fn write<T: ValueEnum>(value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match value.to_possible_value() {
        Some(word) => f.write_str(word.get_name()),
        None => Err(fmt::Error),
    }
}
