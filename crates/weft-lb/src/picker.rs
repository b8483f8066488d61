//! Per-host-set pickers, one per policy.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::RngCore;

use crate::maglev::Maglev;
use crate::ring::Ring;
use crate::weights::{gcd, interleave, Distribution};
use crate::{HostInfo, Policy};

/// Longest round-robin cycle; longer cycles only cost memory because the
/// scaled-down weights are already within 1/65536 of the requested ratio.
pub(crate) const MAX_RR_CYCLE: u64 = 1 << 16;

/// More choices than this only burns CPU: with 32 samples the chance of
/// missing the least-loaded of a few hosts is already negligible.
pub(crate) const MAX_CHOICES: u32 = 32;

/// What a single pick needs to know about the request.
pub(crate) struct Request<'a> {
    pub hash: u64,
    pub attempt: u32,
    pub active: &'a dyn Fn(usize) -> u32,
    pub exclude: &'a [usize],
}

/// Selects one host out of a fixed set. Host indices are stored as `u32`
/// (indices into the caller's host slice) to halve table memory.
#[derive(Debug)]
pub(crate) enum Picker {
    Empty,
    RoundRobin {
        sequence: Vec<u32>,
        // Shared by all threads: contention costs one atomic add per pick and
        // keeps the balancer immutable apart from this counter.
        cursor: AtomicUsize,
    },
    Random {
        hosts: Vec<u32>,
        dist: Distribution,
    },
    LeastRequest {
        hosts: Vec<u32>,
        dist: Distribution,
        choices: u32,
    },
    Ring(Ring),
    Maglev(Maglev),
}

fn host_ids(members: &[(u32, u64)]) -> Vec<u32> {
    members.iter().map(|&(h, _)| h).collect()
}

fn distribution(members: &[(u32, u64)]) -> Distribution {
    let w: Vec<u128> = members.iter().map(|&(_, w)| u128::from(w)).collect();
    Distribution::new(&w)
}

/// Round-robin cycle counts: reduced by the common divisor, then scaled down
/// proportionally if the cycle would exceed `MAX_RR_CYCLE` (never below 1).
fn rr_counts(members: &[(u32, u64)]) -> Vec<u64> {
    let g = members.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
    let reduced: Vec<u64> = members.iter().map(|&(_, w)| w / g).collect();
    let total: u128 = reduced.iter().map(|&w| u128::from(w)).sum();
    if total <= u128::from(MAX_RR_CYCLE) {
        return reduced;
    }
    reduced.iter().map(|&w| ((u128::from(w) * u128::from(MAX_RR_CYCLE) / total) as u64).max(1)).collect()
}

impl Picker {
    /// `members` are (host index, weight ≥ 1), in a deterministic order.
    pub(crate) fn build(policy: &Policy, members: &[(u32, u64)], hosts: &[HostInfo]) -> Picker {
        if members.is_empty() {
            return Picker::Empty;
        }
        match *policy {
            Policy::RoundRobin => {
                let seq = interleave(&rr_counts(members));
                Picker::RoundRobin {
                    sequence: seq.into_iter().map(|i| members[i as usize].0).collect(),
                    cursor: AtomicUsize::new(0),
                }
            }
            Policy::Random => Picker::Random { hosts: host_ids(members), dist: distribution(members) },
            Policy::LeastRequest { choice_count } => Picker::LeastRequest {
                hosts: host_ids(members),
                dist: distribution(members),
                // 0 reads as "unset", hence Envoy's default of 2.
                choices: if choice_count == 0 { 2 } else { choice_count.min(MAX_CHOICES) },
            },
            Policy::RingHash { min_ring_size, max_ring_size } => {
                Picker::Ring(Ring::build(members, hosts, min_ring_size, max_ring_size))
            }
            Policy::Maglev { table_size } => Picker::Maglev(Maglev::build(members, hosts, table_size)),
        }
    }

    pub(crate) fn pick(&self, req: &Request<'_>, rng: &mut dyn RngCore) -> Option<u32> {
        match self {
            Picker::Empty => None,
            Picker::RoundRobin { sequence, cursor } => {
                if sequence.is_empty() {
                    return None;
                }
                // A re-pick after an excluded host just takes the next slot,
                // like Envoy: every slot of the cycle is still consumed by
                // exactly one pick, so the split stays exact.
                // Wrap-around of the counter only causes one uneven step
                // every 2^64 picks.
                let i = cursor.fetch_add(1, Ordering::Relaxed);
                Some(sequence[i % sequence.len()])
            }
            Picker::Random { hosts, dist } => dist.sample(rng).map(|i| hosts[i]),
            Picker::LeastRequest { hosts, dist, choices } => {
                // Candidates are drawn in proportion to weight and the one
                // with the fewest active requests wins, ties going to the
                // earliest draw. Weight therefore counts once: with equal
                // load the split is exactly weight-proportional, with equal
                // weights this is plain power-of-N-choices. Excluded hosts
                // lose against any non-excluded candidate.
                let mut best: Option<(bool, u32, u32)> = None;
                for _ in 0..*choices {
                    let host = hosts[dist.sample(rng)?];
                    let key = (req.exclude.contains(&(host as usize)), (req.active)(host as usize));
                    if best.map_or(true, |(e, a, _)| key < (e, a)) {
                        best = Some((key.0, key.1, host));
                    }
                }
                best.map(|(_, _, h)| h)
            }
            Picker::Ring(ring) => ring.pick(req.hash, req.exclude),
            Picker::Maglev(table) => table.pick(req.hash, req.attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rr_counts_scale_down_but_not_to_zero() {
        assert_eq!(rr_counts(&[(0, 100), (1, 300)]), vec![1, 3]);
        let c = rr_counts(&[(0, u64::from(u32::MAX)), (1, 1), (2, u64::from(u32::MAX))]);
        assert_eq!(c[1], 1);
        assert!(c.iter().sum::<u64>() <= MAX_RR_CYCLE + 1);
        assert_eq!(c[0], c[2]);
    }
}
