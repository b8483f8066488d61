//! Weighted Maglev lookup table (Eisenbud et al., NSDI 2016).

use crate::hash::{mix64, xxh64};
use crate::weights::interleave;
use crate::HostInfo;

/// Envoy's upper limit for the table size; a larger table only costs memory.
pub(crate) const HARD_MAX_TABLE: u64 = 5_000_011;

const EMPTY: u32 = u32::MAX;
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66;
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b;

#[derive(Debug, Clone, Default)]
pub(crate) struct Maglev {
    table: Vec<u32>,
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5u64;
    while d.saturating_mul(d) <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// Smallest prime ≥ `n`. The permutation needs a prime size so that every
/// skip value is coprime with it and visits every slot.
pub(crate) fn next_prime(n: u64) -> u64 {
    let mut p = n.max(2);
    while !is_prime(p) {
        p += 1;
    }
    p
}

/// Size actually used for a requested `table_size` and `members` hosts.
fn table_len(table_size: u64, members: usize) -> u64 {
    next_prime(table_size.min(HARD_MAX_TABLE).max(members as u64).max(2))
}

impl Maglev {
    /// `members` are (host index, weight ≥ 1). The table size is the smallest
    /// prime ≥ max(`table_size`, member count), with `table_size` clamped to
    /// 5000011, so every member owns at least one slot.
    pub(crate) fn build(members: &[(u32, u64)], hosts: &[HostInfo], table_size: u64) -> Maglev {
        if members.is_empty() {
            return Maglev::default();
        }
        let m = table_len(table_size, members.len());
        let total: u128 = members.iter().map(|&(_, w)| u128::from(w)).sum::<u128>().max(1);
        // Rounding up guarantees the claims cover the whole table; the few
        // surplus claims at the end of the sequence are simply never used.
        let claims: Vec<u64> = members
            .iter()
            .map(|&(_, w)| {
                let c = (u128::from(m) * u128::from(w)).div_ceil(total);
                (c as u64).max(1)
            })
            .collect();
        // Claiming in a smooth weighted order generalises Maglev's plain round
        // robin (which it equals for equal weights) to weighted hosts, in
        // O(table) rather than Envoy's O(table × hosts) worst case.
        let order = interleave(&claims);

        let mut next = Vec::with_capacity(members.len());
        let mut skip = Vec::with_capacity(members.len());
        for &(host, _) in members {
            let key = hosts.get(host as usize).map(|h| h.key.as_bytes()).unwrap_or_default();
            next.push(xxh64(key, OFFSET_SEED) % m);
            skip.push(xxh64(key, SKIP_SEED) % (m - 1) + 1);
        }

        let Ok(m_usize) = usize::try_from(m) else {
            return Maglev::default();
        };
        let mut table = vec![EMPTY; m_usize];
        let mut filled = 0usize;
        for &i in &order {
            if filled == m_usize {
                break;
            }
            let i = i as usize;
            // Terminates: the permutation of a prime-sized table visits every
            // slot and at least one is still empty.
            loop {
                let slot = next[i];
                next[i] = (slot + skip[i]) % m;
                let cell = &mut table[slot as usize];
                if *cell == EMPTY {
                    *cell = members[i].0;
                    filled += 1;
                    break;
                }
            }
        }
        Maglev { table }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Slot for `hash`; retry attempts re-hash deterministically so a request
    /// keeps getting the same alternates.
    pub(crate) fn pick(&self, hash: u64, attempt: u32) -> Option<u32> {
        let len = self.table.len() as u64;
        if len == 0 {
            return None;
        }
        let h = if attempt == 0 { hash } else { mix64(hash ^ u64::from(attempt)) };
        let host = self.table[(h % len) as usize];
        (host != EMPTY).then_some(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(4), 5);
        assert_eq!(next_prime(65536), 65537);
        assert_eq!(next_prime(65537), 65537);
        assert!(is_prime(HARD_MAX_TABLE));
        assert_eq!(table_len(u64::MAX, 3), HARD_MAX_TABLE);
        assert_eq!(table_len(0, 0), 2);
        assert_eq!(table_len(1000, 1), 1009);
        assert_eq!(table_len(10, 100), 101);
    }

    #[test]
    fn weighted_slot_counts() {
        let hosts: Vec<HostInfo> = (0..2)
            .map(|i| HostInfo { weight: 1, priority: 0, locality: 0, healthy: true, key: format!("h{i}") })
            .collect();
        let t = Maglev::build(&[(0, 1), (1, 3)], &hosts, 65537);
        let c0 = t.table.iter().filter(|&&h| h == 0).count();
        let c1 = t.table.iter().filter(|&&h| h == 1).count();
        assert_eq!(c0 + c1, 65537);
        assert!(c0.abs_diff(65537 / 4) <= 2, "{c0}");
        // Table smaller than the host count grows to fit every host.
        let many: Vec<(u32, u64)> = (0..2).map(|i| (i, 1)).collect();
        let t = Maglev::build(&many, &hosts, 1);
        assert_eq!(t.len(), 2);
        assert!(t.table.contains(&0) && t.table.contains(&1));
    }
}
