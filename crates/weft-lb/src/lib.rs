//! Load-balancing core of the Weft proxy: picks an upstream host for each
//! request following Envoy's priority, locality and policy semantics.
//!
//! Everything here is plain data and pure functions: a [`Balancer`] is built
//! once per change of endpoints or health ([`Balancer::build`]) and then
//! shared (it is `Send + Sync`) by every request, which calls
//! [`Balancer::pick`] without allocating.
//!
//! # Selection model
//!
//! 1. **Priority level.** Hosts are grouped by `priority` (0 is preferred).
//!    A level's health is its healthy share of weight × overprovisioning
//!    factor / 100, capped at 100% (rounded down, but never to 0% while the
//!    level has a healthy host). Level 0 takes min(100, health) percent of
//!    the traffic, the rest spills to level 1 and so on; if the summed health
//!    is below 100 the loads are scaled up to sum to 100. See
//!    [`Balancer::priority_load`].
//! 2. **Panic mode.** If the summed health (capped at 100) is below
//!    `panic_threshold_percent`, health is ignored: every host is eligible and
//!    levels get traffic in proportion to their host counts. With panic mode
//!    disabled (threshold 0) and no healthy host, [`Balancer::pick`] returns
//!    `None`.
//! 3. **Locality.** If any [`LocalityInfo`] has a weight, a locality of the
//!    chosen level is drawn with probability ∝ weight × locality health
//!    (healthy share × overprovisioning, capped at 1; health is ignored in
//!    panic mode). Localities without a weight, and hosts whose `locality`
//!    index is out of range, get weight 0. If no locality of the level has a
//!    positive weight the level's hosts are used directly.
//! 4. **Policy** within the chosen set; see [`Policy`].
//!
//! Hash policies (ring hash, Maglev) must map a request hash to the same host
//! every time, so for them the priority level is derived from the hash and
//! locality weights are folded into host weights instead of drawing a locality
//! at random.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod hash;
mod maglev;
mod picker;
mod priority;
mod ring;
mod weights;

use std::ops::Range;

use rand::{Rng, RngCore};

use crate::hash::{mix64, xxh64};
use crate::picker::{Picker, Request};
use crate::priority::{effective_overprovisioning, LevelStats};
use crate::weights::{bit_len, Distribution};

/// Load-balancing policy applied within the chosen priority level / locality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Smooth weighted round robin over a precomputed interleaved cycle (at
    /// most 65536 entries, or one per host if there are more hosts; weights
    /// are scaled down proportionally but never to 0).
    RoundRobin,
    /// Draw `choice_count` candidates with probability ∝ weight and take the
    /// one with the fewest active requests (ties: first drawn). With equal
    /// weights this is Envoy's power-of-two-choices; with unequal weights the
    /// weight enters through the sampling only (instead of Envoy's dynamic
    /// weight / (active + 1) scheduler, which would need mutable state), so at
    /// equal load the split is exactly proportional to weight.
    /// `choice_count` 0 means the default 2; values above 32 are capped.
    LeastRequest {
        /// Number of candidates drawn per pick (default 2).
        choice_count: u32,
    },
    /// Weighted random.
    Random,
    /// Consistent hash ring (ketama style): every host gets ring points ∝
    /// weight at a power-of-two resolution chosen so that the ring has at
    /// least `min_ring_size` points, reduced if it would exceed
    /// `max_ring_size`. Both are clamped to 8M; every host keeps at least one
    /// point.
    RingHash {
        /// Minimum ring size (default 1024).
        min_ring_size: u64,
        /// Maximum ring size (default 8M).
        max_ring_size: u64,
    },
    /// Weighted Maglev table. The size used is the smallest prime ≥
    /// max(`table_size`, host count), with `table_size` clamped to 5000011.
    Maglev {
        /// Table size, ideally prime (default 65537).
        table_size: u64,
    },
}

impl Policy {
    /// Least request with Envoy's default of two choices.
    pub fn least_request() -> Policy {
        Policy::LeastRequest { choice_count: 2 }
    }

    /// Ring hash with Envoy's default sizes (1024 .. 8M).
    pub fn ring_hash() -> Policy {
        Policy::RingHash { min_ring_size: 1024, max_ring_size: 8 * 1024 * 1024 }
    }

    /// Maglev with Envoy's default table size (65537).
    pub fn maglev() -> Policy {
        Policy::Maglev { table_size: 65537 }
    }

    fn is_hashing(&self) -> bool {
        matches!(self, Policy::RingHash { .. } | Policy::Maglev { .. })
    }
}

/// One upstream endpoint as seen by the balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Relative weight; 0 is treated as 1.
    pub weight: u32,
    /// Priority level, 0 being the most preferred.
    pub priority: u32,
    /// Index into the `localities` slice given to [`Balancer::build`].
    pub locality: u32,
    /// Whether health checking / outlier detection consider the host usable.
    pub healthy: bool,
    /// Stable identity (e.g. "10.0.0.1:80") used to place the host on hash
    /// rings; it should be unique within the cluster.
    pub key: String,
}

/// Per-locality settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalityInfo {
    /// Locality weight; `Some` on any locality turns on locality-weighted
    /// load balancing for the cluster.
    pub weight: Option<u32>,
}

/// Cluster-level balancing configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    /// Policy used within the chosen level / locality.
    pub policy: Policy,
    /// Panic mode starts when the total health is below this percentage
    /// (default 50; 0 or NaN disables panic mode; above 100 forces it).
    pub panic_threshold_percent: f64,
    /// Overprovisioning factor in percent (default 140). 0 is treated as 100.
    pub overprovisioning_factor: u32,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig { policy: Policy::RoundRobin, panic_threshold_percent: 50.0, overprovisioning_factor: 140 }
    }
}

/// The xxHash64 (seed 0) of `data`: the request hash for header, cookie and
/// source-IP hash policies.
pub fn hash_bytes(data: &[u8]) -> u64 {
    xxh64(data, 0)
}

/// Random re-picks made when the pick lands on an excluded host, before
/// falling back to a deterministic scan.
const MAX_REPICKS: u32 = 3;

/// Decorrelates the retry scan start from the other uses of the hash.
const SCAN_SALT: u64 = 0x7363_616e_5f73_616c;

/// Immutable host selector for one cluster snapshot.
#[derive(Debug)]
pub struct Balancer {
    hashing: bool,
    levels: Vec<Level>,
    priorities: Vec<u32>,
    loads: Vec<u32>,
    /// The level taking all traffic, if one does.
    only_level: Option<usize>,
    panic: bool,
    /// Eligible hosts of every level that receives traffic, level by level;
    /// used for the bounded retry scan.
    eligible: Vec<u32>,
}

#[derive(Debug)]
struct Level {
    eligible: Range<usize>,
    chooser: Chooser,
}

#[derive(Debug)]
enum Chooser {
    Hosts(Picker),
    Localities { dist: Distribution, pickers: Vec<Picker> },
}

fn effective_weight(h: &HostInfo) -> u64 {
    u64::from(h.weight.max(1))
}

/// Locality health in 1/10000ths (healthy share × overprovisioning, capped
/// at 1), never rounded down to 0 while a host is healthy.
fn locality_health(total: u128, healthy: u128, op: u128, panic: bool) -> u128 {
    if total == 0 {
        0
    } else if panic {
        10_000
    } else if healthy == 0 {
        0
    } else {
        (healthy.saturating_mul(op).saturating_mul(100) / total).clamp(1, 10_000)
    }
}

/// Folds locality weights into host weights for the hash policies:
/// host weight × locality weight / the locality's eligible weight, rescaled
/// to fit 32 bits. Hosts of zero-weight localities are dropped.
fn fold_locality_weights(groups: &[(u128, Vec<(u32, u64)>)]) -> Vec<(u32, u64)> {
    let mut raw: Vec<(u32, u128)> = Vec::new();
    for (lw, members) in groups {
        let sum: u128 = members.iter().map(|&(_, w)| u128::from(w)).sum();
        if *lw == 0 || sum == 0 {
            continue;
        }
        for &(h, w) in members {
            // The 2^32 factor keeps precision for small hosts in big
            // localities before the common rescale below.
            raw.push((h, ((u128::from(w) * lw) << 32) / sum));
        }
    }
    let max = raw.iter().map(|&(_, w)| w).max().unwrap_or(0);
    let shift = bit_len(max).saturating_sub(32);
    raw.into_iter().map(|(h, w)| (h, ((w >> shift) as u64).max(1))).collect()
}

impl Balancer {
    /// Builds the selector for `hosts`. Cost is O(hosts · log hosts) plus the
    /// policy table (linear for round robin and Maglev, n · log n for the
    /// ring's sort); call it when endpoints or health change, never per
    /// request.
    pub fn build(cfg: &BalancerConfig, hosts: &[HostInfo], localities: &[LocalityInfo]) -> Balancer {
        // Indices are stored as u32 (u32::MAX is the Maglev empty marker);
        // a larger host list cannot exist in memory anyway.
        let hosts = &hosts[..hosts.len().min(u32::MAX as usize - 1)];
        let op = effective_overprovisioning(cfg.overprovisioning_factor);
        let hashing = cfg.policy.is_hashing();

        let mut order: Vec<u32> = (0..hosts.len() as u32).collect();
        order.sort_by_key(|&i| (hosts[i as usize].priority, i));
        let groups: Vec<&[u32]> =
            order.chunk_by(|&a, &b| hosts[a as usize].priority == hosts[b as usize].priority).collect();

        let stats: Vec<LevelStats> = groups
            .iter()
            .map(|g| {
                let mut s = LevelStats { hosts: g.len(), ..LevelStats::default() };
                for &i in *g {
                    let h = &hosts[i as usize];
                    s.total_weight += u128::from(effective_weight(h));
                    if h.healthy {
                        s.healthy_weight += u128::from(effective_weight(h));
                    }
                }
                s
            })
            .collect();
        let loads = priority::compute(&stats, cfg.overprovisioning_factor, cfg.panic_threshold_percent);
        let panic = loads.panic;
        let locality_weighted = localities.iter().any(|l| l.weight.is_some());

        let mut eligible = Vec::new();
        let mut levels = Vec::with_capacity(groups.len());
        for (g, &load) in groups.iter().zip(&loads.percent) {
            let start = eligible.len();
            if load == 0 {
                levels.push(Level { eligible: start..start, chooser: Chooser::Hosts(Picker::Empty) });
                continue;
            }
            let members: Vec<(u32, u64)> = g
                .iter()
                .filter(|&&i| panic || hosts[i as usize].healthy)
                .map(|&i| (i, effective_weight(&hosts[i as usize])))
                .collect();
            eligible.extend(members.iter().map(|&(i, _)| i));

            let chooser = if locality_weighted {
                Self::locality_chooser(cfg, hosts, localities, g, &members, op, panic)
            } else {
                Chooser::Hosts(Picker::build(&cfg.policy, &members, hosts))
            };
            levels.push(Level { eligible: start..eligible.len(), chooser });
        }

        Balancer {
            hashing,
            levels,
            priorities: groups.iter().map(|g| hosts[g[0] as usize].priority).collect(),
            only_level: loads.percent.iter().position(|&l| l == 100),
            loads: loads.percent,
            panic,
            eligible,
        }
    }

    fn locality_chooser(
        cfg: &BalancerConfig,
        hosts: &[HostInfo],
        localities: &[LocalityInfo],
        level: &[u32],
        members: &[(u32, u64)],
        op: u128,
        panic: bool,
    ) -> Chooser {
        let locality_of = |i: u32| hosts[i as usize].locality;
        let mut all: Vec<u32> = level.to_vec();
        all.sort_by_key(|&i| (locality_of(i), i));
        let mut sorted_members = members.to_vec();
        sorted_members.sort_by_key(|&(i, _)| (locality_of(i), i));

        // (effective locality weight, eligible members) per locality present.
        let mut groups: Vec<(u128, Vec<(u32, u64)>)> = Vec::new();
        let mut rest = sorted_members.as_slice();
        for chunk in all.chunk_by(|&a, &b| locality_of(a) == locality_of(b)) {
            let loc = locality_of(chunk[0]);
            let (mut total, mut healthy) = (0u128, 0u128);
            for &i in chunk {
                let w = u128::from(effective_weight(&hosts[i as usize]));
                total += w;
                if hosts[i as usize].healthy {
                    healthy += w;
                }
            }
            let n = rest.iter().take_while(|&&(i, _)| locality_of(i) == loc).count();
            let (mine, tail) = rest.split_at(n);
            rest = tail;
            let weight = localities.get(loc as usize).and_then(|l| l.weight).map_or(0, u128::from);
            let lw = weight * locality_health(total, healthy, op, panic);
            if lw > 0 && !mine.is_empty() {
                groups.push((lw, mine.to_vec()));
            }
        }

        if groups.is_empty() {
            return Chooser::Hosts(Picker::build(&cfg.policy, members, hosts));
        }
        if cfg.policy.is_hashing() {
            let folded = fold_locality_weights(&groups);
            return Chooser::Hosts(Picker::build(&cfg.policy, &folded, hosts));
        }
        let weights: Vec<u128> = groups.iter().map(|(w, _)| *w).collect();
        Chooser::Localities {
            dist: Distribution::new(&weights),
            pickers: groups.iter().map(|(_, m)| Picker::build(&cfg.policy, m, hosts)).collect(),
        }
    }

    /// Returns the index (into `hosts`) of the chosen host, or `None` when no
    /// host can be picked (no hosts, or none healthy with panic mode off).
    ///
    /// `hash` is the request hash for ring hash / Maglev (`None`: a random
    /// point, i.e. weighted random); other policies ignore it. `active(i)`
    /// gives the in-flight requests of host `i` (least request only). `exclude`
    /// lists hosts tried by earlier attempts: they are avoided whenever another
    /// host of a level that receives traffic is eligible, via up to three
    /// re-picks and then a bounded scan of O(exclude.len()) hosts; only if
    /// every eligible host is excluded is one of them returned.
    pub fn pick(
        &self,
        hash: Option<u64>,
        active: &dyn Fn(usize) -> u32,
        exclude: &[usize],
        rng: &mut dyn RngCore,
    ) -> Option<usize> {
        if self.eligible.is_empty() {
            return None;
        }
        let hash = if self.hashing { hash.unwrap_or_else(|| rng.next_u64()) } else { 0 };
        let mut first: Option<(usize, u32)> = None;
        for attempt in 0..=MAX_REPICKS {
            let Some(level) = self.choose_level(hash, rng) else {
                break;
            };
            let req = Request { hash, attempt, active, exclude };
            if let Some(host) = self.levels[level].pick(&req, rng) {
                if !exclude.contains(&(host as usize)) {
                    return Some(host as usize);
                }
                first.get_or_insert((level, host));
            }
        }

        let (level, host) = first?;
        let start = if self.hashing { mix64(hash ^ SCAN_SALT) } else { rng.next_u64() };
        // The chosen level first keeps the retry where the level loads sent
        // it; other levels follow in priority order.
        std::iter::once(level)
            .chain((0..self.levels.len()).filter(|&l| l != level))
            .find_map(|l| self.scan(self.levels[l].eligible.clone(), start, exclude))
            .or(Some(host as usize))
    }

    /// The level to use: drawn from the loads, by the hash for hash policies
    /// so the same key always lands in the same level.
    fn choose_level(&self, hash: u64, rng: &mut dyn RngCore) -> Option<usize> {
        // The common single-level cluster needs no draw at all.
        if let Some(i) = self.only_level {
            return Some(i);
        }
        let r = if self.hashing { (mix64(hash) % 100) as u32 } else { rng.gen_range(0..100u32) };
        let mut acc = 0u32;
        for (i, &load) in self.loads.iter().enumerate() {
            acc += load;
            if r < acc {
                return Some(i);
            }
        }
        self.loads.iter().position(|&l| l > 0)
    }

    /// First non-excluded host of `range` starting at a pseudo-random offset.
    /// Hosts are distinct, so among exclude.len() + 1 consecutive ones at
    /// least one is not excluded: the scan is bounded by the exclude list,
    /// not the host count.
    fn scan(&self, range: Range<usize>, start: u64, exclude: &[usize]) -> Option<usize> {
        let hosts = self.eligible.get(range)?;
        let len = hosts.len();
        if len == 0 {
            return None;
        }
        let offset = (start % len as u64) as usize;
        (0..len.min(exclude.len() + 1)).map(|step| hosts[(offset + step) % len] as usize).find(|h| !exclude.contains(h))
    }

    /// True if picks ignore health because the healthy share fell below the
    /// panic threshold.
    pub fn in_panic(&self) -> bool {
        self.panic
    }

    /// Percent of traffic per priority level, one entry per distinct priority
    /// present, in ascending priority order (see [`Balancer::priority_levels`]).
    /// Sums to 100, or is all zero when no host can be picked.
    pub fn priority_load(&self) -> &[u32] {
        &self.loads
    }

    /// The priority value of each entry of [`Balancer::priority_load`].
    pub fn priority_levels(&self) -> &[u32] {
        &self.priorities
    }
}

impl Level {
    fn pick(&self, req: &Request<'_>, rng: &mut dyn RngCore) -> Option<u32> {
        match &self.chooser {
            Chooser::Hosts(p) => p.pick(req, rng),
            Chooser::Localities { dist, pickers } => pickers.get(dist.sample(rng)?)?.pick(req, rng),
        }
    }
}
