//! Settings whose values are a fixed set of words, declared once as a table of [`Word`]s: the
//! same words, in any case, on the command line, in the environment and in the settings file
//! (through `FromStr` and `Display`, which serde uses). The command line reads the same table
//! (`settings` makes each such type a clap `ValueEnum`), so that the layers below settings
//! need no clap.

/// One value's word, the other spellings it accepts, and what it means (shown by `--help`).
pub struct Word<T> {
    pub value: T,
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub help: Option<&'static str>,
}

/// A type whose values are spelled as words.
pub trait Words: Sized + Copy + PartialEq + 'static {
    /// Every value, in the order `--help` lists them.
    const WORDS: &'static [Word<Self>];

    /// The table's entry of this value.
    fn word(&self) -> &'static Word<Self> {
        Self::WORDS
            .iter()
            .find(|word| word.value == *self)
            .expect("every value is in its table")
    }
}

/// One of `T`'s words (or an alias), in any case; `what` names the setting in the error.
pub(crate) fn parse<T: Words>(what: &str, text: &str) -> Result<T, String> {
    let text = text.trim();
    let matches = |spelling: &str| spelling.eq_ignore_ascii_case(text);
    T::WORDS
        .iter()
        .find(|word| matches(word.name) || word.aliases.iter().any(|alias| matches(alias)))
        .map(|word| word.value)
        .ok_or_else(|| {
            let words: Vec<&str> = T::WORDS.iter().map(|word| word.name).collect();
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

/// `FromStr` and `Display` of a [`Words`] settings type; `$what` names the setting in errors.
macro_rules! spelled_as_words {
    ($type:ty, $what:literal) => {
        impl std::str::FromStr for $type {
            type Err = String;

            fn from_str(text: &str) -> std::result::Result<Self, String> {
                $crate::choice::parse($what, text)
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::choice::Words::word(self).name)
            }
        }
    };
}

pub(crate) use spelled_as_words;
