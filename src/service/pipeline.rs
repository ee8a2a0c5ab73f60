//! The one way a request is scored: pick the model, admit, tokenize off the runtime, score
//! (through the cache and the batcher), keep each document's best window.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::request::best_of_windows;
use super::{Pairs, ScoreJob, Scoring, ServedModel, Service, ServiceError};
use crate::metrics::Metrics;
use crate::model::{Chunking, Engine, ModelError, TokenLimits, Window};
use crate::settings::LongDocuments;

/// Holds an admitted request's place until it is answered.
struct Admitted {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.requests_in_flight.dec();
    }
}

/// Counts a request dropped before its answer.
struct DisconnectWatch<'a> {
    answered: bool,
    metrics: &'a Metrics,
}

impl Drop for DisconnectWatch<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.client_disconnects.inc();
        }
    }
}

impl Service {
    fn admit(&self) -> Result<Admitted, ServiceError> {
        let permit =
            self.admission
                .clone()
                .try_acquire_owned()
                .map_err(|_| ServiceError::Overloaded {
                    message: format!("{} requests are in flight", self.max_concurrent),
                    retry_after_secs: 1,
                })?;
        self.metrics.requests_in_flight.inc();
        Ok(Admitted {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }

    /// Scores a request's pairs, in their order, under the request timeout. Dropped before
    /// it answers (the client went away), it counts a disconnect.
    pub async fn score(&self, job: ScoreJob) -> Result<Scoring, ServiceError> {
        let mut watch = DisconnectWatch {
            answered: false,
            metrics: &self.metrics,
        };
        let result = self.score_within_timeout(job).await;
        watch.answered = true;
        result
    }

    /// Refuses what the model or the limits cannot take before admitting the request, then
    /// tokenizes and scores it under the request timeout.
    async fn score_within_timeout(&self, job: ScoreJob) -> Result<Scoring, ServiceError> {
        let started = Instant::now();
        let (served, name) = self.model(job.model.as_deref())?;
        let instruction = job.instruction.filter(|i| !i.is_empty());
        if instruction.is_some() && !served.info().accepts_instruction {
            return Err(ServiceError::InstructionNotAccepted { model: name });
        }
        if job.pairs.len() > self.limits.max_documents {
            return Err(ServiceError::TooManyDocuments {
                count: job.pairs.len(),
                limit: self.limits.max_documents,
            });
        }
        let _admitted = self.admit()?;
        let tokenizing = Tokenizing {
            engine: served.engine.clone(),
            pairs: job.pairs,
            instruction,
            limits: TokenLimits {
                max_tokens_per_doc: job.max_tokens_per_doc.or(self.limits.max_tokens_per_doc),
                direction: job.truncation_direction,
            },
            long_documents: job.long_documents.unwrap_or(self.long_documents),
            chunking: self.chunking,
        };
        let work =
            self.tokenize_and_score(served, name, tokenizing, job.refuse_truncation, started);
        tokio::time::timeout(self.limits.timeout, work)
            .await
            .map_err(|_| ServiceError::Timeout(self.limits.timeout.as_secs_f64()))?
    }

    async fn tokenize_and_score(
        &self,
        served: &ServedModel,
        name: String,
        tokenizing: Tokenizing,
        refuse_truncation: bool,
        started: Instant,
    ) -> Result<Scoring, ServiceError> {
        let chunked = tokenizing.long_documents == LongDocuments::Chunk;
        let Tokenized {
            pairs,
            windows,
            total_tokens,
        } = self.tokenize(served, &name, tokenizing).await?;
        if refuse_truncation
            && let Some(i) = windows
                .iter()
                .position(|w| w.iter().any(|w| w.encoded.over_max_length))
        {
            return Err(ServiceError::InputTooLong(format!(
                "document {i} is over the model's length limit and `truncate` is false"
            )));
        }
        // Under `truncate` every document is one window: its score is the pair's.
        let spans: Option<Vec<Vec<Range<usize>>>> = chunked.then(|| {
            windows
                .iter()
                .map(|w| w.iter().map(|w| w.chars.clone()).collect())
                .collect()
        });
        let prompts = windows
            .into_iter()
            .flatten()
            .map(|w| w.encoded.ids)
            .collect();
        let time_left = self.limits.timeout.saturating_sub(started.elapsed());
        let scored = served.score_prompts(prompts, time_left).await?;
        let (scores, best_windows) = match spans {
            Some(spans) => {
                let (scores, best) = best_of_windows(scored.scores, &spans);
                (scores, Some(best))
            }
            None => (scored.scores, None),
        };
        Ok(Scoring {
            model: name,
            pairs,
            scores,
            best_windows,
            total_tokens,
            queue_time: scored.queue_time,
            inference_time: scored.inference_time,
            started,
        })
    }

    /// Tokenizes every pair on the blocking pool, holding the tokenizer memory it needs
    /// meanwhile.
    async fn tokenize(
        &self,
        served: &ServedModel,
        name: &str,
        tokenizing: Tokenizing,
    ) -> Result<Tokenized, ServiceError> {
        let memory = self.reserve_tokenizing_memory(&tokenizing).await?;
        let metrics = served.metrics.clone();
        let span = tracing::info_span!(
            "tokenize",
            pairs = tokenizing.pairs.len() as i64,
            tokens = tracing::field::Empty
        );
        tokio::task::spawn_blocking(move || {
            let _in_span = span.enter();
            let clock = Instant::now();
            let windows = tokenizing.windows();
            metrics
                .tokenization_duration
                .observe(clock.elapsed().as_secs_f64());
            drop(memory);
            let windows = windows?;
            let total_tokens = windows.iter().flatten().map(|w| w.encoded.ids.len()).sum();
            span.record("tokens", total_tokens as i64);
            Ok(Tokenized {
                pairs: tokenizing.pairs,
                windows,
                total_tokens,
            })
        })
        .await
        .map_err(|err| ServiceError::Internal(format!("tokenization task failed: {err}")))?
        .map_err(|err| ServiceError::from_model(err, name))
    }

    /// The tokenizer memory the request's longest pair needs. A request larger than the
    /// whole budget takes all of it and runs alone.
    async fn reserve_tokenizing_memory(
        &self,
        tokenizing: &Tokenizing,
    ) -> Result<OwnedSemaphorePermit, ServiceError> {
        let Tokenizing { engine, pairs, .. } = tokenizing;
        let longest = (0..pairs.len())
            .map(|i| {
                let (query, document) = pairs.get(i);
                engine.encoder().tokenizing_bytes(query)
                    + engine.encoder().tokenizing_bytes(document)
            })
            .max()
            .unwrap_or(0);
        let kib = (longest / 1024).clamp(1, self.tokenizing_budget_kib) as u32;
        self.tokenizing_memory
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| ServiceError::Internal("the tokenizing budget is closed".into()))
    }
}

/// What tokenizing a request needs, moved onto the blocking pool.
struct Tokenizing {
    engine: Arc<Engine>,
    pairs: Pairs,
    instruction: Option<String>,
    limits: TokenLimits,
    long_documents: LongDocuments,
    chunking: Chunking,
}

impl Tokenizing {
    /// Each pair's windows: one, cut to the limits, under `truncate`. Blocking.
    fn windows(&self) -> Result<Vec<Vec<Window>>, ModelError> {
        let instruction = self.instruction.as_deref();
        (0..self.pairs.len())
            .map(|i| {
                let (query, document) = self.pairs.get(i);
                match self.long_documents {
                    LongDocuments::Truncate => {
                        let encoded = self.engine.encoder().encode(
                            query,
                            document,
                            instruction,
                            self.limits,
                        )?;
                        let chars = 0..document.chars().count();
                        Ok(vec![Window { encoded, chars }])
                    }
                    LongDocuments::Chunk => self.engine.encoder().encode_windows(
                        query,
                        document,
                        instruction,
                        self.limits,
                        self.chunking,
                    ),
                }
            })
            .collect()
    }
}

/// A tokenized request: its pairs back, each pair's windows, and their prompt tokens.
struct Tokenized {
    pairs: Pairs,
    windows: Vec<Vec<Window>>,
    total_tokens: usize,
}
