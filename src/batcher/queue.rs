//! The queue of pairs waiting for the model, and how a batch is taken from it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{BatchError, Request};
use crate::metrics::ModelMetrics;
use crate::model::BatchBudget;

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
    metrics: ModelMetrics,
}

impl Queue {
    pub fn new(budget: BatchBudget, metrics: ModelMetrics) -> Self {
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

    /// Enqueues a request's pairs, all or none: `admit` sees the tokens already queued and
    /// may refuse.
    pub fn push(
        &self,
        pairs: Vec<Pending>,
        admit: impl FnOnce(usize) -> Result<(), BatchError>,
    ) -> Result<(), BatchError> {
        let tokens: usize = pairs.iter().map(|p| p.ids.len()).sum();
        {
            let mut waiting = self.lock();
            admit(waiting.tokens)?;
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

    /// The oldest waiting pairs, as many as the budget holds: first come, first served, and
    /// a request's pairs stay together so that the forward shares their query prefix. Under
    /// load, a batch that a request's last pairs leave room in fills with the next request's.
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
        let (mut count, mut tokens) = (0, 0);
        for pair in &waiting.pairs {
            if count > 0 && !self.budget.fits(tokens + pair.ids.len(), count + 1) {
                break;
            }
            count += 1;
            tokens += pair.ids.len();
        }
        let batch: Vec<Pending> = waiting.pairs.drain(..count).collect();
        waiting.tokens -= tokens;
        self.publish(&waiting);
        batch
    }

    fn publish(&self, waiting: &Waiting) {
        self.metrics.queue_pairs.set(waiting.pairs.len() as i64);
        self.metrics.queue_tokens.set(waiting.tokens as i64);
    }
}
