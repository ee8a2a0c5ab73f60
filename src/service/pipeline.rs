//! The one way a request is scored: pick the model, admit, tokenize off the runtime, score
//! (through the cache and the batcher), keep each document's best window.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::request::best_of_windows;
use super::{Pairs, ScoreJob, Scoring, ServedModel, Service, ServiceError};
use crate::metrics::Metrics;
use crate::model::{Chunking, Engine, TokenLimits, Window};
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
            refuse_truncation: job.refuse_truncation,
            max_tokens: self.limits.max_request_tokens,
            pairs: job.pairs,
            instruction,
            limits: TokenLimits {
                max_tokens_per_doc: job.max_tokens_per_doc.or(self.limits.max_tokens_per_doc),
                direction: job.truncation_direction,
            },
            long_documents: job.long_documents.unwrap_or(self.long_documents),
            chunking: self.chunking,
        };
        let work = self.tokenize_and_score(served, name, tokenizing, started);
        tokio::time::timeout(self.limits.timeout, work)
            .await
            .map_err(|_| ServiceError::Timeout(self.limits.timeout.as_secs_f64()))?
    }

    async fn tokenize_and_score(
        &self,
        served: &ServedModel,
        name: String,
        tokenizing: Tokenizing,
        started: Instant,
    ) -> Result<Scoring, ServiceError> {
        let chunked = tokenizing.long_documents == LongDocuments::Chunk;
        let Tokenized {
            pairs,
            windows,
            total_tokens,
        } = self.tokenize(served, &name, tokenizing).await?;
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
        let name = name.to_owned();
        let span = tracing::info_span!(
            "tokenize",
            pairs = tokenizing.pairs.len() as i64,
            tokens = tracing::field::Empty
        );
        tokio::task::spawn_blocking(move || {
            let _in_span = span.enter();
            let clock = Instant::now();
            let windows = tokenizing.windows(&name);
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
    /// Refuse a document the model's length limit would cut (`truncate: false`).
    refuse_truncation: bool,
    /// The most prompt tokens the request may have (what the queue takes at most).
    max_tokens: usize,
    pairs: Pairs,
    instruction: Option<String>,
    limits: TokenLimits,
    long_documents: LongDocuments,
    chunking: Chunking,
}

impl Tokenizing {
    /// Each pair's windows: one, cut to the limits, under `truncate`. Blocking. A request
    /// that will be refused stops at the document that shows it: one over the model's length
    /// under `truncate: false`, or the one whose tokens pass what the queue takes at most, so
    /// that its cost follows the limits, not the size of its body.
    fn windows(&self, model: &str) -> Result<Vec<Vec<Window>>, ServiceError> {
        let instruction = self.instruction.as_deref();
        let mut tokens = 0usize;
        let mut all = Vec::with_capacity(self.pairs.len());
        for i in 0..self.pairs.len() {
            let (query, document) = self.pairs.get(i);
            let encoder = self.engine.encoder();
            let windows = match self.long_documents {
                LongDocuments::Truncate => encoder
                    .encode(query, document, instruction, self.limits)
                    .map(|encoded| {
                        let chars = 0..document.chars().count();
                        vec![Window { encoded, chars }]
                    }),
                LongDocuments::Chunk => {
                    encoder.encode_windows(query, document, instruction, self.limits, self.chunking)
                }
            }
            .map_err(|err| ServiceError::from_model(err, model))?;
            if self.refuse_truncation && windows.iter().any(|w| w.encoded.over_max_length) {
                return Err(ServiceError::InputTooLong(format!(
                    "document {i} is over the model's length limit and `truncate` is false"
                )));
            }
            tokens += windows.iter().map(|w| w.encoded.ids.len()).sum::<usize>();
            if tokens > self.max_tokens {
                return Err(ServiceError::RequestTooLarge(format!(
                    "the request's prompt tokens pass the queue's budget of {} (max_queued_tokens) by document {i} of {}; send fewer or shorter documents",
                    self.max_tokens,
                    self.pairs.len()
                )));
            }
            all.push(windows);
        }
        Ok(all)
    }
}

/// A tokenized request: its pairs back, each pair's windows, and their prompt tokens.
struct Tokenized {
    pairs: Pairs,
    windows: Vec<Vec<Window>>,
    total_tokens: usize,
}
