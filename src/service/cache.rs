//! The score cache of one model: the scores of prompts already computed, keyed by a digest
//! of their token ids, dropped least recently used to stay within a byte budget. A prompt
//! that one request is computing is waited for by the others, not computed again.
//!
//! Keying on the exact token ids, not the texts, is what keeps it right: the instruction,
//! the template, truncation and chunking all show in the ids, and the model is fixed per
//! cache.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;

use lru::LruCache;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::metrics::ModelMetrics;
use crate::model::Score;

/// 128 bits of SHA-256 over a prompt's token ids: a collision is far less likely than a
/// memory fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PromptKey([u8; 16]);

impl PromptKey {
    pub fn of(ids: &[u32]) -> Self {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
        let digest = Sha256::digest(&bytes);
        PromptKey(digest[..16].try_into().expect("SHA-256 has 32 bytes"))
    }
}

/// What one entry costs: its key and score, plus the LRU's node links and hash-table slot.
pub const ENTRY_BYTES: usize = size_of::<PromptKey>() + size_of::<Score>() + 64;

/// What a lookup found for one prompt of a request.
pub enum Found {
    Score(Score),
    /// Another request is computing it.
    Pending(watch::Receiver<Option<Score>>),
    /// This request computes it: the claim holds the promise to the others.
    Claimed,
    /// The same prompt comes earlier in this request, at this position.
    Repeat(usize),
}

struct Entries {
    scores: LruCache<PromptKey, Score>,
    computing: HashMap<PromptKey, watch::Receiver<Option<Score>>>,
}

pub struct ScoreCache {
    entries: Mutex<Entries>,
    capacity: usize,
    metrics: ModelMetrics,
}

impl ScoreCache {
    /// A cache of at most `budget_bytes`; `None` when that holds no entry (the cache is off).
    pub fn new(budget_bytes: usize, metrics: ModelMetrics) -> Option<Self> {
        let capacity = budget_bytes / ENTRY_BYTES;
        (capacity > 0).then(|| ScoreCache {
            entries: Mutex::new(Entries {
                scores: LruCache::unbounded(),
                computing: HashMap::new(),
            }),
            capacity,
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is known of each prompt; the prompts found nowhere are claimed for the caller,
    /// who computes them and fulfils the claim.
    pub fn look_up(&self, keys: &[PromptKey]) -> (Vec<Found>, Claim<'_>) {
        let mut entries = self.lock();
        let mut claim = Claim {
            cache: self,
            promises: HashMap::new(),
        };
        let mut first_at: HashMap<PromptKey, usize> = HashMap::new();
        let found = keys
            .iter()
            .enumerate()
            .map(|(position, key)| {
                if let Some(&earlier) = first_at.get(key) {
                    return Found::Repeat(earlier);
                }
                first_at.insert(*key, position);
                if let Some(score) = entries.scores.get(key) {
                    self.metrics.score_cache_hits.inc();
                    return Found::Score(*score);
                }
                match entries.computing.entry(*key) {
                    Entry::Occupied(pending) => {
                        self.metrics.score_cache_hits.inc();
                        Found::Pending(pending.get().clone())
                    }
                    Entry::Vacant(slot) => {
                        self.metrics.score_cache_misses.inc();
                        let (promise, pending) = watch::channel(None);
                        slot.insert(pending);
                        claim.promises.insert(*key, promise);
                        Found::Claimed
                    }
                }
            })
            .collect();
        (found, claim)
    }

    /// Keeps a score computed outside a claim (after the claimant failed).
    pub fn insert(&self, key: PromptKey, score: Score) {
        let mut entries = self.lock();
        self.put(&mut entries, key, score);
    }

    fn put(&self, entries: &mut Entries, key: PromptKey, score: Score) {
        entries.scores.put(key, score);
        let mut evicted = 0;
        while entries.scores.len() > self.capacity {
            entries.scores.pop_lru();
            evicted += 1;
        }
        self.metrics.score_cache_evictions.inc_by(evicted);
        self.metrics
            .score_cache_bytes
            .set((entries.scores.len() * ENTRY_BYTES) as i64);
    }
}

/// The prompts one request computes for everyone. Fulfilled, their scores enter the cache
/// and reach the requests waiting for them; dropped unfulfilled (the request failed or went
/// away), the waiting requests compute them themselves.
pub struct Claim<'a> {
    cache: &'a ScoreCache,
    promises: HashMap<PromptKey, watch::Sender<Option<Score>>>,
}

impl Claim<'_> {
    pub fn fulfil(mut self, scored: impl IntoIterator<Item = (PromptKey, Score)>) {
        let mut entries = self.cache.lock();
        for (key, score) in scored {
            if let Some(promise) = self.promises.remove(&key) {
                entries.computing.remove(&key);
                self.cache.put(&mut entries, key, score);
                promise.send_replace(Some(score));
            }
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.promises.is_empty() {
            return;
        }
        let mut entries = self.cache.lock();
        for key in self.promises.keys() {
            entries.computing.remove(key);
        }
        // Dropping the senders wakes the waiting requests with an error.
        self.promises.clear();
    }
}

/// The score another request promised; `None` when it gave up.
pub async fn wait_for(mut pending: watch::Receiver<Option<Score>>) -> Option<Score> {
    pending
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|score| *score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::model::Calibration;

    fn score(margin: f32) -> Score {
        Score::new(
            margin,
            Calibration {
                raw_divisor: 1.0,
                temperature: 1.0,
            },
        )
    }

    fn cache(entries: usize) -> (ScoreCache, ModelMetrics) {
        let metrics = Metrics::new().for_model("m");
        let cache = ScoreCache::new(entries * ENTRY_BYTES, metrics.clone()).unwrap();
        (cache, metrics)
    }

    #[test]
    fn a_budget_below_one_entry_turns_it_off() {
        let metrics = Metrics::new().for_model("m");
        assert!(ScoreCache::new(ENTRY_BYTES - 1, metrics.clone()).is_none());
        assert!(ScoreCache::new(0, metrics).is_none());
    }

    #[test]
    fn keys_differ_with_any_id_and_with_order() {
        assert_eq!(PromptKey::of(&[1, 2, 3]), PromptKey::of(&[1, 2, 3]));
        assert_ne!(PromptKey::of(&[1, 2, 3]), PromptKey::of(&[1, 2, 4]));
        assert_ne!(PromptKey::of(&[1, 2, 3]), PromptKey::of(&[3, 2, 1]));
        assert_ne!(PromptKey::of(&[1, 2]), PromptKey::of(&[1, 2, 0]));
    }

    #[test]
    fn stays_within_budget_and_evicts_the_least_recently_used() {
        let (cache, metrics) = cache(3);
        let keys: Vec<PromptKey> = (0..5).map(|i| PromptKey::of(&[i])).collect();
        for (i, key) in keys.iter().take(3).enumerate() {
            cache.insert(*key, score(i as f32));
        }
        // Touch the oldest, so that the second goes first.
        let (found, _) = cache.look_up(&keys[..1]);
        assert!(matches!(found[0], Found::Score(s) if s == score(0.0)));
        cache.insert(keys[3], score(3.0));
        cache.insert(keys[4], score(4.0));
        assert_eq!(metrics.score_cache_evictions.get(), 2);
        assert_eq!(metrics.score_cache_bytes.get(), (3 * ENTRY_BYTES) as i64);
        let (found, claim) = cache.look_up(&keys);
        let held: Vec<bool> = found.iter().map(|f| matches!(f, Found::Score(_))).collect();
        assert_eq!(held, [true, false, false, true, true]);
        drop(claim);
    }

    #[test]
    fn a_claimed_prompt_is_pending_for_others_then_shared() {
        let (cache, metrics) = cache(10);
        let key = PromptKey::of(&[7, 8]);
        let (first, claim) = cache.look_up(&[key, key]);
        assert!(matches!(first[0], Found::Claimed));
        assert!(matches!(first[1], Found::Repeat(0)));
        let (second, other_claim) = cache.look_up(&[key]);
        let Found::Pending(pending) = second.into_iter().next().unwrap() else {
            panic!("the prompt is being computed");
        };
        drop(other_claim);
        claim.fulfil([(key, score(1.5))]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(wait_for(pending)), Some(score(1.5)));
        assert_eq!(metrics.score_cache_misses.get(), 1);
        assert_eq!(metrics.score_cache_hits.get(), 1);
        let (third, _) = cache.look_up(&[key]);
        assert!(matches!(third[0], Found::Score(s) if s == score(1.5)));
    }

    #[test]
    fn a_dropped_claim_releases_those_waiting() {
        let (cache, _) = cache(10);
        let key = PromptKey::of(&[1]);
        let (_, claim) = cache.look_up(&[key]);
        let (found, _) = cache.look_up(&[key]);
        let Found::Pending(pending) = found.into_iter().next().unwrap() else {
            panic!("the prompt is being computed");
        };
        drop(claim);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(wait_for(pending)), None);
        let (again, _) = cache.look_up(&[key]);
        assert!(
            matches!(again[0], Found::Claimed),
            "free to be claimed anew"
        );
    }
}
