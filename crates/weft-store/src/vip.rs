//! The range virtual IPs are allocated from, and the pure choice of the next free addresses.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Istio's range for auto-allocated service addresses.
pub const VIP_RANGE: &str = "240.240.0.0/16";

const BASE: u32 = u32::from_be_bytes([240, 240, 0, 0]);
const MASK: u32 = 0xFFFF_0000;

/// Addresses the range can hand out: every /24 without its `.0` and `.255`, which some stacks and
/// operators still read as network and broadcast addresses.
pub const VIP_CAPACITY: usize = 256 * 254;

/// Whether `addr` is one the allocator may hand out.
pub fn is_allocatable(addr: Ipv4Addr) -> bool {
    let a = u32::from(addr);
    a & MASK == BASE && !matches!(a & 0xFF, 0 | 255)
}

/// The `count` lowest allocatable addresses not in `used`, in increasing order; when fewer are
/// free, `Err` carries how many are.
pub(crate) fn lowest_free(used: &BTreeSet<u32>, count: usize) -> Result<Vec<u32>, usize> {
    let mut out = Vec::with_capacity(count.min(VIP_CAPACITY));
    if count == 0 {
        return Ok(out);
    }
    for a in BASE..=(BASE | !MASK) {
        if is_allocatable(Ipv4Addr::from(a)) && !used.contains(&a) {
            out.push(a);
            if out.len() == count {
                return Ok(out);
            }
        }
    }
    Err(out.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }

    fn ips(v: &[u32]) -> Vec<String> {
        v.iter().map(|a| Ipv4Addr::from(*a).to_string()).collect()
    }

    #[test]
    fn allocatable_addresses() {
        let cases = [
            ("240.240.0.0", false),
            ("240.240.0.1", true),
            ("240.240.0.254", true),
            ("240.240.0.255", false),
            ("240.240.1.0", false),
            ("240.240.255.254", true),
            ("240.240.255.255", false),
            ("240.241.0.1", false),
            ("10.0.0.1", false),
        ];
        for (addr, want) in cases {
            assert_eq!(is_allocatable(addr.parse().unwrap()), want, "{addr}");
        }
    }

    #[test]
    fn lowest_free_picks_gaps_in_order_and_skips_network_and_broadcast() {
        let cases: &[(&[&str], usize, &[&str])] = &[
            (&[], 0, &[]),
            (&[], 2, &["240.240.0.1", "240.240.0.2"]),
            (&["240.240.0.1", "240.240.0.3"], 2, &["240.240.0.2", "240.240.0.4"]),
            (&["240.240.0.253"], 3, &["240.240.0.1", "240.240.0.2", "240.240.0.3"]),
        ];
        for (used, count, want) in cases {
            let used: BTreeSet<u32> = used.iter().map(|s| ip(s)).collect();
            assert_eq!(ips(&lowest_free(&used, *count).unwrap()), *want, "used {used:?}");
        }
        let full_first_block: BTreeSet<u32> = (1..=253).map(|i| ip("240.240.0.0") + i).collect();
        assert_eq!(ips(&lowest_free(&full_first_block, 2).unwrap()), ["240.240.0.254", "240.240.1.1"]);
    }

    #[test]
    fn lowest_free_reports_exhaustion_with_the_free_count() {
        let mut used: BTreeSet<u32> = (BASE..=(BASE | !MASK)).filter(|a| is_allocatable(Ipv4Addr::from(*a))).collect();
        assert_eq!(used.len(), VIP_CAPACITY);
        assert_eq!(lowest_free(&used, 1), Err(0));
        used.remove(&ip("240.240.7.9"));
        assert_eq!(ips(&lowest_free(&used, 1).unwrap()), ["240.240.7.9"]);
        assert_eq!(lowest_free(&used, 2), Err(1));
    }
}
