//! Behavioural tests of the public API. All randomness is seeded; statistical
//! tolerances are several standard deviations wide yet tight enough to catch
//! a wrong distribution.

use std::collections::HashMap;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use weft_lb::{hash_bytes, Balancer, BalancerConfig, HostInfo, LocalityInfo, Policy};

fn host(i: usize, weight: u32, priority: u32, healthy: bool) -> HostInfo {
    HostInfo { weight, priority, locality: 0, healthy, key: format!("10.0.{}.{}:80", i / 256, i % 256) }
}

fn cfg(policy: Policy) -> BalancerConfig {
    BalancerConfig { policy, ..BalancerConfig::default() }
}

fn idle(_: usize) -> u32 {
    0
}

/// Every policy with default parameters.
fn all_policies() -> Vec<Policy> {
    vec![Policy::RoundRobin, Policy::least_request(), Policy::Random, Policy::ring_hash(), Policy::maglev()]
}

/// Every policy, with a ring large enough that its arc lengths track the
/// point counts closely (at 1024 points the owned share of a host with 256
/// points has a standard deviation of ~1.4%, too coarse for ±2% checks).
fn fine_policies() -> Vec<Policy> {
    let mut p = all_policies();
    p[3] = Policy::RingHash { min_ring_size: 1 << 16, max_ring_size: 1 << 23 };
    p
}

/// Share of picks per host index over `n` picks, each with a fresh random
/// request hash.
fn shares(b: &Balancer, hosts: usize, n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut counts = vec![0usize; hosts];
    for _ in 0..n {
        let h = rng.next_u64();
        let i = b.pick(Some(h), &idle, &[], &mut rng).expect("a host");
        counts[i] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

fn assert_shares(got: &[f64], want: &[f64], tol: f64, what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}: host {i} got {g:.4}, want {w:.4} ± {tol} (all: {got:?})");
    }
}

#[test]
fn balancer_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Balancer>();
}

#[test]
fn priority_loads_table() {
    // (levels as (healthy, total) host counts, overprovisioning %, panic
    // threshold) → (expected loads, expected panic)
    type Case = (&'static [(usize, usize)], u32, f64, &'static [u32], bool);
    let cases: &[Case] = &[
        (&[(10, 10), (10, 10)], 140, 50.0, &[100, 0], false),
        (&[(5, 10), (10, 10)], 140, 50.0, &[70, 30], false),
        (&[(5, 10), (10, 10)], 100, 50.0, &[50, 50], false),
        // Health exactly at the threshold is not panic.
        (&[(5, 10)], 100, 50.0, &[100], false),
        (&[(4, 10)], 100, 50.0, &[100], true),
        // 72% healthy × 1.4 = 100.8 → capped: P0 still takes everything.
        (&[(18, 25), (4, 4)], 140, 50.0, &[100, 0], false),
        // Total health 28+28 = 56 < 100 → normalised to 50/50, not panic.
        (&[(2, 10), (2, 10)], 140, 50.0, &[50, 50], false),
        // Three levels: 42 + 0 + rest.
        (&[(3, 10), (0, 10), (10, 10)], 140, 50.0, &[42, 0, 58], false),
        // 33+33+33 = 99: normalisation rounding leftover goes to P0.
        (&[(1, 3), (1, 3), (1, 3)], 100, 50.0, &[34, 33, 33], false),
        // 14+14 = 28 < 50: panic, loads ∝ host counts.
        (&[(1, 10), (1, 10)], 140, 50.0, &[50, 50], true),
        (&[(0, 4), (0, 12)], 140, 50.0, &[25, 75], true),
        (&[(0, 10), (0, 10)], 140, 50.0, &[50, 50], true),
        // Panic disabled and nothing healthy: nothing can be picked.
        (&[(0, 10), (0, 10)], 140, 0.0, &[0, 0], false),
        // Panic disabled: low health is normalised instead.
        (&[(1, 10), (1, 10)], 140, 0.0, &[50, 50], false),
        // NaN threshold disables panic; above 100 forces it.
        (&[(1, 10)], 140, f64::NAN, &[100], false),
        (&[(10, 10), (1, 1)], 140, 150.0, &[91, 9], true),
        // Overprovisioning 0 is treated as 100.
        (&[(5, 10), (10, 10)], 0, 50.0, &[50, 50], false),
        // One healthy host among 1000 still gets traffic (health rounds up
        // to 1%, not down to 0%).
        (&[(1, 1000)], 100, 0.0, &[100], false),
    ];
    for (i, (levels, op, threshold, want, want_panic)) in cases.iter().enumerate() {
        let mut hosts = Vec::new();
        for (p, &(healthy, total)) in levels.iter().enumerate() {
            for k in 0..total {
                hosts.push(host(hosts.len(), 1, p as u32, k < healthy));
            }
        }
        let c = BalancerConfig {
            policy: Policy::Random,
            panic_threshold_percent: *threshold,
            overprovisioning_factor: *op,
        };
        let b = Balancer::build(&c, &hosts, &[]);
        assert_eq!(b.priority_load(), *want, "case {i}: loads");
        assert_eq!(b.in_panic(), *want_panic, "case {i}: panic");
        assert_eq!(b.priority_levels().len(), levels.len(), "case {i}");
    }
}

#[test]
fn priority_loads_use_weights_and_sparse_priorities() {
    // Weighted health: the unhealthy host carries 3/4 of P0's weight, so P0
    // health is 25% × 1.4 = 35. Priorities 3 and 7 are reported densely.
    let hosts = vec![host(0, 1, 3, true), host(1, 3, 3, false), host(2, 1, 7, true)];
    let b = Balancer::build(&cfg(Policy::Random), &hosts, &[]);
    assert_eq!(b.priority_levels(), &[3, 7]);
    assert_eq!(b.priority_load(), &[35, 65]);
}

#[test]
fn traffic_follows_priority_loads() {
    // P0: 5 of 10 healthy → 70%, P1 takes 30%.
    let mut hosts: Vec<HostInfo> = (0..10).map(|i| host(i, 1, 0, i < 5)).collect();
    hosts.extend((10..20).map(|i| host(i, 1, 1, true)));
    for policy in fine_policies() {
        let b = Balancer::build(&cfg(policy.clone()), &hosts, &[]);
        let s = shares(&b, hosts.len(), 40_000, 11);
        let p0: f64 = s[..10].iter().sum();
        assert!((p0 - 0.70).abs() < 0.02, "{policy:?}: P0 share {p0}");
        assert!(s[5..10].iter().all(|&x| x == 0.0), "{policy:?}: unhealthy picked");
    }
}

#[test]
fn weight_proportions_per_policy() {
    let cases: &[&[u32]] = &[&[1, 3], &[1, 1, 1, 1], &[5, 1, 2, 0], &[100, 300]];
    for weights in cases {
        let hosts: Vec<HostInfo> = weights.iter().enumerate().map(|(i, &w)| host(i, w, 0, true)).collect();
        let eff: Vec<f64> = weights.iter().map(|&w| f64::from(w.max(1))).collect();
        let total: f64 = eff.iter().sum();
        let want: Vec<f64> = eff.iter().map(|w| w / total).collect();
        for policy in fine_policies() {
            let b = Balancer::build(&cfg(policy.clone()), &hosts, &[]);
            let got = shares(&b, hosts.len(), 40_000, 3);
            assert_shares(&got, &want, 0.02, &format!("{policy:?} {weights:?}"));
        }
    }
}

#[test]
fn default_ring_size_is_roughly_weighted() {
    // With Envoy's default 1024-point ring the split is only approximately
    // weighted; guard against gross errors.
    let hosts = vec![host(0, 1, 0, true), host(1, 3, 0, true)];
    let b = Balancer::build(&cfg(Policy::ring_hash()), &hosts, &[]);
    let got = shares(&b, 2, 40_000, 5);
    assert_shares(&got, &[0.25, 0.75], 0.05, "ring 1024");
}

#[test]
fn round_robin_is_exact_and_smooth() {
    let hosts = vec![host(0, 2, 0, true), host(1, 3, 0, true), host(2, 5, 0, true)];
    let b = Balancer::build(&cfg(Policy::RoundRobin), &hosts, &[]);
    let mut rng = SmallRng::seed_from_u64(0);
    let seq: Vec<usize> = (0..100).map(|_| b.pick(None, &idle, &[], &mut rng).unwrap()).collect();
    for cycle in seq.chunks(10) {
        let mut c = [0; 3];
        for &i in cycle {
            c[i] += 1;
        }
        assert_eq!(c, [2, 3, 5], "{seq:?}");
    }
    // Smooth: the heaviest host never runs three times in a row and the
    // light ones are never adjacent to themselves.
    for w in seq.windows(3) {
        assert!(!(w[0] == 2 && w[1] == 2 && w[2] == 2), "{seq:?}");
    }
    for w in seq.windows(2) {
        assert!(w[0] != w[1] || w[0] == 2, "{seq:?}");
    }
}

#[test]
fn least_request_prefers_idle_hosts() {
    let hosts = vec![host(0, 1, 0, true), host(1, 1, 0, true)];
    let busy = |i: usize| if i == 0 { 100 } else { 0 };
    // Host 0 only wins when every draw is host 0: (1/2)^choices.
    for (choices, want_busy) in [(1u32, 0.5), (2, 0.25), (3, 0.125), (0, 0.25)] {
        let b = Balancer::build(&cfg(Policy::LeastRequest { choice_count: choices }), &hosts, &[]);
        let mut rng = SmallRng::seed_from_u64(9);
        let n = 40_000;
        let picked_busy = (0..n).filter(|_| b.pick(None, &busy, &[], &mut rng) == Some(0)).count();
        let got = picked_busy as f64 / n as f64;
        assert!((got - want_busy).abs() < 0.015, "choices {choices}: {got}");
    }
}

#[test]
fn weight_zero_behaves_as_one() {
    let zero = vec![host(0, 0, 0, true), host(1, 3, 0, true), host(2, 0, 0, true)];
    let one = vec![host(0, 1, 0, true), host(1, 3, 0, true), host(2, 1, 0, true)];
    for policy in all_policies() {
        let a = Balancer::build(&cfg(policy.clone()), &zero, &[]);
        let b = Balancer::build(&cfg(policy.clone()), &one, &[]);
        let mut ra = SmallRng::seed_from_u64(4);
        let mut rb = SmallRng::seed_from_u64(4);
        for i in 0..2000u64 {
            let h = Some(hash_bytes(&i.to_le_bytes()));
            assert_eq!(a.pick(h, &idle, &[], &mut ra), b.pick(h, &idle, &[], &mut rb), "{policy:?}");
        }
        let s = shares(&a, 3, 20_000, 8);
        assert!(s.iter().all(|&x| x > 0.1), "{policy:?}: {s:?}");
    }
}

#[test]
fn empty_and_dead_clusters_return_none() {
    let mut rng = SmallRng::seed_from_u64(1);
    let dead: Vec<HostInfo> = (0..4).map(|i| host(i, 1, 0, false)).collect();
    for policy in all_policies() {
        let b = Balancer::build(&cfg(policy.clone()), &[], &[]);
        assert_eq!(b.pick(Some(1), &idle, &[], &mut rng), None, "{policy:?}");
        assert!(b.priority_load().is_empty());
        assert!(!b.in_panic());

        let no_panic = BalancerConfig { panic_threshold_percent: 0.0, ..cfg(policy.clone()) };
        let b = Balancer::build(&no_panic, &dead, &[]);
        assert_eq!(b.pick(Some(1), &idle, &[], &mut rng), None, "{policy:?}");
        assert_eq!(b.pick(None, &idle, &[0], &mut rng), None, "{policy:?}");
    }
}

#[test]
fn panic_mode_uses_all_hosts() {
    // 1 of 4 healthy: 35% < 50% → panic; every host must receive traffic.
    let hosts: Vec<HostInfo> = (0..4).map(|i| host(i, 1, 0, i == 0)).collect();
    for policy in fine_policies() {
        let b = Balancer::build(&cfg(policy.clone()), &hosts, &[]);
        assert!(b.in_panic(), "{policy:?}");
        let s = shares(&b, 4, 20_000, 2);
        assert_shares(&s, &[0.25; 4], 0.02, &format!("{policy:?} panic"));
    }
}

#[test]
fn unhealthy_never_picked_outside_panic() {
    let mut rng = SmallRng::seed_from_u64(77);
    for round in 0..40 {
        let n = rng.gen_range(2..30);
        let mut hosts: Vec<HostInfo> =
            (0..n).map(|i| host(i, rng.gen_range(0..5), rng.gen_range(0..3), rng.gen_bool(0.7))).collect();
        hosts[0].healthy = true;
        let localities = [LocalityInfo { weight: Some(1) }, LocalityInfo { weight: Some(2) }];
        for h in hosts.iter_mut() {
            h.locality = rng.gen_range(0..2);
        }
        for policy in all_policies() {
            let with_loc = round % 2 == 0;
            let b = Balancer::build(&cfg(policy.clone()), &hosts, if with_loc { &localities } else { &[] });
            if b.in_panic() {
                continue;
            }
            for _ in 0..300 {
                let h = rng.next_u64();
                let ex = [rng.gen_range(0..n)];
                let i = b.pick(Some(h), &idle, &ex, &mut rng).expect("healthy host exists");
                assert!(hosts[i].healthy, "round {round} {policy:?} picked {i}");
            }
        }
    }
}

#[test]
fn exclude_is_honoured_when_alternative_exists() {
    let hosts: Vec<HostInfo> = (0..3).map(|i| host(i, 1, 0, true)).collect();
    for policy in all_policies() {
        let b = Balancer::build(&cfg(policy.clone()), &hosts, &[]);
        let mut rng = SmallRng::seed_from_u64(6);
        for _ in 0..2000 {
            let h = Some(rng.next_u64());
            assert_eq!(b.pick(h, &idle, &[0, 1], &mut rng), Some(2), "{policy:?}");
            let one = b.pick(h, &idle, &[2], &mut rng).unwrap();
            assert_ne!(one, 2, "{policy:?}");
            // Everything excluded: still answer with some host.
            assert!(b.pick(h, &idle, &[0, 1, 2], &mut rng).is_some());
        }
    }
}

#[test]
fn exclude_never_picks_unhealthy_or_idle_levels() {
    // P0 = {0 healthy, 1 unhealthy}: health 70 → loads [70, 30].
    let spill = vec![host(0, 1, 0, true), host(1, 1, 0, false), host(2, 1, 1, true)];
    // P0 fully healthy → loads [100, 0]: host 2 receives no traffic.
    let full = vec![host(0, 1, 0, true), host(1, 1, 1, true)];
    for policy in all_policies() {
        let mut rng = SmallRng::seed_from_u64(12);
        let b = Balancer::build(&cfg(policy.clone()), &spill, &[]);
        for _ in 0..1000 {
            let h = Some(rng.next_u64());
            assert_eq!(b.pick(h, &idle, &[0], &mut rng), Some(2), "{policy:?}");
        }
        let b = Balancer::build(&cfg(policy.clone()), &full, &[]);
        for _ in 0..1000 {
            let h = Some(rng.next_u64());
            assert_eq!(b.pick(h, &idle, &[0], &mut rng), Some(0), "{policy:?}");
        }
    }
}

#[test]
fn exclude_spreads_over_remaining_hosts() {
    // Retries must not all pile onto one neighbour.
    let hosts: Vec<HostInfo> = (0..10).map(|i| host(i, 1, 0, true)).collect();
    for policy in fine_policies() {
        let b = Balancer::build(&cfg(policy.clone()), &hosts, &[]);
        let mut rng = SmallRng::seed_from_u64(21);
        let mut counts = [0usize; 10];
        for _ in 0..20_000 {
            let h = Some(rng.next_u64());
            counts[b.pick(h, &idle, &[0], &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[0], 0, "{policy:?}");
        for (i, &c) in counts.iter().enumerate().skip(1) {
            let share = c as f64 / 20_000.0;
            assert!((share - 1.0 / 9.0).abs() < 0.03, "{policy:?} host {i}: {share}");
        }
    }
}

#[test]
fn hash_policies_are_sticky() {
    // Half of P0 is unhealthy so traffic is split 70/30 between the levels:
    // the level choice must be sticky as well.
    let hosts: Vec<HostInfo> = (0..20).map(|i| host(i, 1 + (i % 3) as u32, i as u32 % 2, i % 4 != 0)).collect();
    for policy in [Policy::ring_hash(), Policy::maglev()] {
        let a = Balancer::build(&cfg(policy.clone()), &hosts, &[]);
        let b = Balancer::build(&cfg(policy.clone()), &hosts, &[]);
        let mut rng = SmallRng::seed_from_u64(31);
        let mut levels_seen = [0usize; 2];
        for k in 0..2000u64 {
            let h = Some(hash_bytes(format!("user-{k}").as_bytes()));
            let first = a.pick(h, &idle, &[], &mut rng);
            for _ in 0..3 {
                assert_eq!(a.pick(h, &idle, &[], &mut rng), first, "{policy:?}");
            }
            assert_eq!(b.pick(h, &idle, &[], &mut rng), first, "{policy:?} rebuild");
            levels_seen[usize::from(first.unwrap() % 2 == 1)] += 1;
            // Retries of one request are deterministic too.
            let ex = [first.unwrap()];
            let retry = a.pick(h, &idle, &ex, &mut rng);
            assert_ne!(retry, first);
            assert_eq!(a.pick(h, &idle, &ex, &mut rng), retry, "{policy:?} retry");
        }
        assert!(levels_seen.iter().all(|&n| n > 200), "{policy:?}: {levels_seen:?}");
    }
}

/// Maps every key hash to the picked host's key.
fn mapping(b: &Balancer, hosts: &[HostInfo], keys: &[u64]) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(0);
    keys.iter().map(|&k| hosts[b.pick(Some(k), &idle, &[], &mut rng).unwrap()].key.clone()).collect()
}

#[test]
fn hash_policies_minimal_disruption() {
    let keys: Vec<u64> = (0..20_000u64).map(|k| hash_bytes(&k.to_be_bytes())).collect();
    for n in [5usize, 10, 37] {
        let all: Vec<HostInfo> = (0..n).map(|i| host(i, 1, 0, true)).collect();
        let mut fewer = all.clone();
        let removed = fewer.remove(n / 2);
        for policy in [Policy::ring_hash(), Policy::maglev()] {
            let before = mapping(&Balancer::build(&cfg(policy.clone()), &all, &[]), &all, &keys);
            let after = mapping(&Balancer::build(&cfg(policy.clone()), &fewer, &[]), &fewer, &keys);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let moved_other = before.iter().zip(&after).filter(|(a, b)| a != b && **a != removed.key).count();
            let frac = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / n as f64;
            // Ring points depend only on a host's own weight, so no key of a
            // surviving host may move; Maglev reshuffles a little.
            let extra_allowed = match policy {
                Policy::RingHash { .. } => 0.0,
                _ => 0.25 * ideal,
            };
            assert!(
                frac <= ideal * 1.3 + extra_allowed && frac >= ideal * 0.6,
                "{policy:?} n={n}: moved {frac:.4}, ideal {ideal:.4}"
            );
            assert!(
                moved_other as f64 / keys.len() as f64 <= extra_allowed,
                "{policy:?} n={n}: {moved_other} keys of surviving hosts moved"
            );
            // Adding the host back is the mirror image.
            let back = mapping(&Balancer::build(&cfg(policy.clone()), &all, &[]), &all, &keys);
            assert_eq!(back, before, "{policy:?} rebuild differs");
        }
    }
}

fn loc_host(i: usize, locality: u32, healthy: bool) -> HostInfo {
    HostInfo { locality, ..host(i, 1, 0, healthy) }
}

#[test]
fn locality_weighting() {
    // Hosts 0-2 are in locality 0, hosts 3-5 in locality 1.
    // (locality weights, host health) → expected traffic share of locality 0.
    type Case = (&'static [Option<u32>], [bool; 6], f64);
    let cases: &[Case] = &[
        // Weighted 1:3, all healthy.
        (&[Some(1), Some(3)], [true; 6], 0.25),
        // Locality 1 at 2/3 healthy × 1.4 = 0.9333: 1 / (1 + 3 × 0.9333).
        (&[Some(1), Some(3)], [true, true, true, true, true, false], 1.0 / 3.8),
        // Locality 1 at 1/3 healthy × 1.4 = 0.4667: 1 / (1 + 3 × 0.4667).
        (&[Some(1), Some(3)], [true, true, true, true, false, false], 1.0 / (1.0 + 1.4)),
        // No weights: plain host-level choice over 3 + 3 healthy hosts.
        (&[None, None], [true; 6], 0.5),
        // Weight 0 / missing weight: locality never chosen.
        (&[Some(0), Some(1)], [true; 6], 0.0),
        (&[None, Some(1)], [true; 6], 0.0),
        // All locality weights 0: fall back to the level's hosts.
        (&[Some(0), Some(0)], [true; 6], 0.5),
    ];
    for (localities, health, want_l0) in cases {
        let locs: Vec<LocalityInfo> = localities.iter().map(|&weight| LocalityInfo { weight }).collect();
        let hosts: Vec<HostInfo> = (0..6).map(|i| loc_host(i, (i / 3) as u32, health[i])).collect();
        for policy in fine_policies() {
            let b = Balancer::build(&cfg(policy.clone()), &hosts, &locs);
            let s = shares(&b, 6, 40_000, 17);
            let l0: f64 = s[..3].iter().sum();
            assert!(
                (l0 - want_l0).abs() < 0.02,
                "{policy:?} {localities:?} {health:?}: locality 0 share {l0:.4}, want {want_l0:.4}"
            );
            for (i, &ok) in health.iter().enumerate() {
                assert!(ok || s[i] == 0.0, "{policy:?}: unhealthy host {i} picked");
            }
        }
    }
}

#[test]
fn pathological_inputs_do_not_panic() {
    let mut rng = SmallRng::seed_from_u64(0xbad);
    let weights = [0, 1, 2, 7, u32::MAX, u32::MAX - 1];
    let priorities = [0, 0, 1, 2, u32::MAX];
    let thresholds = [0.0, 50.0, 100.0, 150.0, -1.0, f64::NAN, f64::INFINITY];
    let factors = [0, 1, 100, 140, u32::MAX];
    for round in 0..600 {
        let n = rng.gen_range(0..25);
        let n_loc = rng.gen_range(0..4);
        let localities: Vec<LocalityInfo> = (0..n_loc)
            .map(|_| LocalityInfo {
                weight: match rng.gen_range(0..4) {
                    0 => None,
                    1 => Some(0),
                    2 => Some(u32::MAX),
                    _ => Some(rng.gen_range(1..10)),
                },
            })
            .collect();
        let hosts: Vec<HostInfo> = (0..n)
            .map(|i| HostInfo {
                weight: weights[rng.gen_range(0..weights.len())],
                priority: priorities[rng.gen_range(0..priorities.len())],
                locality: rng.gen_range(0..5),
                healthy: rng.gen_bool(0.5),
                // Duplicate keys are allowed input too.
                key: if rng.gen_bool(0.1) { "dup".into() } else { format!("h{i}") },
            })
            .collect();
        let policy = match rng.gen_range(0..5) {
            0 => Policy::RoundRobin,
            1 => Policy::LeastRequest { choice_count: [0, 1, 2, u32::MAX][rng.gen_range(0..4)] },
            2 => Policy::Random,
            3 => Policy::RingHash {
                min_ring_size: [0, 1, 1024, 4096][rng.gen_range(0..4)],
                max_ring_size: [0, 1, 3, 2048][rng.gen_range(0..4)],
            },
            _ => Policy::Maglev { table_size: [0, 1, 2, 4, 100, 65537][rng.gen_range(0..6)] },
        };
        let c = BalancerConfig {
            policy: policy.clone(),
            panic_threshold_percent: thresholds[rng.gen_range(0..thresholds.len())],
            overprovisioning_factor: factors[rng.gen_range(0..factors.len())],
        };
        let b = Balancer::build(&c, &hosts, &localities);
        let load_sum: u32 = b.priority_load().iter().sum();
        assert!(load_sum == 0 || load_sum == 100, "round {round}: {:?}", b.priority_load());
        let pickable = !hosts.is_empty() && (b.in_panic() || hosts.iter().any(|h| h.healthy));
        assert_eq!(load_sum == 100, pickable, "round {round}");
        let active = |i: usize| if i % 2 == 0 { u32::MAX } else { i as u32 };
        for _ in 0..40 {
            let hash = if rng.gen_bool(0.5) { Some(rng.next_u64()) } else { None };
            let exclude: Vec<usize> = (0..rng.gen_range(0..4)).map(|_| rng.gen_range(0..30)).collect();
            let got = b.pick(hash, &active, &exclude, &mut rng);
            assert_eq!(got.is_some(), pickable, "round {round} {policy:?}");
            if let Some(i) = got {
                assert!(i < hosts.len());
                assert!(b.in_panic() || hosts[i].healthy, "round {round}: unhealthy pick");
            }
        }
    }
}

#[test]
fn huge_sizes_are_clamped() {
    let hosts = vec![host(0, u32::MAX, 0, true), host(1, 1, 0, true)];
    for policy in [
        // Clamping of an absurd min_ring_size is unit-tested in ring.rs: an
        // 8M-point ring takes ~15s to build in a debug test binary.
        Policy::RingHash { min_ring_size: 1 << 16, max_ring_size: u64::MAX },
        Policy::Maglev { table_size: u64::MAX },
    ] {
        let b = Balancer::build(&cfg(policy.clone()), &hosts, &[]);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seen: HashMap<usize, usize> = HashMap::new();
        for _ in 0..1000 {
            *seen.entry(b.pick(None, &idle, &[], &mut rng).unwrap()).or_default() += 1;
        }
        // The light host keeps at least one point but is essentially never hit.
        assert!(seen.get(&0).copied().unwrap_or(0) >= 999, "{policy:?} {seen:?}");
        assert_eq!(b.pick(None, &idle, &[0], &mut rng), Some(1), "{policy:?}");
    }
}

#[test]
fn hash_bytes_is_xxhash64_seed0() {
    assert_eq!(hash_bytes(b""), 0xEF46_DB37_51D8_E999);
    assert_eq!(hash_bytes(b"abc"), 0x44BC_2CF5_AD77_0999);
    assert_eq!(hash_bytes(b"10.0.0.1:80"), 0x011F_ACBA_8043_B217);
}

#[test]
fn retries_follow_weights() {
    // Host 0 is excluded; the retry should split 1:3 between hosts 1 and 2,
    // not 50/50 as an unweighted fallback would.
    let hosts = vec![host(0, 1, 0, true), host(1, 1, 0, true), host(2, 3, 0, true)];
    for policy in fine_policies() {
        let b = Balancer::build(&cfg(policy.clone()), &hosts, &[]);
        let mut rng = SmallRng::seed_from_u64(23);
        let mut counts = [0usize; 3];
        let n = 40_000;
        for _ in 0..n {
            let h = Some(rng.next_u64());
            counts[b.pick(h, &idle, &[0], &mut rng).unwrap()] += 1;
        }
        let got: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
        assert_shares(&got, &[0.0, 0.25, 0.75], 0.02, &format!("{policy:?} retry"));
    }
}

#[test]
fn ring_retry_goes_where_the_key_would_go_without_the_host() {
    let hosts: Vec<HostInfo> = (0..10).map(|i| host(i, 1, 0, true)).collect();
    let b = Balancer::build(&cfg(Policy::ring_hash()), &hosts, &[]);
    let mut rng = SmallRng::seed_from_u64(0);
    for removed in [0usize, 3, 9] {
        let mut fewer = hosts.clone();
        fewer.remove(removed);
        let without = Balancer::build(&cfg(Policy::ring_hash()), &fewer, &[]);
        for k in 0..2000u64 {
            let h = Some(hash_bytes(&k.to_le_bytes()));
            let retry = b.pick(h, &idle, &[removed], &mut rng).unwrap();
            let moved = without.pick(h, &idle, &[], &mut rng).unwrap();
            assert_eq!(hosts[retry].key, fewer[moved].key, "key {k}");
        }
    }
}
