//! Which sequences run together: length-sorted, so that padding stays small, and within a
//! budget of padded tokens (longest × count) and of sequences.

/// Limits on one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBudget {
    /// Padded tokens: the longest sequence's length times the number of sequences.
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
    /// Whether `count` sequences whose longest has `longest` tokens fit.
    pub fn fits(&self, longest: usize, count: usize) -> bool {
        count <= self.max_sequences.max(1) && longest * count <= self.max_tokens
    }
}

/// Groups sequence indices into batches, longest first. A sequence longer than the token
/// budget runs alone rather than never.
pub fn plan_batches(lengths: &[usize], budget: BatchBudget) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for index in order {
        match batches.last_mut() {
            // Sorted descending, so a batch's longest is its first.
            Some(batch) if budget.fits(lengths[batch[0]], batch.len() + 1) => batch.push(index),
            _ => batches.push(vec![index]),
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_budget_and_cover_every_index_once() {
        let lengths = [5, 100, 7, 50, 50, 3, 400, 8];
        let budget = BatchBudget {
            max_tokens: 120,
            max_sequences: 3,
        };
        let batches = plan_batches(&lengths, budget);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for batch in &batches {
            let longest = batch.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(
                batch.len() == 1 || budget.fits(longest, batch.len()),
                "{batch:?}"
            );
        }
        // The over-long sequence runs alone, first.
        assert_eq!(batches[0], vec![6]);
        assert_eq!(batches[1], vec![1]);
        assert_eq!(batches[2], vec![3, 4]);
    }

    #[test]
    fn empty_input_plans_nothing() {
        assert!(plan_batches(&[], BatchBudget::default()).is_empty());
    }
}
