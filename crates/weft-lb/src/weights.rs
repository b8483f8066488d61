//! Weight arithmetic shared by the pickers: cumulative sampling tables and
//! smooth interleaving.

use rand::{Rng, RngCore};

/// Bit length of `x` (0 for 0).
pub(crate) fn bit_len(x: u128) -> u32 {
    128 - x.leading_zeros()
}

/// Shrinks `weights` so that their sum fits comfortably in a `u64`.
///
/// Shifting (rather than dividing by the sum) keeps the ratio of large weights
/// intact; non-zero weights never become zero so no host turns unreachable.
pub(crate) fn fit_u64(weights: &[u128]) -> Vec<u64> {
    let total = weights.iter().fold(0u128, |a, &w| a.saturating_add(w));
    // 62 bits leave room for the `max(1, ..)` bumps of up to 2^62 hosts.
    let shift = bit_len(total).saturating_sub(62);
    weights.iter().map(|&w| if w == 0 { 0 } else { ((w >> shift) as u64).max(1) }).collect()
}

/// Weighted choice over `len` items, O(1) when all weights are equal and
/// O(log n) otherwise.
#[derive(Debug, Clone)]
pub(crate) enum Distribution {
    Uniform(usize),
    /// Running sums; an item with weight 0 has the same sum as its predecessor
    /// and so can never be selected.
    Cumulative(Vec<u64>),
}

impl Distribution {
    pub(crate) fn new(weights: &[u128]) -> Distribution {
        let fitted = fit_u64(weights);
        if let Some(&first) = fitted.first() {
            if first > 0 && fitted.iter().all(|&w| w == first) {
                return Distribution::Uniform(fitted.len());
            }
        }
        let mut sum = 0u64;
        Distribution::Cumulative(
            fitted
                .iter()
                .map(|&w| {
                    sum = sum.saturating_add(w);
                    sum
                })
                .collect(),
        )
    }

    /// Index of the chosen item, None if every weight is zero.
    pub(crate) fn sample(&self, rng: &mut dyn RngCore) -> Option<usize> {
        match self {
            Distribution::Uniform(0) => None,
            Distribution::Uniform(n) => Some(rng.gen_range(0..*n)),
            Distribution::Cumulative(c) => {
                let total = *c.last()?;
                if total == 0 {
                    return None;
                }
                let r = rng.gen_range(0..total);
                Some(c.partition_point(|&s| s <= r))
            }
        }
    }
}

/// Builds a smoothly interleaved sequence in which item `i` occurs exactly
/// `counts[i]` times.
///
/// Each occurrence k of item i is given the ideal position (k + ½)·L / cᵢ
/// (earliest-deadline-first with a half-slot offset) and the sequence is
/// ordered by that position. This is as smooth as nginx's smooth weighted
/// round robin (each item stays within about one slot of its ideal spacing)
/// but costs O(L + n) via a counting sort instead of O(L·n).
pub(crate) fn interleave(counts: &[u64]) -> Vec<u32> {
    let len: u64 = counts.iter().sum();
    let Ok(len_usize) = usize::try_from(len) else {
        return Vec::new();
    };
    let slot = |c: u64, k: u64| -> usize {
        // (2k+1)·L / (2c) < L because k < c, so the slot is always in range.
        ((u128::from(2 * k + 1) * u128::from(len)) / (2 * u128::from(c))) as usize
    };
    let mut starts = vec![0usize; len_usize + 1];
    for &c in counts {
        for k in 0..c {
            starts[slot(c, k) + 1] += 1;
        }
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut out = vec![0u32; len_usize];
    for (item, &c) in counts.iter().enumerate() {
        for k in 0..c {
            let s = slot(c, k);
            out[starts[s]] = item as u32;
            starts[s] += 1;
        }
    }
    out
}

/// Greatest common divisor, used to shorten round-robin cycles.
pub(crate) fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn interleave_counts_and_smoothness() {
        let counts = [1u64, 3, 5, 7];
        let seq = interleave(&counts);
        assert_eq!(seq.len(), 16);
        for (i, &c) in counts.iter().enumerate() {
            assert_eq!(seq.iter().filter(|&&x| x == i as u32).count() as u64, c);
        }
        // Every window of length L/c_i holds item i at most twice (smooth),
        // never a burst of the heavy item longer than necessary.
        for w in seq.windows(3) {
            assert!(!(w[0] == 3 && w[1] == 3 && w[2] == 3), "{seq:?}");
        }
        assert_eq!(interleave(&[1, 1, 1]), vec![0, 1, 2]);
        assert!(interleave(&[]).is_empty());
    }

    #[test]
    fn distribution_skips_zero_weights() {
        let d = Distribution::new(&[0, 5, 0, 5, 0]);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..1000 {
            let i = d.sample(&mut rng).unwrap();
            assert!(i == 1 || i == 3);
        }
        assert!(Distribution::new(&[0, 0]).sample(&mut rng).is_none());
        assert!(Distribution::new(&[]).sample(&mut rng).is_none());
    }

    #[test]
    fn fit_keeps_huge_weights_nonzero() {
        let w = fit_u64(&[u128::MAX, 1, 0]);
        assert!(w[0] > 0 && w[1] == 1 && w[2] == 0);
        assert!(w[0].checked_add(w[1]).is_some());
    }
}
