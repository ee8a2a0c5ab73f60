use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::metrics::Metrics;
use crate::model::{Calibration, ModelError, Score, ScoredBatch};

/// Time left that never runs out in these tests.
const LONG: Duration = Duration::from_secs(3_600);

const CALIBRATION: Calibration = Calibration {
    raw_divisor: 5.0,
    temperature: 5.0,
};

/// Holds the model thread at the start of each batch while closed: what a test sees while
/// a batch runs does not depend on timing.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    changed: Condvar,
    /// Batches that reached the gate, and their pairs.
    arrived: AtomicUsize,
    arrived_pairs: AtomicUsize,
    /// Each batch's sequences, in the order the model ran them.
    batches: Mutex<Vec<Vec<Vec<u32>>>>,
}

impl Gate {
    fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.changed.notify_all();
    }

    fn pass(&self, sequences: &[&[u32]]) {
        self.batches
            .lock()
            .unwrap()
            .push(sequences.iter().map(|s| s.to_vec()).collect());
        self.arrived_pairs
            .fetch_add(sequences.len(), Ordering::SeqCst);
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.changed.wait(closed).unwrap();
        }
    }

    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
}

/// Scores a sequence by its contents, so a misrouted score shows; id 999 fails its batch,
/// id 777 is an input the model refuses, id 666 panics, and so does a batch over the budget.
struct FakeScorer {
    gate: Arc<Gate>,
    budget: BatchBudget,
}

impl BatchScorer for FakeScorer {
    fn score_batch(&self, sequences: &[&[u32]]) -> crate::model::Result<ScoredBatch> {
        self.gate.pass(sequences);
        let tokens = sequences.iter().map(|s| s.len()).sum();
        assert!(
            sequences.len() == 1 || self.budget.fits(tokens, sequences.len()),
            "a batch of {} sequences and {tokens} tokens is over the budget",
            sequences.len()
        );
        if sequences.iter().any(|s| s.contains(&666)) {
            panic!("poisoned input");
        }
        if sequences.iter().any(|s| s.contains(&777)) {
            return Err(ModelError::InputTooLong("777 tokens".into()));
        }
        if sequences.iter().any(|s| s.contains(&999)) {
            return Err(ModelError::Inference("non-finite logit".into()));
        }
        Ok(ScoredBatch {
            scores: sequences
                .iter()
                .map(|s| Score::new(expected(s), CALIBRATION))
                .collect(),
            computed_tokens: sequences.iter().map(|s| s.len()).sum(),
        })
    }
}

fn expected(ids: &[u32]) -> f32 {
    ids.iter().map(|&i| i as f32).sum::<f32>() / 1000.0 + ids.len() as f32
}

/// A batcher on the fake scorer, its metrics, and the gate the scorer waits at.
type Harness = (Batcher, ModelMetrics, Arc<Gate>);

fn batcher(budget: BatchBudget, max_queued_tokens: usize) -> Harness {
    batcher_at(budget, max_queued_tokens, Throughput::default())
}

fn batcher_at(budget: BatchBudget, max_queued_tokens: usize, throughput: Throughput) -> Harness {
    let metrics = Metrics::new().for_model("fake");
    let gate = Arc::new(Gate::default());
    let scorer = Arc::new(FakeScorer {
        gate: gate.clone(),
        budget,
    });
    let batcher = Batcher::spawn(
        scorer,
        budget,
        max_queued_tokens,
        Arc::new(throughput),
        metrics.clone(),
    );
    (batcher, metrics, gate)
}

/// A request scored on a task of its own, as a concurrent client sends it.
fn spawn_score(
    batcher: &Batcher,
    sequences: Vec<Vec<u32>>,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<Scored, BatchError>> {
    let batcher = batcher.clone();
    tokio::spawn(async move { batcher.score(sequences, timeout).await })
}

/// The expected wait of a 429 that names `in_the_way`.
fn busy_wait(refused: Result<Scored, BatchError>, in_the_way: InTheWay) -> Duration {
    match refused {
        Err(BatchError::Busy {
            in_the_way: found,
            expected_wait,
        }) if found == in_the_way => expected_wait,
        other => panic!("a 429 for {in_the_way:?} expected, got {other:?}"),
    }
}

/// `wait` is `seconds`, to the millisecond (the clock runs between two admissions).
fn assert_near(wait: Duration, seconds: f64) {
    assert!(
        (wait.as_secs_f64() - seconds).abs() < 0.01,
        "{wait:?}, not {seconds} s"
    );
}

/// Waits until `condition` holds (a state the test brought about, not a time).
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn sequence(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (seed * 31 + i * 7) % 500).collect()
}

const ONE_AT_A_TIME: BatchBudget = BatchBudget {
    max_tokens: 1_000,
    max_sequences: 1,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every pair is answered once, to its own request, in its order, whatever the mix of
    /// request sizes, lengths and budgets.
    #[test]
    fn every_pair_answered_once_to_its_request_in_order(
        requests in prop::collection::vec(prop::collection::vec(1usize..40, 1..12), 1..10),
        max_tokens in 40usize..200,
        max_sequences in 1usize..9,
    ) {
        runtime().block_on(async {
            let budget = BatchBudget { max_tokens, max_sequences };
            let (batcher, metrics, _) = batcher(budget, usize::MAX);
            let tasks: Vec<_> = requests.iter().enumerate().map(|(r, lengths)| {
                let batcher = batcher.clone();
                let sequences: Vec<Vec<u32>> = lengths.iter().enumerate()
                    .map(|(i, &len)| sequence((r * 100 + i) as u32, len)).collect();
                tokio::spawn(async move {
                    let scored = batcher.score(sequences.clone(), LONG).await.unwrap();
                    (sequences, scored)
                })
            }).collect();
            for task in tasks {
                let (sequences, scored) = task.await.unwrap();
                assert_eq!(scored.scores.len(), sequences.len());
                for (seq, score) in sequences.iter().zip(&scored.scores) {
                    assert_eq!(score.margin, expected(seq));
                }
            }
            assert_eq!(metrics.queue_pairs.get(), 0);
            assert_eq!(metrics.queue_tokens.get(), 0);
        });
    }
}

#[test]
fn concurrent_requests_share_batches() {
    runtime().block_on(async {
        let (batcher, metrics, gate) = batcher(BatchBudget::default(), usize::MAX);
        gate.close();
        let tasks: Vec<_> = (0..8)
            .map(|r| spawn_score(&batcher, vec![sequence(r, 10), sequence(r + 50, 12)], LONG))
            .collect();
        // The first batch in the model, every other pair waiting behind it.
        until("all 16 pairs in the model or queued behind it", || {
            gate.arrived() == 1
                && gate.arrived_pairs.load(Ordering::SeqCst) + metrics.queue_pairs.get() as usize
                    == 16
        })
        .await;
        gate.open();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // Whatever the first batch held, the waiting requests' pairs went in one more batch.
        assert!(metrics.multi_request_batches.get() >= 1);
        assert!(gate.arrived() <= 2, "{} batches", gate.arrived());
    });
}

#[test]
fn a_request_that_stops_waiting_leaves_the_queue() {
    runtime().block_on(async {
        let (batcher, metrics, gate) = batcher(ONE_AT_A_TIME, usize::MAX);
        gate.close();
        // The first request occupies the model; the second waits in the queue, then gives up.
        let busy = spawn_score(&batcher, vec![sequence(1, 5)], LONG);
        until("the first request in the model", || gate.arrived() == 1).await;
        let waiting = spawn_score(&batcher, (0..5).map(|i| sequence(i, 8)).collect(), LONG);
        until("the second request queued", || {
            metrics.queue_pairs.get() == 5
        })
        .await;
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(metrics.queue_pairs.get(), 0);
        assert_eq!(metrics.queue_tokens.get(), 0);
        gate.open();
        busy.await.unwrap().unwrap();
        // Nothing of the abandoned request ever ran: one batch in all.
        assert_eq!(gate.arrived(), 1);
        assert_eq!(metrics.batch_pairs.get_sample_count(), 1);
    });
}

#[test]
fn model_failures_fail_their_requests_and_the_batcher_goes_on() {
    runtime().block_on(async {
        let (batcher, ..) = batcher(ONE_AT_A_TIME, usize::MAX);
        for poison in [999, 666, 777] {
            let err = batcher
                .score(vec![vec![1, 2], vec![poison]], LONG)
                .await
                .unwrap_err();
            // Each failure keeps its kind: an input error is not a model error.
            match poison {
                999 => assert!(matches!(err, BatchError::Model(_)), "{err}"),
                666 => assert!(matches!(err, BatchError::Panicked(_)), "{err}"),
                _ => assert!(matches!(err, BatchError::Input(_)), "{err}"),
            }
            assert!(batcher.is_healthy());
            let ok = batcher.score(vec![vec![1, 2, 3]], LONG).await.unwrap();
            assert_eq!(ok.scores.len(), 1);
        }
    });
}

#[test]
fn the_queue_refuses_tokens_past_its_limit() {
    runtime().block_on(async {
        let (batcher, metrics, gate) = batcher(ONE_AT_A_TIME, 30);
        gate.close();
        let first = spawn_score(&batcher, vec![sequence(1, 5)], LONG);
        until("the first request in the model", || gate.arrived() == 1).await;
        // 20 tokens wait; 20 more would pass 30.
        let waiting = spawn_score(&batcher, vec![sequence(2, 20)], LONG);
        until("20 tokens queued", || metrics.queue_tokens.get() == 20).await;
        let err = batcher
            .score(vec![sequence(3, 20)], LONG)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BatchError::QueueFull { queued: 20, .. }),
            "{err}"
        );
        gate.open();
        first.await.unwrap().unwrap();
        waiting.await.unwrap().unwrap();
        // A request over the whole budget is refused even by an empty queue.
        let err = batcher
            .score(vec![sequence(4, 100)], LONG)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                BatchError::TooLarge {
                    requested: 100,
                    limit: 30
                }
            ),
            "{err}"
        );
    });
}

#[test]
fn requests_that_cannot_finish_in_time_are_refused_at_once() {
    runtime().block_on(async {
        // 100 units of work a second, as if measured at warm-up. A sequence of n tokens is
        // n * (1 + n / 4095) units (see `WorkModel`; these share no prefix).
        let throughput = Throughput::default();
        throughput.observe(100.0, 1.0);
        let (batcher, metrics, gate) = batcher_at(ONE_AT_A_TIME, usize::MAX, throughput);
        gate.close();
        // Alone, 500 tokens take 5.6 s: over a 2 s budget, refused before it queues.
        let err = batcher
            .score(vec![sequence(1, 500)], Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(err, BatchError::TooSlow { requested: 500, .. }),
            "{err}"
        );
        // It says which estimate, and what would help.
        let message = err.to_string();
        for advice in [
            "about 5.6 s even at the best rate measured recently, 100 units/s",
            "over the 2.0 s it has",
            "`request_timeout_secs`",
            "fewer or shorter documents",
            "smaller model",
        ] {
            assert!(message.contains(advice), "{advice:?} not in {message}");
        }
        assert_eq!(gate.arrived(), 0);
        // 50 tokens in the model and 150 waiting: in turns, another 100-token request waits
        // for 50 + 100 of them, 255 units of work at 100 a second, 3.19 s with the margin: it
        // would miss a 2 s budget by 1.19 s, so 429 with that wait. A request with time to
        // spare waits its turn.
        let first = spawn_score(&batcher, vec![sequence(2, 50)], LONG);
        until("the first request in the model", || gate.arrived() == 1).await;
        // With nothing queued, the batch running is what is in the way: 50 + 100 tokens are
        // 153 units, 1.91 s with the margin, 0.41 s over a 1.5 s budget.
        let refused = batcher
            .score(vec![sequence(7, 100)], Duration::from_millis(1_500))
            .await;
        let message = refused.as_ref().unwrap_err().to_string();
        assert!(
            message.starts_with(
                "behind the batch the model is running (51 units of work), this"
            ),
            "{message}"
        );
        let running_only = InTheWay::Ahead {
            running: 51,
            queued: 0,
            requests: 0,
        };
        assert_near(busy_wait(refused, running_only), 0.413);
        let queued = spawn_score(
            &batcher,
            vec![sequence(3, 150)],
            Duration::from_millis(3_500),
        );
        until("150 tokens queued", || metrics.queue_tokens.get() == 150).await;
        let refused = batcher
            .score(vec![sequence(4, 100)], Duration::from_secs(2))
            .await;
        let message = refused.as_ref().unwrap_err().to_string();
        assert!(
            message.starts_with(
                "behind the batch the model is running (51 units of work) and 155 units of work of 1 requests waiting"
            ),
            "{message}"
        );
        let ahead = InTheWay::Ahead {
            running: 51,
            queued: 155,
            requests: 1,
        };
        assert_near(busy_wait(refused, ahead), 1.194);
        // The waiting request needs 206 units, 2.58 s with the margin, of its 3.5 s. A
        // newcomer of 100 tokens, with all the time it wants, would delay it by 102 units
        // (1.28 s): refused, so that the admitted request still makes it. One of 10 tokens
        // fits beside it.
        let refused = batcher.score(vec![sequence(5, 100)], LONG).await;
        let message = refused.as_ref().unwrap_err().to_string();
        assert!(
            message.contains("one admitted before it (155 units of work"),
            "{message}"
        );
        let wait = busy_wait(refused, InTheWay::Admitted { tokens: 155 });
        assert!(wait >= Duration::from_millis(250), "{wait:?}");
        let small = spawn_score(&batcher, vec![sequence(6, 10)], LONG);
        until("the small request queued", || {
            metrics.queue_tokens.get() == 160
        })
        .await;
        gate.open();
        first.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        small.await.unwrap().unwrap();
    });
}

#[test]
fn a_small_request_is_served_in_the_next_batch_behind_a_big_one() {
    runtime().block_on(async {
        let budget = BatchBudget {
            max_tokens: 100,
            max_sequences: 10,
        };
        let (batcher, metrics, gate) = batcher(budget, usize::MAX);
        gate.close();
        // 200 pairs of 10 tokens: 20 full batches.
        let big = tokio::spawn({
            let batcher = batcher.clone();
            async move {
                let sequences: Vec<Vec<u32>> = (0..200).map(|i| sequence(i, 10)).collect();
                let scored = batcher.score(sequences.clone(), LONG).await.unwrap();
                (sequences, scored)
            }
        });
        until("the big request's first batch in the model", || {
            gate.arrived() == 1
        })
        .await;
        // Token 4242 marks the small request's pairs (the big one's ids stay under 500).
        let small_pairs: Vec<Vec<u32>> = (0..2)
            .map(|i| {
                let mut ids = sequence(1_000 + i, 9);
                ids.push(4242);
                ids
            })
            .collect();
        let small = tokio::spawn({
            let batcher = batcher.clone();
            let sequences = small_pairs.clone();
            async move { batcher.score(sequences, LONG).await.unwrap() }
        });
        until("the small request queued", || {
            metrics.queue_pairs.get() == 190 + 2
        })
        .await;
        gate.open();
        let scored = small.await.unwrap();
        for (ids, score) in small_pairs.iter().zip(&scored.scores) {
            assert_eq!(score.margin, expected(ids));
        }
        let (sequences, scored) = big.await.unwrap();
        for (ids, score) in sequences.iter().zip(&scored.scores) {
            assert_eq!(score.margin, expected(ids));
        }
        let batches = gate.batches.lock().unwrap();
        let holding_small: Vec<usize> = (0..batches.len())
            .filter(|&b| batches[b].iter().any(|ids| ids.contains(&4242)))
            .collect();
        // The batch after the one running when it came, not the 21st.
        assert_eq!(holding_small, vec![1], "{} batches in all", batches.len());
        // Its pairs sit together, and every batch but the last is full.
        let second = &batches[1];
        let at = second.iter().position(|ids| ids.contains(&4242)).unwrap();
        assert!(second[at + 1].contains(&4242));
        assert_eq!(batches.len(), 21);
    });
}

/// A server whose estimate is pessimistic (half the model's real rate, as when it warmed up
/// beside busy neighbours) accepts, from the first requests on, every request that takes
/// at most half its timeout at the real rate: one of short documents, and one whose
/// documents share a long query (counted once a batch, as the engine computes it).
#[test]
fn a_pessimistic_estimate_refuses_no_request_of_half_its_timeout() {
    runtime().block_on(async {
        // Real rate 100 units/s; the estimate says 50.
        let throughput = Throughput::default();
        throughput.observe(50.0, 1.0);
        let (batcher, _, _) = batcher_at(ONE_AT_A_TIME, usize::MAX, throughput);
        let timeout = Duration::from_secs(4);
        let short: Vec<Vec<u32>> = (0..8).map(|i| sequence(i, 12)).collect();
        // 10 documents of 10 tokens under a 60-token query: 700 prompt tokens, 160 computed,
        // 163 units: 1.6 s at the real rate, 3.3 s at the estimate.
        let query = sequence(99, 60);
        let shared: Vec<Vec<u32>> = (0..10)
            .map(|i| [query.clone(), sequence(i, 10)].concat())
            .collect();
        for (case, sequences) in [("short documents", short), ("a shared query", shared)] {
            let work = WorkModel::default().request(&sequences, ONE_AT_A_TIME.max_tokens);
            assert!(work / 100.0 <= 2.0, "{case}: {work} units");
            let scored = batcher.score(sequences, timeout).await;
            assert!(scored.is_ok(), "{case}: {scored:?}");
        }
    });
}

/// A slow spell (a slow warm-up) is forgotten within a few batches, whatever their fill;
/// a flood of tiny batches and one pathological batch cannot pull the estimate down far.
#[test]
fn the_estimate_recovers_and_resists_tiny_and_pathological_batches() {
    let throughput = Throughput::default();
    throughput.observe(8_000.0, 100.0); // warm-up at 80 units/s, beside busy neighbours
    // Real batches run at 240 units/s, each a tenth of a 16,384-token budget.
    for _ in 0..3 {
        throughput.observe(1_638.0, 1_638.0 / 240.0);
    }
    let rate = throughput.tokens_per_sec().unwrap();
    assert!(rate >= 200.0, "{rate} units/s after three batches");
    assert_eq!(throughput.best_tokens_per_sec(), Some(240.0));
    // A thousand one-pair batches, slow per token (their time is the forward's fixed cost).
    for _ in 0..1_000 {
        throughput.observe(12.0, 0.5);
    }
    assert_eq!(throughput.tokens_per_sec(), Some(rate));
    // One batch at a hundredth of the rate (a page-in, a huge prompt): at most halved.
    throughput.observe(2_000.0, 2_000.0 / 2.4);
    let after = throughput.tokens_per_sec().unwrap();
    assert!(after >= rate * 0.75 - 1e-9, "{after} after {rate}");
    assert_eq!(throughput.best_tokens_per_sec(), Some(240.0));
    // An ordinary request of 40 s at the real rate, in a 60 s timeout, is still admitted.
    let ordinary = 40.0 * 240.0;
    assert!(ordinary / throughput.best_tokens_per_sec().unwrap() <= 60.0);
}
