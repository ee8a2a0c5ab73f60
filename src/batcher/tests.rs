use std::sync::Arc;
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

/// Scores a sequence by its contents, so a misrouted score shows; id 999 fails its batch,
/// id 777 is an input the model refuses, id 666 panics, and so does a batch over the budget.
struct FakeScorer {
    delay: Duration,
    budget: BatchBudget,
}

impl BatchScorer for FakeScorer {
    fn score_batch(&self, sequences: &[&[u32]]) -> crate::model::Result<ScoredBatch> {
        std::thread::sleep(self.delay);
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

fn batcher(
    delay_ms: u64,
    budget: BatchBudget,
    max_queued_tokens: usize,
) -> (Batcher, ModelMetrics) {
    let metrics = Arc::new(Metrics::new());
    let scorer = Arc::new(FakeScorer {
        delay: Duration::from_millis(delay_ms),
        budget,
    });
    (
        Batcher::spawn(
            scorer,
            budget,
            max_queued_tokens,
            Arc::new(Throughput::default()),
            metrics.for_model("fake"),
        ),
        metrics.for_model("fake"),
    )
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
            let (batcher, metrics) = batcher(0, budget, usize::MAX);
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
        let (batcher, metrics) = batcher(30, BatchBudget::default(), usize::MAX);
        let tasks: Vec<_> = (0..8)
            .map(|r| {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    batcher
                        .score(vec![sequence(r, 10), sequence(r + 50, 12)], LONG)
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert!(metrics.multi_request_batches.get() > 0);
    });
}

#[test]
fn a_request_that_stops_waiting_leaves_the_queue() {
    runtime().block_on(async {
        let budget = BatchBudget {
            max_tokens: 1_000,
            max_sequences: 1,
        };
        let (batcher, metrics) = batcher(200, budget, usize::MAX);
        // The first request occupies the model; the second waits in the queue, then gives up.
        let busy = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.score(vec![sequence(1, 5)], LONG).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            batcher.score((0..5).map(|i| sequence(i, 8)).collect(), LONG),
        )
        .await;
        assert!(gave_up.is_err(), "timed out");
        assert_eq!(metrics.queue_pairs.get(), 0);
        assert_eq!(metrics.queue_tokens.get(), 0);
        busy.await.unwrap().unwrap();
        // Nothing of the abandoned request ever ran: one batch in all.
        assert_eq!(metrics.batch_pairs.get_sample_count(), 1);
    });
}

#[test]
fn model_failures_fail_their_requests_and_the_batcher_goes_on() {
    runtime().block_on(async {
        let budget = BatchBudget {
            max_tokens: 1_000,
            max_sequences: 1,
        };
        let (batcher, _) = batcher(0, budget, usize::MAX);
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
        let budget = BatchBudget {
            max_tokens: 1_000,
            max_sequences: 1,
        };
        let (batcher, _) = batcher(200, budget, 30);
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.score(vec![sequence(1, 5)], LONG).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // 20 tokens wait; 20 more would pass 30.
        let waiting = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.score(vec![sequence(2, 20)], LONG).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let err = batcher
            .score(vec![sequence(3, 20)], LONG)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BatchError::QueueFull { queued: 20, .. }),
            "{err}"
        );
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
        let budget = BatchBudget {
            max_tokens: 1_000,
            max_sequences: 1,
        };
        let metrics = Metrics::new();
        let throughput = Arc::new(Throughput::default());
        // 100 tokens a second, as if measured at warm-up.
        throughput.observe(100, 1.0);
        let batcher = Batcher::spawn(
            Arc::new(FakeScorer {
                delay: Duration::from_millis(800),
                budget,
            }),
            budget,
            usize::MAX,
            throughput,
            metrics.for_model("fake"),
        );
        // Alone, 500 tokens take ~5 s: over a 2 s budget, refused before it queues.
        let err = batcher
            .score(vec![sequence(1, 500)], Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(err, BatchError::TooSlow { requested: 500, .. }),
            "{err}"
        );
        // Behind ~1.5 s of queued work, another 1 s request would miss a 2 s budget: 429
        // with the expected wait; a request with time to spare waits its turn.
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.score(vec![sequence(2, 50)], LONG).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.score(vec![sequence(3, 150)], LONG).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = batcher
            .score(vec![sequence(4, 100)], Duration::from_secs(2))
            .await
            .unwrap_err();
        match err {
            BatchError::Busy {
                queued: 150,
                expected_wait,
            } => assert!(
                expected_wait >= Duration::from_millis(400),
                "{expected_wait:?}"
            ),
            other => panic!("{other}"),
        }
        first.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
    });
}
