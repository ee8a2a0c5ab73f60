//! Which sequences run together: in order, within a budget of tokens and of sequences.
//! The forward packs a batch without padding, so its cost is the sum of its lengths.

/// Limits on one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBudget {
    /// Tokens of all the batch's sequences together.
    pub max_tokens: usize,
    pub max_sequences: usize,
}

impl Default for BatchBudget {
    fn default() -> Self {
        BatchBudget {
            max_tokens: 16_384,
            max_sequences: 64,
        }
    }
}

impl BatchBudget {
    /// Whether `count` sequences of `tokens` tokens together fit.
    pub fn fits(&self, tokens: usize, count: usize) -> bool {
        count <= self.max_sequences.max(1) && tokens <= self.max_tokens
    }
}

/// Groups sequence indices into batches, in their order: neighbours (the documents of one
/// query) stay together and share their prefix in the forward. A sequence longer than the
/// token budget runs alone rather than never.
pub fn plan_batches(lengths: &[usize], budget: BatchBudget) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut tokens = 0;
    for (index, &len) in lengths.iter().enumerate() {
        match batches.last_mut() {
            Some(batch) if budget.fits(tokens + len, batch.len() + 1) => {
                batch.push(index);
                tokens += len;
            }
            _ => {
                batches.push(vec![index]);
                tokens = len;
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_order_respect_the_budget_and_cover_every_index_once() {
        let lengths = [5, 100, 7, 50, 50, 3, 400, 8, 1, 1, 1];
        let budget = BatchBudget {
            max_tokens: 120,
            max_sequences: 3,
        };
        let batches = plan_batches(&lengths, budget);
        let seen: Vec<usize> = batches.iter().flatten().copied().collect();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for batch in &batches {
            let tokens = batch.iter().map(|&i| lengths[i]).sum();
            assert!(
                batch.len() == 1 || budget.fits(tokens, batch.len()),
                "{batch:?}"
            );
        }
        // The pair cap closes the first two and the fourth, the token cap the third; the
        // over-long sequence runs alone.
        assert_eq!(
            batches,
            vec![
                vec![0, 1, 2],
                vec![3, 4, 5],
                vec![6],
                vec![7, 8, 9],
                vec![10]
            ]
        );
    }

    #[test]
    fn empty_input_plans_nothing() {
        assert!(plan_batches(&[], BatchBudget::default()).is_empty());
    }
}
