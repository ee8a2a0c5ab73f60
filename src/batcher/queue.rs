//! The queue of pairs waiting for the model, and how a batch is taken from it.
//!
//! Pairs wait in one line per request. A batch gives every waiting request its share of the
//! budget in turn (round-robin), then fills what is left in the same order: a request of two
//! documents behind one of five hundred is in the next batch, not five hundred pairs later,
//! and a lone request still gets whole batches. A request's pairs stay next to each other in
//! the batch, so that the forward shares their query prefix.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::{BatchError, Request};
use crate::metrics::ModelMetrics;
use crate::model::BatchBudget;

pub(super) struct Pending {
    pub request: Arc<Request>,
    /// The pair's position in its request.
    pub position: usize,
    pub ids: Vec<u32>,
    /// Its share of its request's work (see [`super::request_work`]).
    pub work: f64,
}

/// One request's pairs still waiting, in order.
struct Line {
    request: Arc<Request>,
    pairs: VecDeque<Pending>,
    tokens: usize,
    work: f64,
}

/// What a request joins: what admission weighs.
pub(super) struct Load {
    /// Work of the batch in the model now (0 when it is idle).
    pub running: f64,
    /// Each waiting request's work, and when it must be answered.
    pub waiting: Vec<(f64, Instant)>,
    /// Tokens waiting, for the queue's token budget.
    pub queued_tokens: usize,
}

impl Load {
    pub fn queued(&self) -> f64 {
        self.waiting.iter().map(|&(work, _)| work).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.running == 0.0 && self.waiting.is_empty()
    }

    /// Work done before the last of `work` more of one request is, served in turns: the
    /// batch in the model, then at most as much of every other request's work.
    pub fn work_until_done(&self, work: f64) -> f64 {
        self.running
            + work
            + self
                .waiting
                .iter()
                .map(|&(other, _)| other.min(work))
                .sum::<f64>()
    }
}

struct Waiting {
    /// In turn order: the next batch starts with the first.
    lines: VecDeque<Line>,
    pairs: usize,
    tokens: usize,
    running: f64,
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
                lines: VecDeque::new(),
                pairs: 0,
                tokens: 0,
                running: 0.0,
            }),
            arrived: Notify::new(),
            budget,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enqueues a request's pairs, all or none: `admit` sees the load it would join and may
    /// refuse.
    pub fn push(
        &self,
        request: Arc<Request>,
        pairs: Vec<Pending>,
        admit: impl FnOnce(&Load) -> Result<(), BatchError>,
    ) -> Result<(), BatchError> {
        let tokens: usize = pairs.iter().map(|p| p.ids.len()).sum();
        let work: f64 = pairs.iter().map(|p| p.work).sum();
        {
            let mut waiting = self.lock();
            let load = Load {
                running: waiting.running,
                waiting: waiting
                    .lines
                    .iter()
                    .map(|line| (line.work, line.request.deadline))
                    .collect(),
                queued_tokens: waiting.tokens,
            };
            admit(&load)?;
            waiting.tokens += tokens;
            waiting.pairs += pairs.len();
            waiting.lines.push_back(Line {
                request,
                pairs: pairs.into(),
                tokens,
                work,
            });
            self.publish(&waiting);
        }
        self.arrived.notify_one();
        Ok(())
    }

    /// Removes every pair of `request` still waiting.
    pub fn withdraw(&self, request: &Arc<Request>) {
        let mut waiting = self.lock();
        if let Some(at) = waiting
            .lines
            .iter()
            .position(|line| Arc::ptr_eq(&line.request, request))
            && let Some(line) = waiting.lines.remove(at)
        {
            waiting.tokens -= line.tokens;
            waiting.pairs -= line.pairs.len();
            self.publish(&waiting);
        }
    }

    /// The model finished its batch and nothing runs until the next is taken.
    pub fn model_idle(&self) {
        self.lock().running = 0.0;
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

    /// As many waiting pairs as the budget holds: first each request's share in turn, then
    /// the room left in the same order. Requests served go to the back of the turn order,
    /// so that when more requests wait than a batch holds, the others come first next time.
    fn take_batch(&self) -> Vec<Pending> {
        let mut guard = self.lock();
        let waiting = &mut *guard;
        // Lines of requests that gave up may linger only if a withdraw raced a batch.
        waiting.lines.retain(|line| {
            let open = !line.request.closed.load(Ordering::SeqCst);
            if !open {
                waiting.tokens -= line.tokens;
                waiting.pairs -= line.pairs.len();
            }
            open
        });
        let lines = waiting.lines.len().max(1);
        let share = BatchBudget {
            max_tokens: self.budget.max_tokens / lines,
            max_sequences: self.budget.max_sequences.max(1) / lines,
        };
        let mut taken = vec![(0usize, 0usize); waiting.lines.len()];
        let (mut count, mut tokens) = (0, 0);
        for limit in [Some(share), None] {
            for (line, (own_count, own_tokens)) in waiting.lines.iter().zip(taken.iter_mut()) {
                for pair in line.pairs.iter().skip(*own_count) {
                    let len = pair.ids.len();
                    let batch_full = count > 0 && !self.budget.fits(tokens + len, count + 1);
                    let share_used = limit.is_some_and(|share| {
                        *own_count > 0 && !share.fits(*own_tokens + len, *own_count + 1)
                    });
                    if batch_full || share_used {
                        break;
                    }
                    (*own_count, *own_tokens) = (*own_count + 1, *own_tokens + len);
                    (count, tokens) = (count + 1, tokens + len);
                }
            }
        }
        let mut batch = Vec::with_capacity(count);
        let (mut served, mut unserved) = (VecDeque::new(), VecDeque::new());
        let mut work = 0.0;
        for (mut line, (own_count, own_tokens)) in waiting.lines.drain(..).zip(taken) {
            let own_work: f64 = line.pairs.iter().take(own_count).map(|p| p.work).sum();
            batch.extend(line.pairs.drain(..own_count));
            line.tokens -= own_tokens;
            line.work -= own_work;
            work += own_work;
            match own_count {
                0 => unserved.push_back(line),
                _ if !line.pairs.is_empty() => served.push_back(line),
                _ => {}
            }
        }
        unserved.append(&mut served);
        waiting.lines = unserved;
        waiting.tokens -= tokens;
        waiting.pairs -= count;
        waiting.running = work;
        self.publish(waiting);
        batch
    }

    fn publish(&self, waiting: &Waiting) {
        self.metrics.queue_pairs.set(waiting.pairs as i64);
        self.metrics.queue_tokens.set(waiting.tokens as i64);
    }
}
