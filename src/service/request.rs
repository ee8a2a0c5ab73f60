//! What a request asks the service for, what it gets back, and ranking.

use std::ops::Range;
use std::time::{Duration, Instant};

use super::TruncationDirection;
use crate::model::Score;
use crate::settings::LongDocuments;

/// The pairs of one request.
pub enum Pairs {
    /// One query against many documents.
    OneQuery {
        query: String,
        documents: Vec<String>,
    },
    Listed(Vec<(String, String)>),
}

impl Pairs {
    pub fn len(&self) -> usize {
        match self {
            Pairs::OneQuery { documents, .. } => documents.len(),
            Pairs::Listed(pairs) => pairs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> (&str, &str) {
        match self {
            Pairs::OneQuery { query, documents } => (query, &documents[i]),
            Pairs::Listed(pairs) => (&pairs[i].0, &pairs[i].1),
        }
    }

    /// Bytes of text in all pairs.
    pub fn bytes(&self) -> usize {
        (0..self.len())
            .map(|i| {
                let (q, d) = self.get(i);
                q.len() + d.len()
            })
            .sum()
    }
}

/// What a handler asks for.
pub struct ScoreJob {
    /// A served name; the first model when `None`.
    pub model: Option<String>,
    pub pairs: Pairs,
    /// Replaces the model's default instruction.
    pub instruction: Option<String>,
    /// Cut each document to this many tokens; the server's `max_tokens_per_doc` when `None`.
    pub max_tokens_per_doc: Option<usize>,
    /// Which end of a document over its limit is kept.
    pub truncation_direction: TruncationDirection,
    /// Refuse (413) a document the model's length limit would cut.
    pub refuse_truncation: bool,
    /// Cut long documents or score them in windows; the server's setting when `None`.
    pub long_documents: Option<LongDocuments>,
}

/// A scored request: its pairs, their scores in order, and where the time went.
pub struct Scoring {
    /// The name to answer with: the one requested, or the model's first.
    pub model: String,
    pub pairs: Pairs,
    pub scores: Vec<Score>,
    /// Under `chunk`, the window that gave each document its score.
    pub best_windows: Option<Vec<BestWindow>>,
    /// Prompt tokens scored, every window counted.
    pub total_tokens: usize,
    pub queue_time: Duration,
    pub inference_time: Duration,
    pub started: Instant,
}

/// The window of a chunked document that scored best.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestWindow {
    pub index: usize,
    /// How many windows the document made.
    pub windows: usize,
    /// Its place in the document, in characters.
    pub chars: Range<usize>,
}

/// Each document's best window score (the first on ties), from the scores of all windows in
/// order; `spans` holds each document's windows.
pub(super) fn best_of_windows(
    scores: Vec<Score>,
    spans: &[Vec<Range<usize>>],
) -> (Vec<Score>, Vec<BestWindow>) {
    let mut scores = scores.into_iter();
    spans
        .iter()
        .map(|windows| {
            let (index, score) = scores
                .by_ref()
                .take(windows.len())
                .enumerate()
                .reduce(|best, next| {
                    if next.1.margin > best.1.margin {
                        next
                    } else {
                        best
                    }
                })
                .expect("every document has a window");
            let best = BestWindow {
                index,
                windows: windows.len(),
                chars: windows[index].clone(),
            };
            (score, best)
        })
        .unzip()
}

/// A document's place in a ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Position of the document in the request.
    pub index: usize,
    pub score: Score,
}

impl Scoring {
    /// Pairs by descending score (ties keep input order), cut to `top_n` when given.
    pub fn ranked(&self, top_n: Option<usize>) -> Vec<Ranked> {
        rank_scores(&self.scores, top_n)
    }
}

/// Indices sorted by descending score (ties keep input order), cut to `top_n` when given.
pub fn rank_scores(scores: &[Score], top_n: Option<usize>) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = scores
        .iter()
        .enumerate()
        .map(|(index, &score)| Ranked { index, score })
        .collect();
    ranked.sort_by(|a, b| b.score.raw.total_cmp(&a.score.raw));
    if let Some(n) = top_n {
        ranked.truncate(n);
    }
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Calibration;

    #[test]
    fn ranking_is_descending_and_stable() {
        let zerank = Calibration {
            raw_divisor: 5.0,
            temperature: 5.0,
        };
        let scores: Vec<Score> = [0.1, 2.0, 0.1, -3.0]
            .into_iter()
            .map(|m| Score::new(m, zerank))
            .collect();
        let order: Vec<usize> = rank_scores(&scores, None).iter().map(|r| r.index).collect();
        assert_eq!(order, vec![1, 0, 2, 3]);
        assert_eq!(rank_scores(&scores, Some(2)).len(), 2);
        assert_eq!(rank_scores(&scores, Some(10)).len(), 4);
    }
}
