//! The service layer: the served models, each an engine with its own batcher, and the one
//! way a request is scored: pick the model, admit, tokenize off the runtime, batch, rank.
//! The HTTP layer reaches the model only through it, mapping request shapes to [`ScoreJob`]
//! and [`Scoring`] back.

mod cache;
mod error;
mod pipeline;
mod request;
mod served;
mod startup;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::metrics::Metrics;
/// Which end of an over-long document a request keeps.
pub use crate::model::TruncationDirection;
use crate::model::{Chunking, DOCUMENT_CHAR_LIMIT, QUERY_CHAR_LIMIT};
use crate::settings::{LongDocuments, ModelNamePolicy};
pub use error::ServiceError;
pub use request::{BestWindow, Pairs, Ranked, ScoreJob, Scoring, rank_scores};
pub use served::ServedModel;
pub use startup::LoadedModel;

/// The longest texts a request may send, in characters.
#[derive(Debug, Clone, Copy)]
pub struct CharLimits {
    pub query: usize,
    pub document: usize,
}

/// Limits every request is held to.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_documents: usize,
    pub timeout: Duration,
    pub max_tokens_per_doc: Option<usize>,
    /// The most prompt tokens one request may have: what a model's queue holds.
    pub max_request_tokens: usize,
}

/// The served models and the limits every request is held to.
pub struct Service {
    models: Vec<ServedModel>,
    limits: RequestLimits,
    admission: Arc<Semaphore>,
    max_concurrent: usize,
    /// KiB of tokenizer memory; a request holds its estimate while it tokenizes.
    tokenizing_memory: Arc<Semaphore>,
    tokenizing_budget_kib: usize,
    model_name_policy: ModelNamePolicy,
    long_documents: LongDocuments,
    chunking: Chunking,
    metrics: Arc<Metrics>,
}

impl Service {
    pub fn models(&self) -> &[ServedModel] {
        &self.models
    }

    /// Every name of every model, in order.
    pub fn served_names(&self) -> Vec<String> {
        self.models.iter().flat_map(|m| m.names.clone()).collect()
    }

    /// Whether every model's worker still runs.
    pub fn is_healthy(&self) -> bool {
        self.models.iter().all(|m| m.batcher.is_healthy())
    }

    /// The longest query and document, in characters, a request may send.
    pub fn char_limits(&self) -> CharLimits {
        CharLimits {
            query: QUERY_CHAR_LIMIT,
            document: DOCUMENT_CHAR_LIMIT,
        }
    }

    /// The model a request names, and the name to answer with: the first model when it
    /// names none, or (under the `any` policy) one that is not served.
    pub fn model(&self, requested: Option<&str>) -> Result<(&ServedModel, String), ServiceError> {
        let first = || (&self.models[0], self.models[0].names[0].clone());
        let Some(name) = requested.filter(|name| !name.is_empty()) else {
            return Ok(first());
        };
        if let Some(served) = self
            .models
            .iter()
            .find(|m| m.names.iter().any(|n| n == name))
        {
            return Ok((served, name.to_owned()));
        }
        match self.model_name_policy {
            ModelNamePolicy::Any => {
                self.metrics.unknown_model_names.inc();
                Ok(first())
            }
            ModelNamePolicy::Strict => Err(ServiceError::UnknownModel {
                requested: name.to_owned(),
                served: self.served_names(),
            }),
        }
    }
}
