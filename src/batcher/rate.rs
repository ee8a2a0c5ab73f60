//! What admission plans with: the work of scoring a request, and the rate at which the
//! model does work, measured on the batches it runs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// How a model's work grows with its input.
#[derive(Debug, Clone, Copy)]
pub struct WorkModel {
    /// The length at which a token's attention costs as much as the rest of its forward: a
    /// token of a sequence of `n` tokens costs `1 + n / attention_tokens` units of work.
    attention_tokens: f64,
    /// Whether the forward computes a prefix shared by a batch's sequences once.
    prefix_sharing: bool,
}

impl WorkModel {
    /// Per token and layer, attention costs about `4 n h` multiply-adds against the linear
    /// layers' `26 h^2` (with an MLP three times as wide): even at `n = 6.5 h`.
    pub fn of(hidden_size: usize, prefix_sharing: bool) -> Self {
        WorkModel {
            attention_tokens: 6.5 * hidden_size.max(1) as f64,
            prefix_sharing,
        }
    }

    /// Units of work of one batch: the tokens the forward computed, `tokens` of prompt over
    /// `pairs` sequences, each weighted by attention's growth with length.
    pub fn batch(&self, computed: usize, tokens: usize, pairs: usize) -> f64 {
        let mean_length = tokens as f64 / pairs.max(1) as f64;
        computed as f64 * (1.0 + mean_length / self.attention_tokens)
    }

    /// Units of work of scoring `sequences` in batches of up to `budget_tokens`: what the
    /// forward computes (the prefix all of them share once per batch, each sequence's own
    /// tokens once), weighted as in [`WorkModel::batch`].
    pub fn request(&self, sequences: &[Vec<u32>], budget_tokens: usize) -> f64 {
        let tokens: usize = sequences.iter().map(Vec::len).sum();
        let shared = if self.prefix_sharing {
            shared_prefix(sequences)
        } else {
            0
        };
        let batches = tokens
            .div_ceil(budget_tokens.max(1))
            .clamp(1, sequences.len().max(1));
        let computed = tokens - shared * sequences.len() + shared * batches;
        self.batch(computed, tokens, sequences.len())
    }
}

impl Default for WorkModel {
    /// A model of hidden size 630 that shares prefixes: for tests of the batcher.
    fn default() -> Self {
        WorkModel::of(630, true)
    }
}

/// The length of the prefix all `sequences` share (none for a single one).
fn shared_prefix(sequences: &[Vec<u32>]) -> usize {
    match sequences {
        [first, rest @ ..] if !rest.is_empty() => rest.iter().fold(first.len(), |common, seq| {
            first[..common]
                .iter()
                .zip(seq)
                .take_while(|(a, b)| a == b)
                .count()
        }),
        _ => 0,
    }
}

/// The model's rate in units of work per second, measured at warm-up, then over real
/// batches. A batch moves the estimate half way to its own rate, which counts as at most
/// twice or half the estimate: a slow spell is forgotten within a few batches of any size,
/// and one odd batch cannot move it far. Batches under [`Throughput::REPRESENTATIVE_WORK`]
/// are left out: their time is mostly the forward's fixed cost, so a flood of tiny requests
/// would say the model is slow. Unknown (no refusals on time grounds) until measured.
#[derive(Default)]
pub struct Throughput {
    rates: Mutex<Rates>,
    work: WorkModel,
}

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

    pub fn new(work: WorkModel) -> Self {
        Throughput {
            rates: Mutex::default(),
            work,
        }
    }

    /// How the work it measures is counted.
    pub fn work(&self) -> &WorkModel {
        &self.work
    }

    fn rates(&self) -> std::sync::MutexGuard<'_, Rates> {
        self.rates.lock().unwrap_or_else(|e| e.into_inner())
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

    /// `work` (see [`WorkModel::batch`]) done in `seconds`; the first measurement counts whatever
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
