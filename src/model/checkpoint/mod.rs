//! What a checkpoint says and how pairs become token ids: its files (local or on the Hub),
//! the architecture `config.json` names, the recipe that scores it, its chat template, and
//! the prompt encoder with its long-document windows. Nothing here needs the network.

mod architecture;
mod chunks;
mod files;
mod limits;
mod pair;
mod prompt;
mod recipe;
mod template;

pub use architecture::Architecture;
pub use chunks::{Chunking, Window};
pub use files::{CheckpointFiles, ModelSource};
pub use prompt::{
    DOCUMENT_CHAR_LIMIT, EncodedPair, PromptEncoder, PromptFiles, QUERY_CHAR_LIMIT, TokenLimits,
    TruncationDirection, cut_and_strip,
};
pub use recipe::{Calibration, Recipe, RecipeChoice};
