//! What admission plans with: the work of scoring a request, and the rate at which the
//! model does work, measured on the batches it runs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// The length at which a token's attention costs as much as the rest of its forward: a
/// token of a sequence of `n` tokens costs `1 + n / ATTENTION_TOKENS` units of work.
const ATTENTION_TOKENS: f64 = 4096.0;

/// Units of work of one batch: the tokens the forward computed, `tokens` of prompt over
/// `pairs` sequences, each weighted by attention's growth with length.
pub fn batch_work(computed: usize, tokens: usize, pairs: usize) -> f64 {
    let mean_length = tokens as f64 / pairs.max(1) as f64;
    computed as f64 * (1.0 + mean_length / ATTENTION_TOKENS)
}

/// Units of work of scoring `sequences` in batches of up to `budget_tokens`: what the
/// forward computes (the prefix all of them share once per batch, each sequence's own
/// tokens once), weighted as in [`batch_work`].
pub fn request_work(sequences: &[Vec<u32>], budget_tokens: usize) -> f64 {
    let tokens: usize = sequences.iter().map(Vec::len).sum();
    let shared = match sequences {
        [first, rest @ ..] if !rest.is_empty() => rest.iter().fold(first.len(), |common, seq| {
            first[..common]
                .iter()
                .zip(seq)
                .take_while(|(a, b)| a == b)
                .count()
        }),
        _ => 0,
    };
    let batches = tokens
        .div_ceil(budget_tokens.max(1))
        .clamp(1, sequences.len().max(1));
    let computed = tokens - shared * sequences.len() + shared * batches;
    batch_work(computed, tokens, sequences.len())
}

/// The model's rate in units of work per second, measured at warm-up, then over real
/// batches. A batch moves the estimate half way to its own rate, which counts as at most
/// twice or half the estimate: a slow spell is forgotten within a few batches of any size,
/// and one odd batch cannot move it far. Batches under [`Throughput::REPRESENTATIVE_WORK`]
/// are left out: their time is mostly the forward's fixed cost, so a flood of tiny requests
/// would say the model is slow. Unknown (no refusals on time grounds) until measured.
#[derive(Default)]
pub struct Throughput(Mutex<Rates>);

#[derive(Default)]
struct Rates {
    estimate: Option<f64>,
    /// The rates of the last batches measured.
    recent: VecDeque<f64>,
}

impl Throughput {
    /// Units of work a batch needs to count.
    pub const REPRESENTATIVE_WORK: f64 = 256.0;
    /// How many batches' rates the optimistic estimate looks back on.
    const RECENT: usize = 16;
    const WEIGHT: f64 = 0.5;

    fn rates(&self) -> std::sync::MutexGuard<'_, Rates> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rate admission plans the queue with.
    pub fn tokens_per_sec(&self) -> Option<f64> {
        self.rates().estimate
    }

    /// The best rate among the last batches (the estimate if higher): what a request alone
    /// is judged by, so that a slow spell never refuses work the model could finish.
    pub fn best_tokens_per_sec(&self) -> Option<f64> {
        let rates = self.rates();
        let best = rates
            .recent
            .iter()
            .copied()
            .fold(None, |best: Option<f64>, rate| {
                Some(best.map_or(rate, |best| best.max(rate)))
            });
        match (best, rates.estimate) {
            (Some(best), Some(estimate)) => Some(best.max(estimate)),
            (best, estimate) => best.or(estimate),
        }
    }

    /// `work` (see [`batch_work`]) done in `seconds`; the first measurement counts whatever
    /// its size.
    pub fn observe(&self, work: f64, seconds: f64) {
        let mut rates = self.rates();
        if work <= 0.0
            || seconds <= 0.0
            || (work < Self::REPRESENTATIVE_WORK && rates.estimate.is_some())
        {
            return;
        }
        let now = work / seconds;
        if !now.is_finite() {
            return;
        }
        let estimate = match rates.estimate {
            Some(rate) => rate + Self::WEIGHT * (now.clamp(rate / 2.0, rate * 2.0) - rate),
            None => now,
        };
        rates.estimate = Some(estimate);
        rates.recent.push_back(now);
        if rates.recent.len() > Self::RECENT {
            rates.recent.pop_front();
        }
    }

    /// Time to do `work` at the estimate.
    pub fn time_for(&self, work: f64) -> Option<Duration> {
        self.tokens_per_sec()
            .map(|rate| Duration::from_secs_f64(work / rate))
    }
}
