//! The model thread: runs one batch at a time and hands each score to its request.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::queue::{Pending, Queue};
use super::{BatchError, BatchScorer, Request, Throughput};
use crate::metrics::ModelMetrics;
use crate::model::ModelError;

pub(super) type BatchMessage = (Vec<Pending>, OwnedSemaphorePermit);

pub(super) fn spawn(
    engine: Arc<dyn BatchScorer>,
    mut incoming: mpsc::Receiver<BatchMessage>,
    queue: Arc<Queue>,
    alive: Arc<AtomicBool>,
    throughput: Arc<Throughput>,
    metrics: ModelMetrics,
) {
    std::thread::Builder::new()
        .name("zerank-model".into())
        .spawn(move || {
            while let Some((batch, permit)) = incoming.blocking_recv() {
                run_and_answer(engine.as_ref(), batch, &queue, &throughput, &metrics);
                drop(permit);
            }
            alive.store(false, Ordering::SeqCst);
        })
        .expect("the model thread starts");
}

fn run_and_answer(
    engine: &dyn BatchScorer,
    batch: Vec<Pending>,
    queue: &Queue,
    throughput: &Throughput,
    metrics: &ModelMetrics,
) {
    let mut requests: Vec<&Arc<Request>> = Vec::new();
    let mut seen = HashSet::new();
    for pending in &batch {
        if seen.insert(Arc::as_ptr(&pending.request)) {
            requests.push(&pending.request);
        }
    }
    let tokens: usize = batch.iter().map(|p| p.ids.len()).sum();
    // Each request's trace gets the batch's forward as its own span.
    let forward_spans: Vec<tracing::Span> = requests
        .iter()
        .map(|request| {
            let own = batch
                .iter()
                .filter(|p| Arc::ptr_eq(&p.request, request))
                .count();
            request.start_batch(batch.len(), tokens, own)
        })
        .collect();

    let started = Instant::now();
    let sequences: Vec<&[u32]> = batch.iter().map(|p| p.ids.as_slice()).collect();
    // A panic inside the forward fails this batch's requests, not the server.
    let outcome = catch_unwind(AssertUnwindSafe(|| engine.score_batch(&sequences)));
    let inference = started.elapsed();
    // Before any answer: a request sent on it must not see this batch as still running.
    queue.model_idle();
    drop(forward_spans);
    let computed = match &outcome {
        Ok(Ok(scored)) => Some(scored.computed_tokens),
        _ => None,
    };
    let held = BatchHeld {
        pairs: batch.len(),
        requests: requests.len(),
        tokens,
    };
    observe(held, metrics, inference.as_secs_f64(), computed);

    match outcome {
        Ok(Ok(scored)) => {
            let work = throughput
                .work()
                .batch(scored.computed_tokens, tokens, batch.len());
            throughput.observe(work, inference.as_secs_f64());
            if let Some(rate) = throughput.tokens_per_sec() {
                metrics.estimated_tokens_per_second.set(rate);
            }
            for request in &requests {
                request.add_inference_time(inference);
            }
            for (pending, score) in batch.iter().zip(scored.scores) {
                pending.request.record(pending.position, score, started);
            }
        }
        Ok(Err(err)) => {
            tracing::error!(error = %err, pairs = batch.len(), "batch failed");
            let error = match err {
                // The instruction is checked before a request is queued.
                ModelError::InputTooLong(_) => BatchError::Input(err.to_string()),
                other => BatchError::Model(other.to_string()),
            };
            for request in requests {
                request.fail(error.clone());
            }
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, pairs = batch.len(), "the forward pass panicked");
            for request in requests {
                request.fail(BatchError::Panicked(what.clone()));
            }
        }
    }
}

/// What one batch held.
struct BatchHeld {
    pairs: usize,
    /// Distinct requests with pairs in it.
    requests: usize,
    /// Prompt tokens of its pairs.
    tokens: usize,
}

/// `computed`: the tokens the forward pass computed, when it succeeded.
fn observe(held: BatchHeld, metrics: &ModelMetrics, seconds: f64, computed: Option<usize>) {
    metrics.inference_duration.observe(seconds);
    metrics.batch_pairs.observe(held.pairs as f64);
    metrics.batch_requests.observe(held.requests as f64);
    if held.requests > 1 {
        metrics.multi_request_batches.inc();
    }
    metrics.batch_tokens.observe(held.tokens as f64);
    if let Some(computed) = computed.filter(|_| held.tokens > 0) {
        metrics.batch_computed_tokens.observe(computed as f64);
        metrics
            .batch_shared_ratio
            .observe(held.tokens.saturating_sub(computed) as f64 / held.tokens as f64);
    }
}
