#!/usr/bin/env bash
# Mesh-DNS benchmark: dnsperf against `weft dns` and, in the same run, against dnsmasq answering
# the same names. Loopback only; every run is bounded (-l seconds).
#
#   bench/dns/run.sh [--duration SECONDS] [--names N] [--rate QPS] [--out FILE]
#   WEFT_BIN=path/to/weft bench/dns/run.sh ...   (skip the release build)
#
# Two kinds of names, each asked of both servers:
#   mesh    NAME.bench.svc.cluster.local: weft dns from its name table (the saved-table file,
#           as the control plane would send it), dnsmasq from a hosts file (--addn-hosts);
#   cached  hN.fwd.bench: forwarded to an upstream dnsmasq and answered from each server's cache
#           (warmed first; TTL one hour).
# Per server and kind: the highest qps (dnsperf, 100 outstanding queries, no rate limit) and the
# latency percentiles at a fixed rate (--rate, default 20000 qps, from dnsperf -v per-query
# latencies). Layout: dnsperf on CPU 0, the server under test on CPU 1 (taskset), weft dns with
# one thread like dnsmasq.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT="$(pwd)"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

DURATION=10
NAMES=200
RATE=20000
OUT=""
while (($#)); do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --names) NAMES="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 64 ;;
    esac
done

need() {
    command -v "$1" >/dev/null 2>&1 && return
    echo "installing $2 for $1"
    apt-get install -y -qq --no-install-recommends "$2" >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$2" >/dev/null; }
    command -v "$1" >/dev/null 2>&1 || { echo "bench/dns: $1 missing (Debian package $2)" >&2; exit 1; }
}
need dnsperf dnsperf
need dnsmasq dnsmasq-base
need taskset util-linux
need python3 python3

if [[ -z "${WEFT_BIN:-}" ]]; then
    cargo build --release -p weft >&2
fi
WEFT="${WEFT_BIN:-$ROOT/target/release/weft}"

WORK="$(mktemp -d /tmp/weft-dns-bench.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 - <<'PY'
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); p = u.getsockname()[1]
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        t.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        u.close(); t.close()
PY
}

# The names: a hosts file for dnsmasq, the same table for weft dns (nametable.pb, encoded here
# as protobuf: NameTable{table=1: map<string, NameInfo{ips=1, registry=2, shortname=3,
# namespace=4, alt_hosts=5}>}), and the dnsperf query files.
mkdir -p "$WORK/state"
python3 - "$WORK" "$NAMES" <<'PY'
import sys
work, n = sys.argv[1], int(sys.argv[2])
def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7f; v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v: return bytes(out)
def field(tag, payload):
    return varint(tag << 3 | 2) + varint(len(payload)) + payload
table = b""
with open(f"{work}/hosts", "w") as hosts, open(f"{work}/mesh.txt", "w") as mesh, open(f"{work}/cached.txt", "w") as cached:
    for i in range(n):
        host = f"svc{i}.bench.svc.cluster.local"
        ip = f"240.240.{i // 250}.{i % 250 + 1}"
        hosts.write(f"{ip} {host}\n")
        mesh.write(f"{host} A\n")
        cached.write(f"h{i}.fwd.bench A\n")
        info = field(1, ip.encode()) + field(2, b"Kubernetes") + field(3, f"svc{i}".encode()) + field(4, b"bench")
        for alt in (f"svc{i}.bench", f"svc{i}.bench.svc"):
            info += field(5, alt.encode())
        table += field(1, field(1, host.encode()) + field(2, info))
open(f"{work}/state/nametable.pb", "wb").write(table)
PY

UPSTREAM_PORT=$(free_port)
taskset -c 0 dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --listen-address=127.0.0.1 --bind-interfaces \
    --port="$UPSTREAM_PORT" --address=/fwd.bench/192.0.2.10 --local-ttl=3600 --pid-file= --user=root \
    2>"$WORK/upstream.log" &
PIDS+=($!)
DNSMASQ_PORT=$(free_port)
taskset -c 1 dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --listen-address=127.0.0.1 --bind-interfaces \
    --port="$DNSMASQ_PORT" --addn-hosts="$WORK/hosts" --server="127.0.0.1#$UPSTREAM_PORT" --cache-size=10000 \
    --local-ttl=30 --pid-file= --user=root 2>"$WORK/dnsmasq.log" &
PIDS+=($!)
WEFT_PORT=$(free_port)
taskset -c 1 "$WEFT" --log-level warn dns --listen "127.0.0.1:$WEFT_PORT" --admin 127.0.0.1:0 --threads 1 \
    --resolv-conf /dev/null --upstream "127.0.0.1:$UPSTREAM_PORT" --state-dir "$WORK/state" \
    --ready-file "$WORK/ready.json" 2>"$WORK/weft.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "$WORK/ready.json" ]] && break; sleep 0.1; done
[[ -s "$WORK/ready.json" ]] || { echo "weft dns did not start:"; cat "$WORK/weft.log"; exit 1; } >&2
sleep 0.3

# Warm both caches with every forwarded name (and check every answer is NOERROR).
for port in "$WEFT_PORT" "$DNSMASQ_PORT"; do
    for kind in mesh cached; do
        out=$(taskset -c 0 dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/$kind.txt" -n 2 2>&1)
        grep -q "NOERROR $((NAMES * 2)) (100.00%)" <<<"$out" || { echo "port $port $kind: not all NOERROR"; echo "$out"; exit 1; } >&2
    done
done

declare -A QPS P50 P99
# Interleaved (kind, then server), so that both servers of a kind see the same machine.
for kind in mesh cached; do
    for server in weft dnsmasq; do
        port=$WEFT_PORT; [[ $server == dnsmasq ]] && port=$DNSMASQ_PORT
        out=$(taskset -c 0 dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/$kind.txt" -l "$DURATION" -q 100 2>&1)
        QPS[$server.$kind]=$(awk '/Queries per second/ {printf "%.0f", $4}' <<<"$out")
        lost=$(awk '/Queries lost/ {print $3}' <<<"$out")
        taskset -c 0 dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/$kind.txt" -l "$DURATION" -Q "$RATE" -v 2>/dev/null \
            | awk '/^> NOERROR/ {print $5 * 1e6}' | sort -n >"$WORK/lat"
        count=$(wc -l <"$WORK/lat")
        P50[$server.$kind]=$(awk -v n="$count" 'NR == int(n * 0.50) + 1 {printf "%.0f", $1; exit}' "$WORK/lat")
        P99[$server.$kind]=$(awk -v n="$count" 'NR == int(n * 0.99) + 1 {printf "%.0f", $1; exit}' "$WORK/lat")
        echo "$server $kind: ${QPS[$server.$kind]} qps (lost $lost), at $RATE qps p50 ${P50[$server.$kind]} us p99 ${P99[$server.$kind]} us" >&2
    done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
{
    echo "| names | server | max qps | qps vs dnsmasq | p50 µs @ $RATE qps | p99 µs @ $RATE qps |"
    echo "|---|---|---|---|---|---|"
    for kind in mesh cached; do
        for server in weft dnsmasq; do
            label="weft dns"; [[ $server == dnsmasq ]] && label="dnsmasq $(dnsmasq --version | awk 'NR==1 {print $3}')"
            echo "| $kind | $label | ${QPS[$server.$kind]} | $(ratio "${QPS[$server.$kind]}" "${QPS[dnsmasq.$kind]}")× | ${P50[$server.$kind]} | ${P99[$server.$kind]} |"
        done
    done
} | tee "${OUT:-/dev/null}"
