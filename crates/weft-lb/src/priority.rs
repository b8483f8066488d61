//! Envoy's priority-level load computation.

/// Weighted health inputs of one priority level.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LevelStats {
    pub total_weight: u128,
    pub healthy_weight: u128,
    pub hosts: usize,
}

/// Outcome of the load computation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loads {
    pub percent: Vec<u32>,
    pub panic: bool,
}

/// The factor actually used: 0 would declare every level dead, which Envoy
/// rejects at config time; here it degrades to "no overprovisioning".
pub(crate) fn effective_overprovisioning(factor: u32) -> u128 {
    if factor == 0 {
        100
    } else {
        u128::from(factor)
    }
}

/// Health of a level in percent: healthy weight share × overprovisioning,
/// capped at 100.
///
/// Rounds down like Envoy, except that a level with any healthy weight is at
/// least 1%: otherwise a few healthy hosts among thousands of unhealthy ones
/// would be unreachable when panic mode is disabled.
pub(crate) fn level_health(s: &LevelStats, overprovisioning: u128) -> u32 {
    if s.total_weight == 0 || s.healthy_weight == 0 {
        return 0;
    }
    let h = s.healthy_weight.saturating_mul(overprovisioning) / s.total_weight;
    h.clamp(1, 100) as u32
}

/// Computes per-level traffic percentages.
///
/// Normal mode: levels take traffic in order up to their health; if the
/// summed health is below 100 the shares are scaled up so they sum to 100.
/// Panic mode (summed health, capped at 100, below the threshold): health is
/// ignored and levels get traffic in proportion to their host counts.
/// When nothing is healthy and panic is disabled every load is 0, signalling
/// that no host can be picked.
pub(crate) fn compute(levels: &[LevelStats], overprovisioning: u32, panic_threshold: f64) -> Loads {
    let op = effective_overprovisioning(overprovisioning);
    let health: Vec<u32> = levels.iter().map(|l| level_health(l, op)).collect();
    let total_health = health.iter().map(|&h| u64::from(h)).sum::<u64>().min(100) as u32;
    let hosts: usize = levels.iter().map(|l| l.hosts).sum();

    // NaN compares false, so a NaN threshold disables panic mode.
    let panic = hosts > 0 && panic_threshold > 0.0 && f64::from(total_health) < panic_threshold;
    if panic {
        let counts: Vec<u128> = levels.iter().map(|l| l.hosts as u128).collect();
        return Loads { percent: apportion_percent(&counts), panic: true };
    }
    if total_health == 0 {
        return Loads { percent: vec![0; levels.len()], panic: false };
    }

    let mut remaining = 100u32;
    let mut percent: Vec<u32> = health
        .iter()
        .map(|&h| {
            let share = (h * 100 / total_health).min(remaining);
            remaining -= share;
            share
        })
        .collect();
    // Integer division can leave a few percent unassigned; Envoy hands them to
    // the first level that can serve traffic.
    if remaining > 0 {
        if let Some(i) = health.iter().position(|&h| h > 0) {
            percent[i] += remaining;
        }
    }
    Loads { percent, panic: false }
}

/// Splits 100 percent proportionally to `weights` by largest remainder, so the
/// result always sums to exactly 100 (or is all zero when every weight is 0).
fn apportion_percent(weights: &[u128]) -> Vec<u32> {
    let total: u128 = weights.iter().sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut out: Vec<u32> = weights.iter().map(|&w| (w * 100 / total) as u32).collect();
    let assigned: u32 = out.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Ties go to the higher-priority (lower index) level.
    order.sort_by_key(|&i| (std::cmp::Reverse(weights[i] * 100 % total), i));
    for &i in order.iter().take((100 - assigned) as usize) {
        out[i] += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_sums_to_100() {
        assert_eq!(apportion_percent(&[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(apportion_percent(&[1, 3]), vec![25, 75]);
        assert_eq!(apportion_percent(&[0, 0]), vec![0, 0]);
        assert_eq!(apportion_percent(&[2, 1, 0]), vec![67, 33, 0]);
    }

    #[test]
    fn health_never_rounds_to_zero() {
        let s = LevelStats { total_weight: 10_000, healthy_weight: 1, hosts: 10_000 };
        assert_eq!(level_health(&s, 140), 1);
        let huge =
            LevelStats { total_weight: u128::from(u32::MAX) * 3, healthy_weight: u128::from(u32::MAX) * 3, hosts: 3 };
        assert_eq!(level_health(&huge, u128::from(u32::MAX)), 100);
    }
}
