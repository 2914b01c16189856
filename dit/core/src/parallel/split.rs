//! How tokens and heads are dealt to the ranks of sequence parallelism.

use std::ops::Range;

/// `tokens` dealt to `ranks` in consecutive runs of [`TokenShards::per_rank`], the last runs
/// padded: rank `r` holds tokens `r * per_rank ..` of the padded sequence, whose tokens past
/// `tokens` are padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenShards {
    /// Tokens in the sequence.
    pub tokens: usize,
    /// Ranks sharing it (at least 1).
    pub ranks: usize,
}

impl TokenShards {
    /// `tokens` over `ranks` (`ranks` of 0 counts as 1).
    pub fn new(tokens: usize, ranks: usize) -> Self {
        Self {
            tokens,
            ranks: ranks.max(1),
        }
    }

    /// Tokens each rank holds, padding included.
    pub fn per_rank(&self) -> usize {
        self.tokens.div_ceil(self.ranks).max(1)
    }

    /// Length of the padded sequence, `per_rank * ranks`.
    pub fn padded(&self) -> usize {
        self.per_rank() * self.ranks
    }

    /// The real tokens rank `rank` holds (possibly none), in natural order.
    pub fn range(&self, rank: usize) -> Range<usize> {
        let per = self.per_rank();
        let start = (rank * per).min(self.tokens);
        let end = ((rank + 1) * per).min(self.tokens);
        start..end
    }

    /// Padding tokens after rank `rank`'s real ones.
    pub fn padding(&self, rank: usize) -> usize {
        self.per_rank() - self.range(rank).len()
    }
}

/// Heads each of `ranks` ranks attends when `heads` are split evenly; the error names the rank
/// counts that do split them.
pub fn heads_per_rank(heads: usize, ranks: usize) -> Result<usize, String> {
    if ranks > 0 && heads.is_multiple_of(ranks) {
        return Ok(heads / ranks);
    }
    let working: Vec<String> = (1..=heads)
        .filter(|n| heads.is_multiple_of(*n))
        .map(|n| n.to_string())
        .collect();
    Err(format!(
        "the model's {heads} attention heads do not split over {ranks} GPUs of sequence \
         parallelism: use a sequence-parallel degree of {}",
        working.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_token_once_and_pad_the_tail() {
        for tokens in [1, 5, 12, 13, 32760, 32761] {
            for ranks in 1..=5 {
                let s = TokenShards::new(tokens, ranks);
                let mut next = 0;
                for r in 0..ranks {
                    let range = s.range(r);
                    assert_eq!(range.start, next);
                    assert_eq!(range.len() + s.padding(r), s.per_rank());
                    next = range.end;
                }
                assert_eq!(next, tokens);
                assert!(s.padded() >= tokens && s.padded() - tokens < ranks);
            }
        }
        let s = TokenShards::new(13, 4);
        assert_eq!((s.per_rank(), s.padded()), (4, 16));
        assert_eq!((s.range(3), s.padding(3)), (12..13, 3));
    }

    #[test]
    fn heads_split_or_name_the_counts_that_work() {
        assert_eq!(heads_per_rank(12, 4), Ok(3));
        assert_eq!(heads_per_rank(40, 8), Ok(5));
        let e = heads_per_rank(12, 5).unwrap_err();
        assert!(e.contains("1, 2, 3, 4, 6, 12"), "{e}");
        assert!(heads_per_rank(40, 3)
            .unwrap_err()
            .contains("1, 2, 4, 5, 8, 10, 20, 40"));
    }
}
