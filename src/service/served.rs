//! A served model: its engine, batcher and score cache, and cache-aware scoring of prompts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::{self, Found, PromptKey, ScoreCache};
use crate::batcher::{BatchError, Batcher, Scored, WorkModel};
use crate::metrics::ModelMetrics;
use crate::model::{Engine, ModelInfo, Score};

/// One served model.
pub struct ServedModel {
    /// Names requests may use; the first labels its metrics.
    pub names: Vec<String>,
    pub(super) engine: Arc<Engine>,
    pub(super) batcher: Batcher,
    pub(super) cache: Option<ScoreCache>,
    pub(super) metrics: ModelMetrics,
}

impl ServedModel {
    /// What the model is: recipe, scoring tokens, length limit, device (serializable).
    pub fn info(&self) -> &ModelInfo {
        self.engine.info()
    }

    /// The model's measured prompt tokens per second, and what a typical request (100
    /// documents of 400 tokens) takes at that rate.
    pub fn speed(&self) -> Option<(f64, f64)> {
        let throughput = self.batcher.throughput();
        let rate = throughput.tokens_per_sec()?;
        Some((rate, typical_request_secs(throughput.work(), rate)))
    }

    /// Scores prompts (token ids), in their order. With a cache, the prompts it holds skip
    /// the batcher, and one that another request is computing is waited for.
    pub(super) async fn score_prompts(
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

/// What the start-up log and `/info` price: a request of 100 documents of 400 prompt tokens
/// (no shared prefix), at `tokens_per_sec` units of work.
pub(super) fn typical_request_secs(work: &WorkModel, tokens_per_sec: f64) -> f64 {
    work.batch(100 * 400, 100 * 400, 100) / tokens_per_sec
}
