//! The queue of pairs waiting for the model, and how a batch is taken from it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Request;
use crate::metrics::Metrics;
use crate::model::{BatchBudget, plan_batches};

/// How far past the head of the queue a batch may reach for pairs of similar length,
/// in multiples of the batch budget.
const LOOKAHEAD_BATCHES: usize = 4;

pub(super) struct Pending {
    pub request: Arc<Request>,
    /// The pair's position in its request.
    pub position: usize,
    pub ids: Vec<u32>,
}

struct Waiting {
    pairs: VecDeque<Pending>,
    tokens: usize,
}

pub(super) struct Queue {
    waiting: Mutex<Waiting>,
    arrived: Notify,
    budget: BatchBudget,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(budget: BatchBudget, metrics: Arc<Metrics>) -> Self {
        Queue {
            waiting: Mutex::new(Waiting {
                pairs: VecDeque::new(),
                tokens: 0,
            }),
            arrived: Notify::new(),
            budget,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enqueues a request's pairs, all or none: refused (with the tokens already queued)
    /// when they would take the queue past `max_tokens`, unless the queue is empty.
    pub fn push(&self, pairs: Vec<Pending>, max_tokens: usize) -> Result<(), usize> {
        let tokens: usize = pairs.iter().map(|p| p.ids.len()).sum();
        {
            let mut waiting = self.lock();
            if waiting.tokens > 0 && waiting.tokens + tokens > max_tokens {
                return Err(waiting.tokens);
            }
            waiting.tokens += tokens;
            waiting.pairs.extend(pairs);
            self.publish(&waiting);
        }
        self.arrived.notify_one();
        Ok(())
    }

    /// Removes every pair of `request` still waiting.
    pub fn withdraw(&self, request: &Arc<Request>) {
        let mut waiting = self.lock();
        let before = waiting.pairs.len();
        let mut freed = 0;
        waiting.pairs.retain(|p| {
            let keep = !Arc::ptr_eq(&p.request, request);
            if !keep {
                freed += p.ids.len();
            }
            keep
        });
        if waiting.pairs.len() != before {
            waiting.tokens -= freed;
            self.publish(&waiting);
        }
    }

    /// Waits for pairs, then takes the next batch.
    pub async fn next_batch(&self) -> Vec<Pending> {
        loop {
            let batch = self.take_batch();
            if !batch.is_empty() {
                return batch;
            }
            self.arrived.notified().await;
        }
    }

    /// The batch that holds the oldest waiting pair, filled with pairs of similar length
    /// from a bounded window behind it, so nothing waits forever and padding stays small.
    fn take_batch(&self) -> Vec<Pending> {
        let mut waiting = self.lock();
        // Pairs of requests that gave up may linger only if a withdraw raced a batch.
        let mut dropped = 0;
        waiting.pairs.retain(|p| {
            let open = !p.request.closed.load(Ordering::SeqCst);
            if !open {
                dropped += p.ids.len();
            }
            open
        });
        waiting.tokens -= dropped;
        if waiting.pairs.is_empty() {
            self.publish(&waiting);
            return Vec::new();
        }
        let window_tokens = self.budget.max_tokens.saturating_mul(LOOKAHEAD_BATCHES);
        let window_pairs = self.budget.max_sequences.saturating_mul(LOOKAHEAD_BATCHES);
        let mut lengths = Vec::new();
        let mut tokens = 0;
        for pair in waiting.pairs.iter().take(window_pairs) {
            if !lengths.is_empty() && tokens + pair.ids.len() > window_tokens {
                break;
            }
            tokens += pair.ids.len();
            lengths.push(pair.ids.len());
        }
        let mut chosen = plan_batches(&lengths, self.budget)
            .into_iter()
            .find(|batch| batch.contains(&0))
            .expect("the plan covers the head of the queue");
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        let mut batch: Vec<Pending> = chosen
            .into_iter()
            .filter_map(|i| waiting.pairs.remove(i))
            .collect();
        batch.reverse();
        waiting.tokens -= batch.iter().map(|p| p.ids.len()).sum::<usize>();
        self.publish(&waiting);
        batch
    }

    fn publish(&self, waiting: &Waiting) {
        self.metrics.queue_pairs.set(waiting.pairs.len() as i64);
        self.metrics.queue_tokens.set(waiting.tokens as i64);
    }
}
