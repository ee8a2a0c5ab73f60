//! How a batch of token sequences is laid out for one forward pass: every real token once,
//! with no padding, and a prefix that several sequences share (the query part of the prompt,
//! the same for every document of a request) computed once.
//!
//! Causal attention makes this exact: a prefix's keys and values do not depend on what
//! follows it, so a sequence can continue from a shared prefix at the positions after it.

use std::ops::Range;

/// A shared prefix is worth its bookkeeping from this many tokens on.
const MIN_SHARED_PREFIX: usize = 8;

pub use super::backend::Span;

/// The packed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    pub ids: Vec<u32>,
    /// Each packed token's position in its own sequence.
    pub positions: Vec<u32>,
    /// In packed order, covering every packed token once.
    pub spans: Vec<Span>,
    /// Packed index of each sequence's last token, in input order.
    pub last_tokens: Vec<u32>,
}

impl Packing {
    /// Packs `sequences` (each non-empty); with `prefix_sharing`, sequences that start alike
    /// share their common prefix.
    pub fn new(sequences: &[&[u32]], prefix_sharing: bool) -> Self {
        let groups = if prefix_sharing {
            prefix_groups(sequences)
        } else {
            (0..sequences.len())
                .map(|i| Group {
                    members: vec![i],
                    prefix: 0,
                })
                .collect()
        };
        let mut packing = Packing {
            ids: Vec::with_capacity(sequences.iter().map(|s| s.len()).sum()),
            positions: Vec::new(),
            spans: Vec::new(),
            last_tokens: vec![0; sequences.len()],
        };
        for group in groups {
            let first = sequences[group.members[0]];
            // The prefix attends only to itself, ahead of the members that continue it.
            let context = (group.prefix > 0).then(|| {
                let prefix = packing.push(&first[..group.prefix], 0);
                packing.spans.push(Span {
                    tokens: prefix.clone(),
                    context: None,
                });
                prefix
            });
            for member in group.members {
                let own = packing.push(&sequences[member][group.prefix..], group.prefix);
                packing.last_tokens[member] = (own.end - 1) as u32;
                packing.spans.push(Span {
                    tokens: own,
                    context: context.clone(),
                });
            }
        }
        packing
    }

    /// Appends `ids` at positions from `first_position`; returns their packed range.
    fn push(&mut self, ids: &[u32], first_position: usize) -> Range<usize> {
        let start = self.ids.len();
        self.ids.extend_from_slice(ids);
        self.positions
            .extend((first_position..first_position + ids.len()).map(|p| p as u32));
        start..self.ids.len()
    }
}

struct Group {
    members: Vec<usize>,
    /// Tokens the members share; every member keeps at least one token of its own.
    prefix: usize,
}

/// Groups sequences by common prefix. In sorted order, sequences with long common prefixes
/// are neighbours; a neighbour joins the current group when that saves more tokens than it
/// loses by shortening the group's shared prefix, so that a request's documents group by
/// their query and not merely by the template's opening tokens that all prompts share.
fn prefix_groups(sequences: &[&[u32]]) -> Vec<Group> {
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by(|&a, &b| sequences[a].cmp(sequences[b]).then(a.cmp(&b)));
    let mut groups: Vec<Group> = Vec::new();
    for index in order {
        let sequence = sequences[index];
        if let Some(group) = groups.last_mut() {
            let last = sequences[*group.members.last().expect("groups are never empty")];
            let common = common_prefix(last, sequence)
                .min(last.len() - 1)
                .min(sequence.len() - 1);
            // A lone member's prefix is only what it could share: all of it but its last token.
            let current = if group.members.len() == 1 {
                common
            } else {
                group.prefix
            };
            let shared = current.min(common);
            let members = group.members.len();
            // Joining shares `shared` tokens with one more sequence; shrinking the prefix
            // costs `current - shared` tokens for each member but one.
            if shared >= MIN_SHARED_PREFIX && shared * members > current.saturating_mul(members - 1)
            {
                group.members.push(index);
                group.prefix = shared;
                continue;
            }
        }
        groups.push(Group {
            members: vec![index],
            prefix: 0,
        });
    }
    groups
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rebuilds each sequence from the packing: its context's ids, then its own.
    fn unpack(packing: &Packing, count: usize) -> Vec<Vec<u32>> {
        (0..count)
            .map(|i| {
                let last = packing.last_tokens[i] as usize;
                let span = packing
                    .spans
                    .iter()
                    .find(|s| s.tokens.contains(&last))
                    .unwrap();
                let mut ids = Vec::new();
                if let Some(context) = &span.context {
                    ids.extend_from_slice(&packing.ids[context.clone()]);
                }
                ids.extend_from_slice(&packing.ids[span.tokens.start..=last]);
                ids
            })
            .collect()
    }

    fn prompt(query: u32, query_len: usize, document: &[u32]) -> Vec<u32> {
        let mut ids = vec![1, 2];
        ids.extend(std::iter::repeat_n(query, query_len));
        ids.extend_from_slice(&[3, 4]);
        ids.extend_from_slice(document);
        ids
    }

    fn check_layout(packing: &Packing) {
        let mut next = 0;
        for span in &packing.spans {
            assert_eq!(span.tokens.start, next, "spans cover the packing in order");
            next = span.tokens.end;
            if let Some(context) = &span.context {
                assert!(context.end <= span.tokens.start, "a context comes first");
                for (offset, token) in span.tokens.clone().enumerate() {
                    assert_eq!(packing.positions[token] as usize, context.len() + offset);
                }
            }
        }
        assert_eq!(next, packing.ids.len());
    }

    #[test]
    fn without_sharing_every_sequence_is_its_own_span() {
        let sequences: Vec<Vec<u32>> = vec![prompt(7, 20, &[9, 9]), prompt(7, 20, &[8])];
        let refs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let packing = Packing::new(&refs, false);
        assert_eq!(packing.spans.len(), 2);
        assert!(packing.spans.iter().all(|s| s.context.is_none()));
        assert_eq!(unpack(&packing, 2), sequences);
        check_layout(&packing);
    }

    #[test]
    fn documents_of_one_query_share_it() {
        let sequences: Vec<Vec<u32>> = vec![
            prompt(7, 20, &[9, 9, 9]),
            prompt(5, 30, &[9]),
            prompt(7, 20, &[8]),
            prompt(5, 30, &[6, 6]),
            prompt(7, 20, &[9, 9, 8]),
        ];
        let refs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let packing = Packing::new(&refs, true);
        check_layout(&packing);
        assert_eq!(unpack(&packing, sequences.len()), sequences);
        let prefixes: Vec<usize> = packing
            .spans
            .iter()
            .filter(|s| s.context.is_none())
            .map(|s| s.tokens.len())
            .collect();
        // Two queries, two prefixes: template head, query, template middle. The documents
        // starting `9, 9` of query 7 do not split their group for a longer shared part.
        assert_eq!(prefixes, vec![2 + 30 + 2, 2 + 20 + 2]);
        let packed: usize = sequences.iter().map(Vec::len).sum::<usize>() - 34 - 2 * 24;
        assert_eq!(packing.ids.len(), packed);
    }

    #[test]
    fn identical_and_short_sequences_keep_a_token_of_their_own() {
        let same = prompt(7, 20, &[9]);
        let short: Vec<u32> = vec![1, 2, 7];
        let refs: Vec<&[u32]> = vec![&same, &same, &short, &same];
        let packing = Packing::new(&refs, true);
        check_layout(&packing);
        assert_eq!(
            unpack(&packing, 4),
            vec![same.clone(), same.clone(), short, same]
        );
        for span in packing.spans.iter().filter(|s| s.context.is_some()) {
            assert_eq!(span.tokens.len(), 1);
        }
    }

    #[test]
    fn short_common_prefixes_are_not_shared() {
        let a = prompt(7, 3, &[9, 9]);
        let b = prompt(7, 3, &[8, 8]);
        let packing = Packing::new(&[&a, &b], true);
        assert!(packing.spans.iter().all(|s| s.context.is_none()));
        assert_eq!(packing.ids.len(), a.len() + b.len());
    }
}
