//! Ketama-style consistent hash ring.

use crate::hash::xxh64;
use crate::HostInfo;

/// Envoy refuses rings above 8M entries; beyond that the table costs more
/// memory than any balancing gain, so larger requests are clamped.
pub(crate) const HARD_MAX_RING: u64 = 1 << 23;

/// Upper bound on ring entries inspected when skipping excluded hosts, so a
/// retry never degrades into a scan of the whole ring.
const MAX_WALK: usize = 64;

/// Points on the ring sorted by hash, stored as parallel arrays so the binary
/// search touches only the hashes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ring {
    hashes: Vec<u64>,
    hosts: Vec<u32>,
}

/// Number of points for weight `w` at resolution 2^`exp` points per weight
/// unit; never 0 so every member stays reachable.
fn points(w: u64, exp: i32) -> u64 {
    let scaled = if exp >= 0 {
        (u128::from(w) << exp).min(u128::from(u64::MAX)) as u64
    } else {
        w >> exp.unsigned_abs().min(63)
    };
    scaled.max(1)
}

fn ring_len(members: &[(u32, u64)], exp: i32) -> u64 {
    members.iter().fold(0u64, |a, &(_, w)| a.saturating_add(points(w, exp)))
}

/// Chooses the ring resolution as a power of two points per weight unit.
///
/// A host's points depend only on its own weight and this resolution, and the
/// resolution only changes when the total weight crosses a power of two. So
/// adding or removing one host normally moves only the keys of that host,
/// which a resolution derived from `min_ring_size / total` exactly (Envoy's
/// approach) would not guarantee.
fn resolution(members: &[(u32, u64)], min_size: u64, max_size: u64) -> i32 {
    let max_size = max_size.clamp(1, HARD_MAX_RING);
    let min_size = u128::from(min_size.clamp(1, max_size));
    let total: u128 = members.iter().map(|&(_, w)| u128::from(w)).sum::<u128>().max(1);
    let mut exp: i32 = 0;
    if total < min_size {
        while (total << exp) < min_size {
            exp += 1;
        }
    } else {
        while exp > -63 && (total >> (1 - exp)) >= min_size {
            exp -= 1;
        }
    }
    let floor = members.len() as u64;
    while exp > -63 && ring_len(members, exp) > max_size && ring_len(members, exp) > floor {
        exp -= 1;
    }
    exp
}

impl Ring {
    /// `members` are (host index, weight ≥ 1). The ring holds between
    /// `min_size` and `max_size` points (both clamped to 8M), except that every
    /// member gets at least one point even if that exceeds `max_size`.
    pub(crate) fn build(members: &[(u32, u64)], hosts: &[HostInfo], min_size: u64, max_size: u64) -> Ring {
        if members.is_empty() {
            return Ring::default();
        }
        let exp = resolution(members, min_size, max_size);
        let len = ring_len(members, exp);
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        for &(host, w) in members {
            let key = hosts.get(host as usize).map(|h| h.key.as_bytes()).unwrap_or_default();
            // The point index is the seed, so a host's points are a fixed
            // function of its key and count: stable across rebuilds.
            for i in 0..points(w, exp) {
                entries.push((xxh64(key, i), host));
            }
        }
        // A radix/bucket sort was measured: no faster than pdqsort for 4M
        // points, because scattering into buckets is memory-bound.
        entries.sort_unstable();
        let (hashes, hosts) = entries.into_iter().unzip();
        Ring { hashes, hosts }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The first point at or after `hash` (wrapping), walking forward past
    /// excluded hosts for a bounded number of steps. Walking on, rather than
    /// re-hashing, sends a retry where the key would go if the excluded host
    /// were removed from the ring.
    pub(crate) fn pick(&self, hash: u64, exclude: &[usize]) -> Option<u32> {
        let len = self.hashes.len();
        if len == 0 {
            return None;
        }
        let start = self.hashes.partition_point(|&p| p < hash) % len;
        let first = self.hosts[start];
        if !exclude.contains(&(first as usize)) {
            return Some(first);
        }
        (1..len.min(MAX_WALK))
            .map(|step| self.hosts[(start + step) % len])
            .find(|&h| !exclude.contains(&(h as usize)))
            .or(Some(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<HostInfo> {
        (0..n)
            .map(|i| HostInfo { weight: 1, priority: 0, locality: 0, healthy: true, key: format!("10.0.0.{i}:80") })
            .collect()
    }

    #[test]
    fn resolution_is_stable_when_one_host_leaves() {
        let ten: Vec<(u32, u64)> = (0..10).map(|i| (i, 1)).collect();
        let nine = &ten[..9];
        assert_eq!(resolution(&ten, 1024, 1 << 23), resolution(nine, 1024, 1 << 23));
        let len = ring_len(&ten, resolution(&ten, 1024, 1 << 23));
        assert!((1024..2048).contains(&len), "{len}");
    }

    #[test]
    fn huge_requests_clamp_to_hard_max() {
        let m: Vec<(u32, u64)> = vec![(0, u64::from(u32::MAX)), (1, 1)];
        let exp = resolution(&m, u64::MAX, u64::MAX);
        let len = ring_len(&m, exp);
        assert!((HARD_MAX_RING / 2..=HARD_MAX_RING).contains(&len), "{len}");
    }

    #[test]
    fn sizes_are_clamped() {
        let hs = hosts(3);
        let m: Vec<(u32, u64)> = vec![(0, u64::from(u32::MAX)), (1, 1), (2, 7)];
        let r = Ring::build(&m, &hs, 0, 16);
        assert!(r.len() <= 16 && r.len() >= 3, "{}", r.len());
        // min > max: max wins.
        let r = Ring::build(&m, &hs, 4096, 64);
        assert!(r.len() <= 64);
        // More hosts than max_size: one point each.
        let many: Vec<(u32, u64)> = (0..3).map(|i| (i, 5)).collect();
        assert_eq!(Ring::build(&many, &hs, 1, 2).len(), 3);
    }
}
