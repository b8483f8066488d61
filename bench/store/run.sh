#!/usr/bin/env bash
# The store bench: apply latency on redb and etcd in one run, and apply-to-push across two
# control planes sharing one etcd, at the default debounce (100ms) and at 10ms. One JSON line
# per run goes to bench/results/store-DATE.jsonl.
#
#   bench/store/run.sh                 # about a minute per debounce setting
#   APPLIES=500 PUSHES=200 bench/store/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out="bench/results/store-$(date -u +%Y-%m-%d).jsonl"
mkdir -p bench/results
command -v etcd >/dev/null || { echo "etcd not found: run scripts/test.sh, which installs it" >&2; exit 1; }
cargo bench -p weft --bench store_ha --no-run >/dev/null 2>&1 || cargo bench -p weft --bench store_ha --no-run
for debounce in 100ms 10ms; do
    echo "== debounce $debounce" >&2
    timeout 900 cargo bench -q -p weft --bench store_ha -- \
        --applies "${APPLIES:-200}" --pushes "${PUSHES:-100}" --debounce "$debounce" | tee -a "$out"
done
echo "results appended to $out" >&2
