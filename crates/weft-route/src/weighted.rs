//! Weighted cluster choice.

use weft_config::{HeaderOps, WeightedCluster};

/// Returned for an empty cluster list, so that picking never panics: its empty name matches no
/// cluster, and the proxy answers as for any unknown cluster (503, no cluster found).
static NO_CLUSTER: WeightedCluster = WeightedCluster {
    name: String::new(),
    weight: 0,
    request_headers: HeaderOps { add: Vec::new(), remove: Vec::new() },
    response_headers: HeaderOps { add: Vec::new(), remove: Vec::new() },
    host_rewrite: None,
};

/// The sum of the weights; draw the roll for [`pick_weighted`] uniformly from `[0, total)`.
pub fn total_weight(clusters: &[WeightedCluster]) -> u64 {
    // u64 holds the sum of 2^32 maximal u32 weights; saturate anyway rather than trust lengths.
    clusters.iter().fold(0u64, |acc, c| acc.saturating_add(u64::from(c.weight)))
}

/// The cluster whose cumulative weight range `[start, start + weight)` holds `roll`, so a cluster
/// of weight 0 is never picked. Out-of-range input does not panic: a roll at or past the total
/// lands on the last cluster with weight (the end of the range), all-zero weights pick the first
/// cluster, and an empty list yields a sentinel with an empty name.
pub fn pick_weighted(clusters: &[WeightedCluster], roll: u64) -> &WeightedCluster {
    let total = total_weight(clusters);
    if total == 0 {
        return clusters.first().unwrap_or(&NO_CLUSTER);
    }
    let roll = roll.min(total - 1);
    let mut end = 0u64;
    for c in clusters {
        end = end.saturating_add(u64::from(c.weight));
        if roll < end {
            return c;
        }
    }
    // Unreachable: roll < total and the last `end` is total. Kept total rather than asserted.
    clusters.last().unwrap_or(&NO_CLUSTER)
}
