//! Exponential backoff with jitter, bounded: every retry loop of the agent (registration,
//! child restarts) waits through one of these.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: SmallRng,
}

impl Backoff {
    /// Starts at `initial`, doubles per failure up to `max`; each wait is the nominal value
    /// times a random factor in [0.8, 1.2), never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff::with_rng(initial, max, SmallRng::from_entropy())
    }

    pub fn with_rng(initial: Duration, max: Duration, rng: SmallRng) -> Backoff {
        let initial = initial.min(max);
        Backoff { initial, max, next: initial, rng }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor: f64 = self.rng.gen_range(0.8..1.2);
        nominal.mul_f64(factor).min(self.max)
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_bound_and_reset() {
        let mut b = Backoff::with_rng(Duration::from_millis(100), Duration::from_secs(1), SmallRng::seed_from_u64(7));
        let nominal = [100u64, 200, 400, 800, 1000, 1000, 1000];
        for n in nominal {
            let d = b.next_delay().as_millis() as u64;
            let (lo, hi) = (n * 8 / 10, (n * 12 / 10).min(1000));
            assert!((lo..=hi).contains(&d), "{d}ms not within {lo}..={hi}ms");
        }
        b.reset();
        let d = b.next_delay().as_millis() as u64;
        assert!((80..=120).contains(&d), "{d}ms after reset");
    }

    #[test]
    fn jitter_spreads_equal_backoffs() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let mut b =
                Backoff::with_rng(Duration::from_secs(1), Duration::from_secs(10), SmallRng::seed_from_u64(seed));
            seen.insert(b.next_delay().as_millis());
        }
        assert!(seen.len() > 10, "agents restarted together must not retry in lockstep: {seen:?}");
    }

    #[test]
    fn an_initial_above_the_bound_is_clamped() {
        let mut b = Backoff::with_rng(Duration::from_secs(5), Duration::from_secs(1), SmallRng::seed_from_u64(1));
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
