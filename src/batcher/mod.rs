//! The dynamic batcher of one model: pairs of every request enter one queue; a batching task
//! takes a batch within the token budget whenever the model thread is free, every waiting
//! request getting its turn (see [`queue`]), so an idle server runs a lone request at once, a
//! busy one packs pairs of many requests, and a small request never waits out a big one.

mod queue;
mod rate;
#[cfg(test)]
mod tests;
mod worker;

pub use rate::{Throughput, WorkModel};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics::ModelMetrics;
use crate::model::{BatchBudget, Engine, Score, ScoredBatch};

/// What the model thread runs: a batch of token-id sequences in, one score each out.
/// The engine is the real one; tests substitute their own.
pub trait BatchScorer: Send + Sync + 'static {
    fn score_batch(&self, sequences: &[&[u32]]) -> crate::model::Result<ScoredBatch>;
}

impl BatchScorer for Engine {
    fn score_batch(&self, sequences: &[&[u32]]) -> crate::model::Result<ScoredBatch> {
        Engine::score_batch(self, sequences)
    }
}
use queue::{Load, Pending, Queue};

/// Why a submission got no scores.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error(
        "the request's {requested} prompt tokens are over the queue's budget of {limit} (max_queued_tokens)"
    )]
    TooLarge { requested: usize, limit: usize },
    #[error(
        "the request's {requested} prompt tokens ({work:.0} units of work after prefix sharing, longer prompts weighing more) would take about {seconds:.1} s even at the best rate measured recently, {tokens_per_sec:.0} units/s, over the {time_left:.1} s it has; raise `request_timeout_secs`, send fewer or shorter documents, or serve a smaller model"
    )]
    TooSlow {
        requested: usize,
        work: f64,
        tokens_per_sec: f64,
        seconds: f64,
        time_left: f64,
    },
    #[error(
        "the queue holds {queued} tokens; this request's {requested} would pass the limit of {limit}"
    )]
    QueueFull {
        queued: usize,
        requested: usize,
        limit: usize,
        expected_wait: Duration,
    },
    #[error(
        "{in_the_way} by about {:.1} s at the measured throughput; retry later or send fewer documents", expected_wait.as_secs_f64()
    )]
    Busy {
        in_the_way: InTheWay,
        expected_wait: Duration,
    },
    /// The input cannot be scored (found during the forward, e.g. too long for the model).
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Model(String),
    #[error("the forward pass panicked: {0}")]
    Panicked(String),
    #[error("the model worker has stopped")]
    Stopped,
}

/// What would make a request late, for the 429's message.
#[derive(Debug, Clone, PartialEq)]
pub enum InTheWay {
    /// The request itself would miss its timeout behind the batch in the model (`running`
    /// tokens, 0 when idle) and its turns beside `queued` tokens of `requests` waiting.
    Ahead {
        running: usize,
        queued: usize,
        requests: usize,
    },
    /// Its turns would make a request admitted before it, `tokens` (of work) still waiting,
    /// miss its own timeout.
    Admitted { tokens: usize },
}

impl std::fmt::Display for InTheWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            InTheWay::Ahead {
                running,
                queued,
                requests,
            } => {
                let batch = format!("the batch the model is running ({running} units of work)");
                let waiting = format!("{queued} units of work of {requests} requests waiting");
                let ahead = match (running, queued) {
                    (_, 0) => batch,
                    (0, _) => waiting,
                    _ => format!("{batch} and {waiting}"),
                };
                write!(f, "behind {ahead}, this request would miss its timeout")
            }
            InTheWay::Admitted { tokens } => write!(
                f,
                "this request would make one admitted before it ({tokens} units of work still waiting) miss its timeout"
            ),
        }
    }
}

/// How much longer than the estimate admission plans the queue for: the rate is measured
/// on the batches that ran. The attack that set it saw a request estimated at 46.5 s take
/// 54.7 s (1.18x).
pub const ADMISSION_MARGIN: f64 = 1.25;

/// What admission expects `work` to take, with its margin; `None` until measured.
fn planned(throughput: &Throughput, work: f64) -> Option<Duration> {
    throughput
        .time_for(work)
        .map(|time| time.mul_f64(ADMISSION_MARGIN))
}

/// A request's scores, in its own order, and where its time went.
#[derive(Debug, Clone)]
pub struct Scored {
    pub scores: Vec<Score>,
    /// From submission to the start of the last batch that held one of its pairs.
    pub queue_time: Duration,
    /// Forward-pass time of the batches that held its pairs.
    pub inference_time: Duration,
}

/// One request's share of the batcher's work: where its scores gather.
struct Request {
    state: std::sync::Mutex<RequestState>,
    /// The caller's span: the parent of the forward passes that hold its pairs.
    span: tracing::Span,
    /// Set once the request no longer wants answers (client gone, timed out, or failed).
    closed: AtomicBool,
    submitted: Instant,
    /// When its caller stops waiting.
    deadline: Instant,
}

struct RequestState {
    scores: Vec<Option<Score>>,
    remaining: usize,
    queue_time: Duration,
    inference_time: Duration,
    reply: Option<oneshot::Sender<Result<Scored, BatchError>>>,
    /// Open from submission until the first batch that holds one of its pairs starts.
    queue_span: Option<tracing::Span>,
}

impl Request {
    /// Stores one pair's score; the last one answers the request.
    fn record(&self, position: usize, score: Score, batch_started: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.reply.is_none() || state.scores[position].is_some() {
            return;
        }
        state.scores[position] = Some(score);
        state.remaining -= 1;
        state.queue_time = state
            .queue_time
            .max(batch_started.saturating_duration_since(self.submitted));
        if state.remaining > 0 {
            return;
        }
        let scored = Scored {
            scores: state.scores.iter().flatten().copied().collect(),
            queue_time: state.queue_time,
            inference_time: state.inference_time,
        };
        self.closed.store(true, Ordering::SeqCst);
        if let Some(reply) = state.reply.take() {
            let _ = reply.send(Ok(scored));
        }
    }

    /// Ends the wait in the queue (at the first batch), and opens this batch's forward span.
    fn start_batch(
        &self,
        batch_pairs: usize,
        batch_tokens: usize,
        own_pairs: usize,
    ) -> tracing::Span {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.queue_span.take();
        tracing::info_span!(
            parent: &self.span,
            "forward",
            batch.pairs = batch_pairs as i64,
            batch.tokens = batch_tokens as i64,
            pairs = own_pairs as i64
        )
    }

    /// Adds a batch's forward time once per batch, not once per pair.
    fn add_inference_time(&self, inference: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.inference_time += inference;
    }

    fn fail(&self, error: BatchError) {
        self.closed.store(true, Ordering::SeqCst);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reply) = state.reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}

/// Handle to the batcher; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    queue: Arc<Queue>,
    budget: BatchBudget,
    max_queued_tokens: usize,
    worker_alive: Arc<AtomicBool>,
    throughput: Arc<Throughput>,
    metrics: ModelMetrics,
}

impl Batcher {
    /// Starts the model thread and the batching task; call inside a Tokio runtime.
    pub fn spawn(
        engine: Arc<dyn BatchScorer>,
        budget: BatchBudget,
        max_queued_tokens: usize,
        throughput: Arc<Throughput>,
        metrics: ModelMetrics,
    ) -> Self {
        let queue = Arc::new(Queue::new(budget, metrics.clone()));
        let worker_alive = Arc::new(AtomicBool::new(true));
        // The model takes one batch at a time; the next is formed only when it is free, so
        // that pairs arriving meanwhile can join it.
        let (batches, incoming) = mpsc::channel(1);
        worker::spawn(
            engine,
            incoming,
            queue.clone(),
            worker_alive.clone(),
            throughput.clone(),
            metrics.clone(),
        );
        let model_free = Arc::new(Semaphore::new(1));
        let batching_queue = queue.clone();
        tokio::spawn(async move {
            loop {
                let Ok(permit) = model_free.clone().acquire_owned().await else {
                    return;
                };
                batching_queue.model_idle();
                let batch = batching_queue.next_batch().await;
                if batches.send((batch, permit)).await.is_err() {
                    return;
                }
            }
        });
        Batcher {
            queue,
            budget,
            max_queued_tokens,
            worker_alive,
            throughput,
            metrics,
        }
    }

    pub fn throughput(&self) -> &Throughput {
        &self.throughput
    }

    /// Whether the model thread is still running.
    pub fn is_healthy(&self) -> bool {
        self.worker_alive.load(Ordering::SeqCst)
    }

    /// Scores the sequences (token ids of encoded pairs), returned in their order. Dropping
    /// the future (client gone, timeout) takes the request's remaining pairs off the queue.
    ///
    /// Refused at once, so that it never holds the queue for nothing: a request over the
    /// queue's budget, or one that could not finish in `time_left` alone even at the best
    /// rate measured recently (413); one that could not finish in its turns behind the
    /// batch running and beside the requests waiting, at the estimate with
    /// [`ADMISSION_MARGIN`], or that would make one of them miss its own time (429, with
    /// the expected wait). Work is counted as the engine does it: see [`WorkModel::request`].
    pub async fn score(
        &self,
        sequences: Vec<Vec<u32>>,
        time_left: Duration,
    ) -> Result<Scored, BatchError> {
        if !self.is_healthy() {
            return Err(BatchError::Stopped);
        }
        if sequences.is_empty() {
            return Ok(Scored {
                scores: Vec::new(),
                queue_time: Duration::ZERO,
                inference_time: Duration::ZERO,
            });
        }
        let requested: usize = sequences.iter().map(Vec::len).sum();
        let limit = self.max_queued_tokens;
        if requested > limit {
            return Err(BatchError::TooLarge { requested, limit });
        }
        let work = self
            .throughput
            .work()
            .request(&sequences, self.budget.max_tokens);
        if let Some(best) = self.throughput.best_tokens_per_sec()
            && work / best > time_left.as_secs_f64()
        {
            return Err(BatchError::TooSlow {
                requested,
                work,
                tokens_per_sec: best,
                seconds: work / best,
                time_left: time_left.as_secs_f64(),
            });
        }
        let work_each = work / sequences.len() as f64;
        for seq in &sequences {
            self.metrics.input_tokens.observe(seq.len() as f64);
        }
        let (reply, answer) = oneshot::channel();
        let submitted = Instant::now();
        let request = Arc::new(Request {
            state: std::sync::Mutex::new(RequestState {
                scores: vec![None; sequences.len()],
                remaining: sequences.len(),
                queue_time: Duration::ZERO,
                inference_time: Duration::ZERO,
                reply: Some(reply),
                queue_span: Some(tracing::info_span!(
                    "queue",
                    pairs = sequences.len() as i64,
                    tokens = requested as i64
                )),
            }),
            span: tracing::Span::current(),
            closed: AtomicBool::new(false),
            submitted,
            deadline: submitted + time_left,
        });
        let pending = sequences
            .into_iter()
            .enumerate()
            .map(|(position, ids)| Pending {
                request: request.clone(),
                position,
                ids,
                work: work_each,
            })
            .collect();
        let throughput = &self.throughput;
        self.queue.push(request.clone(), pending, |load| {
            let queued = load.queued_tokens;
            if queued + requested > limit {
                return Err(BatchError::QueueFull {
                    queued,
                    requested,
                    limit,
                    expected_wait: throughput
                        .time_for(load.queued())
                        .unwrap_or(Duration::from_secs(1)),
                });
            }
            match late_by(throughput, load, work, time_left, submitted) {
                Some((expected_wait, in_the_way)) => Err(BatchError::Busy {
                    in_the_way,
                    expected_wait,
                }),
                None => Ok(()),
            }
        })?;
        let _withdraw_on_drop = Withdraw {
            queue: &self.queue,
            request: &request,
        };
        let result = answer.await.unwrap_or(Err(BatchError::Stopped));
        if let Ok(scored) = &result {
            self.metrics
                .queue_duration
                .observe(scored.queue_time.as_secs_f64());
        }
        result
    }
}

/// How late a request of `work` joining `load` would make itself or a waiting request
/// that is on time now, the longest, and which; `None` when every one still makes it.
/// Served in turns, the newcomer waits for at most its own size of every other request,
/// and delays each by at most its own size. Into an idle model a request is never late on
/// the queue's account: alone, it was judged by the best rate.
fn late_by(
    throughput: &Throughput,
    load: &Load,
    work: f64,
    time_left: Duration,
    now: Instant,
) -> Option<(Duration, InTheWay)> {
    if load.is_empty() {
        return None;
    }
    let overrun = |work: f64, time_left: Duration| {
        planned(throughput, work)
            .and_then(|time| time.checked_sub(time_left))
            .filter(|late| !late.is_zero())
    };
    let ahead = InTheWay::Ahead {
        running: load.running.round() as usize,
        queued: load.queued().round() as usize,
        requests: load.waiting.len(),
    };
    let own = overrun(load.work_until_done(work), time_left).map(|late| (late, ahead));
    let others = load.waiting.iter().filter_map(|&(other, deadline)| {
        let time_left = deadline.saturating_duration_since(now);
        // It is among the waiting, so `work_until_done` counts it twice.
        let before = load.work_until_done(other) - other;
        overrun(before, time_left)
            .is_none()
            .then(|| overrun(before + work.min(other), time_left))
            .flatten()
            .map(|late| {
                let tokens = other.round() as usize;
                (late, InTheWay::Admitted { tokens })
            })
    });
    own.into_iter().chain(others).max_by_key(|(late, _)| *late)
}

/// Takes a request's pairs off the queue when its caller stops waiting.
struct Withdraw<'a> {
    queue: &'a Queue,
    request: &'a Arc<Request>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.request.closed.store(true, Ordering::SeqCst);
        self.queue.withdraw(self.request);
    }
}
