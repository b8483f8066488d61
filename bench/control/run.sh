#!/usr/bin/env bash
# The control-plane load matrix: `weft control` with N services x 10 endpoints and P simulated
# proxies (real delta-xDS clients on loopback), scoped by a Sidecar per namespace of 100 services
# or unscoped. One JSON line per case goes to bench/results/control-DATE.jsonl.
#
#   bench/control/run.sh            # the full matrix (about 20-40 minutes on 2 cores)
#   CASES="1000:1000:scoped" bench/control/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CASES="${CASES:-1000:1000:scoped 5000:1000:scoped 10000:1000:scoped 10000:10000:scoped 1000:1000:unscoped 10000:1000:unscoped}"
out="bench/results/control-$(date -u +%Y-%m-%d).jsonl"
mkdir -p bench/results
cargo bench -p weft --bench control_load --no-run >/dev/null 2>&1 || cargo bench -p weft --bench control_load --no-run
for case in $CASES; do
    IFS=: read -r services proxies scope <<<"$case"
    flags=(--services "$services" --proxies "$proxies" --endpoints 10 --per-namespace 100)
    [[ "$scope" == "unscoped" ]] && flags+=(--unscoped)
    echo "== $services services, $proxies proxies, $scope" >&2
    timeout 1800 cargo bench -q -p weft --bench control_load -- "${flags[@]}" | tee -a "$out"
done
echo "results appended to $out" >&2
