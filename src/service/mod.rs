//! The service layer: the served models, each an engine with its own batcher, and the one
//! way a request is scored: pick the model, admit, tokenize off the runtime, batch, rank.
//! The HTTP layer only maps request shapes to [`ScoreJob`] and [`Scoring`] back.

mod cache;
mod error;

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::batcher::{ADMISSION_MARGIN, BatchError, Batcher, Scored, Throughput};
use crate::metrics::{Metrics, ModelMetrics};
/// Which end of an over-long document a request keeps.
pub use crate::model::TruncationDirection;
use crate::model::{
    Chunking, DOCUMENT_CHAR_LIMIT, Engine, ModelError, ModelInfo, QUERY_CHAR_LIMIT, Score,
    TokenLimits, Window,
};
use crate::settings::{LongDocuments, ModelNamePolicy, ModelSettings, Settings};
use cache::{Found, PromptKey, ScoreCache};
pub use error::ServiceError;

/// One served model.
pub struct ServedModel {
    /// Names requests may use; the first labels its metrics.
    pub names: Vec<String>,
    engine: Arc<Engine>,
    batcher: Batcher,
    cache: Option<ScoreCache>,
    metrics: ModelMetrics,
}

/// The longest texts a request may send, in characters.
#[derive(Debug, Clone, Copy)]
pub struct CharLimits {
    pub query: usize,
    pub document: usize,
}

impl ServedModel {
    /// What the model is: recipe, scoring tokens, length limit, device (serializable).
    pub fn info(&self) -> &ModelInfo {
        self.engine.info()
    }

    /// The model's measured prompt tokens per second, and what a typical request (100
    /// documents of 400 tokens) takes at that rate.
    pub fn speed(&self) -> Option<(f64, f64)> {
        let rate = self.batcher.throughput().tokens_per_sec()?;
        Some((rate, typical_request_secs(rate)))
    }

    /// Scores prompts (token ids), in their order. With a cache, the prompts it holds skip
    /// the batcher, and one that another request is computing is waited for.
    async fn score_prompts(
        &self,
        prompts: Vec<Vec<u32>>,
        time_left: Duration,
    ) -> Result<Scored, BatchError> {
        let Some(cache) = &self.cache else {
            return self.batcher.score(prompts, time_left).await;
        };
        let started = Instant::now();
        let keys: Vec<PromptKey> = prompts.iter().map(|ids| PromptKey::of(ids)).collect();
        let (found, claim) = cache.look_up(&keys);
        let mut prompts: Vec<Option<Vec<u32>>> = prompts.into_iter().map(Some).collect();
        let mut scores: Vec<Option<Score>> = vec![None; prompts.len()];
        let (mut claimed, mut pending, mut repeats) = (Vec::new(), Vec::new(), Vec::new());
        for (position, found) in found.into_iter().enumerate() {
            match found {
                Found::Score(score) => scores[position] = Some(score),
                Found::Claimed => claimed.push(position),
                Found::Pending(promise) => pending.push((position, promise)),
                Found::Repeat(first) => repeats.push((position, first)),
            }
        }
        let mut take = |positions: &[usize]| -> Vec<Vec<u32>> {
            positions
                .iter()
                .filter_map(|&i| prompts[i].take())
                .collect()
        };
        let computed = self.batcher.score(take(&claimed), time_left).await?;
        claim.fulfil(
            claimed
                .iter()
                .map(|&i| keys[i])
                .zip(computed.scores.iter().copied()),
        );
        for (&i, &score) in claimed.iter().zip(&computed.scores) {
            scores[i] = Some(score);
        }
        let mut abandoned = Vec::new();
        for (position, promise) in pending {
            match cache::wait_for(promise).await {
                Some(score) => scores[position] = Some(score),
                None => abandoned.push(position),
            }
        }
        let (mut queue_time, mut inference_time) = (computed.queue_time, computed.inference_time);
        if !abandoned.is_empty() {
            // The requests computing these failed or went away.
            let retried = self
                .batcher
                .score(
                    take(&abandoned),
                    time_left.saturating_sub(started.elapsed()),
                )
                .await?;
            for (&i, &score) in abandoned.iter().zip(&retried.scores) {
                cache.insert(keys[i], score);
                scores[i] = Some(score);
            }
            queue_time += retried.queue_time;
            inference_time += retried.inference_time;
        }
        for (position, first) in repeats {
            scores[position] = scores[first];
        }
        let scores = scores
            .into_iter()
            .collect::<Option<Vec<Score>>>()
            .ok_or_else(|| BatchError::Model("a prompt was left without a score".into()))?;
        Ok(Scored {
            scores,
            queue_time,
            inference_time,
        })
    }
}

/// Limits every request is held to.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_documents: usize,
    pub timeout: Duration,
    pub max_document_tokens: Option<usize>,
}

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

/// The pairs of one request.
pub enum Pairs {
    /// One query against many documents.
    OneQuery {
        query: String,
        documents: Vec<String>,
    },
    Listed(Vec<(String, String)>),
}

impl Pairs {
    pub fn len(&self) -> usize {
        match self {
            Pairs::OneQuery { documents, .. } => documents.len(),
            Pairs::Listed(pairs) => pairs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> (&str, &str) {
        match self {
            Pairs::OneQuery { query, documents } => (query, &documents[i]),
            Pairs::Listed(pairs) => (&pairs[i].0, &pairs[i].1),
        }
    }

    /// Bytes of text in all pairs.
    pub fn bytes(&self) -> usize {
        (0..self.len())
            .map(|i| {
                let (q, d) = self.get(i);
                q.len() + d.len()
            })
            .sum()
    }
}

/// What a handler asks for.
pub struct ScoreJob {
    /// A served name; the first model when `None`.
    pub model: Option<String>,
    pub pairs: Pairs,
    /// Replaces the model's default instruction.
    pub instruction: Option<String>,
    /// Cut each document to this many tokens; the server's `max_tokens_per_doc` when `None`.
    pub max_document_tokens: Option<usize>,
    /// Which end of a document over its limit is kept.
    pub truncation_direction: TruncationDirection,
    /// Refuse (413) a document the model's length limit would cut.
    pub refuse_truncation: bool,
    /// Cut long documents or score them in windows; the server's setting when `None`.
    pub long_documents: Option<LongDocuments>,
}

/// A scored request: its pairs, their scores in order, and where the time went.
pub struct Scoring {
    /// The name to answer with: the one requested, or the model's first.
    pub model: String,
    pub pairs: Pairs,
    pub scores: Vec<Score>,
    /// Under `chunk`, the window that gave each document its score.
    pub best_windows: Option<Vec<BestWindow>>,
    /// Prompt tokens scored, every window counted.
    pub total_tokens: usize,
    pub queue_time: Duration,
    pub inference_time: Duration,
    pub started: Instant,
}

/// The window of a chunked document that scored best.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestWindow {
    pub index: usize,
    /// How many windows the document made.
    pub windows: usize,
    /// Its place in the document, in characters.
    pub chars: Range<usize>,
}

/// Each document's best window score (the first on ties), from the scores of all windows in
/// order; `spans` holds each document's windows.
fn best_of_windows(
    scores: Vec<Score>,
    spans: &[Vec<Range<usize>>],
) -> (Vec<Score>, Vec<BestWindow>) {
    let mut scores = scores.into_iter();
    spans
        .iter()
        .map(|windows| {
            let (index, score) = scores
                .by_ref()
                .take(windows.len())
                .enumerate()
                .reduce(|best, next| {
                    if next.1.margin > best.1.margin {
                        next
                    } else {
                        best
                    }
                })
                .expect("every document has a window");
            let best = BestWindow {
                index,
                windows: windows.len(),
                chars: windows[index].clone(),
            };
            (score, best)
        })
        .unzip()
}

/// A document's place in a ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Position of the document in the request.
    pub index: usize,
    pub score: Score,
}

impl Scoring {
    /// Pairs by descending score (ties keep input order), cut to `top_n` when given.
    pub fn ranked(&self, top_n: Option<usize>) -> Vec<Ranked> {
        rank_scores(&self.scores, top_n)
    }
}

/// Indices sorted by descending score (ties keep input order), cut to `top_n` when given.
pub fn rank_scores(scores: &[Score], top_n: Option<usize>) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = scores
        .iter()
        .enumerate()
        .map(|(index, &score)| Ranked { index, score })
        .collect();
    ranked.sort_by(|a, b| b.score.raw.total_cmp(&a.score.raw));
    if let Some(n) = top_n {
        ranked.truncate(n);
    }
    ranked
}

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

/// A model loaded and warmed up, not yet serving.
pub struct LoadedModel {
    settings: ModelSettings,
    engine: Engine,
    throughput: Arc<Throughput>,
}

/// What the start-up log and `/info` price: a request of 100 documents of 400 prompt tokens,
/// at `tokens_per_sec`.
fn typical_request_secs(tokens_per_sec: f64) -> f64 {
    (100 * 400) as f64 / tokens_per_sec
}

impl Service {
    /// Loads every model of `settings` and runs a warm-up batch on each, so that a model
    /// that does not fit shows at boot rather than on the first user. Blocking: call off the
    /// async runtime.
    pub fn load_models(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Vec<LoadedModel>> {
        let budget = settings.batch_budget();
        settings
            .models()?
            .into_iter()
            .map(|model| {
                let started = Instant::now();
                let engine = Engine::load(&model.load)
                    .map_err(|err| anyhow::anyhow!("model `{}`: {err}", model.load.model))?;
                let window = engine.info().max_length;
                anyhow::ensure!(
                    settings.chunk_overlap_tokens.saturating_mul(2) < window,
                    "chunk_overlap_tokens = {} is not under half of model `{}`'s longest chunk window, {window} tokens (its max_length): windows must advance by at least half a window",
                    settings.chunk_overlap_tokens,
                    model.load.model
                );
                let warmup = engine.warm_up(budget)?;
                metrics
                    .for_model(&model.served_names[0])
                    .model_load_seconds
                    .set(started.elapsed().as_secs_f64());
                let throughput = Arc::new(Throughput::default());
                throughput.observe(warmup.tokens(), warmup.seconds, 1.0);
                let tokens_per_sec = throughput.tokens_per_sec().unwrap_or(f64::INFINITY);
                let typical_secs = typical_request_secs(tokens_per_sec);
                tracing::info!(
                    model = %model.load.model,
                    names = ?model.served_names,
                    seconds = started.elapsed().as_secs_f64(),
                    warmup_pairs = warmup.pairs,
                    warmup_tokens = warmup.tokens_each,
                    tokens_per_sec,
                    typical_request_secs = typical_secs,
                    request_timeout_secs = settings.request_timeout_secs,
                    info = ?engine.info(),
                    "model ready"
                );
                if typical_secs * ADMISSION_MARGIN > settings.request_timeout_secs {
                    tracing::warn!(
                        model = %model.load.model,
                        "a request of 100 documents of 400 tokens would take about {typical_secs:.0} s at the measured {:.0} tokens/s, with admission's {ADMISSION_MARGIN}x margin over request_timeout_secs = {}; such requests will be refused with 413 (raise the timeout, or use a GPU or a smaller model)",
                        tokens_per_sec,
                        settings.request_timeout_secs
                    );
                }
                Ok(LoadedModel {
                    settings: model,
                    engine,
                    throughput,
                })
            })
            .collect()
    }

    /// Starts a batcher per model; call inside a Tokio runtime.
    pub fn start(models: Vec<LoadedModel>, settings: &Settings, metrics: Arc<Metrics>) -> Self {
        // KiB: the semaphore counts in u32, and a request's estimate is never that fine.
        let tokenizing_budget_kib =
            (settings.tokenizing_memory_bytes / 1024).clamp(1, u32::MAX as usize);
        let models = models
            .into_iter()
            .map(|loaded| {
                let engine = Arc::new(loaded.engine);
                let model_metrics = metrics.for_model(&loaded.settings.served_names[0]);
                let batcher = Batcher::spawn(
                    engine.clone(),
                    settings.batch_budget(),
                    settings.max_queued_tokens,
                    loaded.throughput,
                    model_metrics.clone(),
                );
                ServedModel {
                    names: loaded.settings.served_names,
                    engine,
                    batcher,
                    cache: ScoreCache::new(settings.score_cache_bytes, model_metrics.clone()),
                    metrics: model_metrics,
                }
            })
            .collect();
        Service {
            models,
            limits: RequestLimits {
                max_documents: settings.max_documents_per_request,
                timeout: Duration::from_secs_f64(settings.request_timeout_secs),
                max_document_tokens: settings.max_tokens_per_doc,
            },
            admission: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            max_concurrent: settings.max_concurrent_requests,
            tokenizing_memory: Arc::new(Semaphore::new(tokenizing_budget_kib)),
            tokenizing_budget_kib,
            model_name_policy: settings.model_name_policy,
            long_documents: settings.long_documents,
            chunking: settings.chunking(),
            metrics,
        }
    }

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

    async fn score_within_timeout(&self, job: ScoreJob) -> Result<Scoring, ServiceError> {
        let started = Instant::now();
        let (served, name) = self.model(job.model.as_deref())?;
        let instruction = job.instruction.filter(|i| !i.is_empty());
        if instruction.is_some() && !served.engine.info().accepts_instruction {
            return Err(ServiceError::InstructionNotAccepted { model: name });
        }
        if job.pairs.len() > self.limits.max_documents {
            return Err(ServiceError::TooManyDocuments {
                count: job.pairs.len(),
                limit: self.limits.max_documents,
            });
        }
        let _admitted = self.admit()?;
        let limits = TokenLimits {
            max_document_tokens: job.max_document_tokens.or(self.limits.max_document_tokens),
            direction: job.truncation_direction,
        };
        let engine = served.engine.clone();
        let metrics = served.metrics.clone();
        let pairs = job.pairs;
        let long_documents = job.long_documents.unwrap_or(self.long_documents);
        let chunking = self.chunking;
        let tokenizing_memory = self.tokenizing_memory.clone();
        let tokenizing_budget_kib = self.tokenizing_budget_kib;
        let work = async move {
            // A request larger than the whole budget takes all of it and runs alone.
            let longest = (0..pairs.len())
                .map(|i| {
                    let (query, document) = pairs.get(i);
                    engine.tokenizing_bytes(query) + engine.tokenizing_bytes(document)
                })
                .max()
                .unwrap_or(0);
            let kib = (longest / 1024).clamp(1, tokenizing_budget_kib) as u32;
            let memory = tokenizing_memory
                .acquire_many_owned(kib)
                .await
                .map_err(|_| ServiceError::Internal("the tokenizing budget is closed".into()))?;
            let span = tracing::info_span!(
                "tokenize",
                pairs = pairs.len() as i64,
                tokens = tracing::field::Empty
            );
            let (pairs, windows, total_tokens) = tokio::task::spawn_blocking(move || {
                let _in_span = span.enter();
                let tokenizing = Instant::now();
                let windows = (0..pairs.len())
                    .map(|i| {
                        let (query, document) = pairs.get(i);
                        let instruction = instruction.as_deref();
                        match long_documents {
                            LongDocuments::Truncate => {
                                let encoded =
                                    engine.encode(query, document, instruction, limits)?;
                                let chars = 0..document.chars().count();
                                Ok(vec![Window { encoded, chars }])
                            }
                            LongDocuments::Chunk => engine.encode_windows(
                                query,
                                document,
                                instruction,
                                limits,
                                chunking,
                            ),
                        }
                    })
                    .collect::<Result<Vec<Vec<Window>>, ModelError>>();
                metrics
                    .tokenization_duration
                    .observe(tokenizing.elapsed().as_secs_f64());
                drop(memory);
                windows.map(|windows| {
                    let tokens: usize = windows.iter().flatten().map(|w| w.encoded.ids.len()).sum();
                    span.record("tokens", tokens as i64);
                    (pairs, windows, tokens)
                })
            })
            .await
            .map_err(|err| ServiceError::Internal(format!("tokenization task failed: {err}")))?
            .map_err(|err| ServiceError::from_model(err, &name))?;
            if job.refuse_truncation
                && let Some(i) = windows
                    .iter()
                    .position(|w| w.iter().any(|w| w.encoded.over_max_length))
            {
                return Err(ServiceError::InputTooLong(format!(
                    "document {i} is over the model's length limit and `truncate` is false"
                )));
            }
            // Under `truncate` every document is one window: its score is the pair's.
            let spans: Option<Vec<Vec<Range<usize>>>> = (long_documents == LongDocuments::Chunk)
                .then(|| {
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
        };
        tokio::time::timeout(self.limits.timeout, work)
            .await
            .map_err(|_| ServiceError::Timeout(self.limits.timeout.as_secs_f64()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Calibration;

    #[test]
    fn ranking_is_descending_and_stable() {
        let zerank = Calibration {
            raw_divisor: 5.0,
            temperature: 5.0,
        };
        let scores: Vec<Score> = [0.1, 2.0, 0.1, -3.0]
            .into_iter()
            .map(|m| Score::new(m, zerank))
            .collect();
        let order: Vec<usize> = rank_scores(&scores, None).iter().map(|r| r.index).collect();
        assert_eq!(order, vec![1, 0, 2, 3]);
        assert_eq!(rank_scores(&scores, Some(2)).len(), 2);
        assert_eq!(rank_scores(&scores, Some(10)).len(), 4);
    }
}
