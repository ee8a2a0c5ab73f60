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

/// `FromStr` and `Display` of a `ValueEnum` settings type through [`parse`] and [`write`];
/// `$what` names the setting in errors.
macro_rules! spelled_as_value_enum {
    ($type:ty, $what:literal) => {
        impl std::str::FromStr for $type {
            type Err = String;

            fn from_str(text: &str) -> std::result::Result<Self, String> {
                $crate::choice::parse($what, text)
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                $crate::choice::write(self, f)
            }
        }
    };
}

pub(crate) use spelled_as_value_enum;
