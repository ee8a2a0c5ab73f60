//! The model layer's word-valued settings as clap values, read from the tables their types
//! declare (`crate::choice`): the model layer needs no clap, and `--help` lists the words.

use std::sync::OnceLock;

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::choice::Words;
use crate::model::{DTypeSpec, RecipeChoice};

fn possible_value<T: Words>(value: &T) -> PossibleValue {
    let word = value.word();
    PossibleValue::new(word.name)
        .aliases(word.aliases.iter().copied())
        .help(word.help)
}

fn values<T: Words + Send + Sync>(values: &'static OnceLock<Vec<T>>) -> &'static [T] {
    values.get_or_init(|| T::WORDS.iter().map(|word| word.value).collect())
}

macro_rules! value_enum_of_words {
    ($type:ty) => {
        impl ValueEnum for $type {
            fn value_variants<'a>() -> &'a [Self] {
                static VALUES: OnceLock<Vec<$type>> = OnceLock::new();
                values(&VALUES)
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(possible_value(self))
            }
        }
    };
}

value_enum_of_words!(DTypeSpec);
value_enum_of_words!(RecipeChoice);
