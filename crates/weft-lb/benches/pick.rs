//! Per-request cost of `Balancer::pick` for each policy over 100 hosts.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use weft_lb::{Balancer, BalancerConfig, HostInfo, LocalityInfo, Policy};

const HOSTS: usize = 100;

fn hosts() -> Vec<HostInfo> {
    (0..HOSTS)
        .map(|i| HostInfo {
            // Mixed weights so the weighted code paths are measured, not the
            // equal-weight shortcuts.
            weight: 1 + (i % 4) as u32,
            priority: 0,
            locality: 0,
            healthy: true,
            key: format!("10.0.{}.{}:8080", i / 256, i % 256),
        })
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    let hosts = hosts();
    let localities = [LocalityInfo::default()];
    let active: Vec<u32> = (0..HOSTS as u32).map(|i| i % 7).collect();
    let active_fn = |i: usize| active[i];
    let policies = [
        ("round_robin", Policy::RoundRobin),
        ("least_request", Policy::least_request()),
        ("random", Policy::Random),
        ("ring_hash", Policy::ring_hash()),
        ("maglev", Policy::maglev()),
    ];
    let mut group = c.benchmark_group("pick_100_hosts");
    for (name, policy) in policies {
        let cfg = BalancerConfig { policy, ..BalancerConfig::default() };
        let balancer = Balancer::build(&cfg, &hosts, &localities);
        let mut rng = SmallRng::seed_from_u64(7);
        group.bench_function(name, |b| {
            b.iter(|| {
                let hash = rng.next_u64();
                black_box(balancer.pick(Some(black_box(hash)), &active_fn, &[], &mut rng))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
