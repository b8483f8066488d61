#!/usr/bin/env python3
"""HTTP-proxy mode against bind mode: what one weft hop costs when the application reaches it as
its HTTP proxy (`http_proxy=http://127.0.0.1:PORT`, absolute-form requests routed by authority)
rather than by calling a bound listener. Everything on 127.0.0.1.

    direct        oha ──────────────────────────────────────────────► nginx :BASE+80
    bind          oha http://127.0.0.1:BASE+1/ ─► weft (bind listener) ─► nginx
    httpproxy     oha -x http://127.0.0.1:BASE+2 http://localhost/ ─► weft (HTTP-proxy listener,
                  the mesh virtual host `localhost:80`, cluster `reviews`) ─► nginx
    passthrough   oha -x http://127.0.0.1:BASE+2 http://localhost:BASE+80/ ─► weft (catch-all,
                  dynamic forward proxy: the name resolved through the system resolver, cached)
                  ─► nginx

One weft proxy serves both listeners (`--concurrency 1`, access log off, metrics on, HTTP/1.1
keep-alive pool upstream). Layout as the shared harness's `split`: oha on CPU 0, nginx and weft
on CPU 1. Each mode: 1 s warm-up, then `oha -q RATE -c 10 -z DURATION` (keep-alive); modes are
interleaved and their order rotates per repetition. (The mesh name is `localhost` because oha
resolves the target name itself even when it sends the request to a proxy.) Reported: p50/p90/p99 latency, added latency
over direct (median of per-repetition differences), and weft's CPU time per 1000 requests.

    bench/http-proxy/run.py [--reps 3] [--duration 15] [--rate 1000] [--run-id ID] [--quick]

Needs oha, nginx, taskset, curl; WEFT_BIN (default: target/release/weft); BENCH_PORT_BASE
(default 19100). Results: bench/results/raw/<run-id>/*.json and bench/results/<run-id>.md.
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
LG_CPU, SUT_CPU = "0", "1"
BODY = "x" * 100
MODES = ["direct", "bind", "httpproxy", "passthrough"]

NGINX = """worker_processes 1;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/nginx.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    client_body_temp_path {work}/nginx_body;
    proxy_temp_path {work}/nginx_proxy;
    server {{
        listen 127.0.0.1:{backend} backlog=4096;
        location / {{ return 200 "{body}"; }}
    }}
}}
"""

WEFT = """admin: {{ address: "127.0.0.1:{admin}" }}
access_log: off
listeners:
  - name: bind
    address: "127.0.0.1:{bind}"
    http:
      virtual_hosts: [{{ name: reviews, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: reviews }} }}] }}]
  - name: http_proxy
    address: "127.0.0.1:{proxy}"
    http:
      connect: true
      virtual_hosts:
        - name: reviews
          domains: [localhost, "localhost:80"]
          routes:
            - {{ match: {{ prefix: / }}, route: {{ cluster: reviews }} }}
            - {{ match: {{ connect: true }}, route: {{ cluster: reviews }} }}
        - name: allow_any
          domains: ["*"]
          routes:
            - {{ match: {{ prefix: / }}, route: {{ cluster: passthrough }} }}
            - {{ match: {{ connect: true }}, route: {{ cluster: passthrough }} }}
clusters:
  - {{ name: reviews, endpoints: ["127.0.0.1:{backend}"] }}
  - {{ name: passthrough, type: dynamic_forward_proxy }}
"""


def ports(base):
    return {"admin": base, "bind": base + 1, "proxy": base + 2, "backend": base + 80}


def oha_args(mode, p, rate, duration, clients=10):
    args = ["oha", "--no-tui", "--output-format", "json", "-c", str(clients), "-z", duration]
    if rate:
        args += ["-q", str(rate)]
    url = {
        "direct": f"http://127.0.0.1:{p['backend']}/",
        "bind": f"http://127.0.0.1:{p['bind']}/",
        "httpproxy": "http://localhost/",
        "passthrough": f"http://localhost:{p['backend']}/",
    }[mode]
    if mode in ("httpproxy", "passthrough"):
        args += ["-x", f"http://127.0.0.1:{p['proxy']}"]
    return ["taskset", "-c", LG_CPU] + args + [url]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_port(port, timeout=10):
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def check_path(mode, p):
    """One request through the path must come back 200 with the backend's body."""
    cmd = ["curl", "-sS", "--max-time", "5", "--noproxy", ""]
    args = oha_args(mode, p, 0, "1s")
    url = args[-1]
    if "-x" in args:
        cmd += ["-x", args[args.index("-x") + 1]]
    out = subprocess.run(cmd + ["-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=10)
    body, _, code = out.stdout.rpartition("\n")
    if code != "200" or body != BODY:
        sys.exit(f"{mode}: the path does not work: {code} {out.stdout!r} {out.stderr!r}")


def run_oha(args, timeout):
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        sys.exit(f"oha failed: {out.stderr}")
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", default="15s")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--run-id", default=f"http-proxy-{datetime.date.today().isoformat()}")
    ap.add_argument("--quick", action="store_true", help="1 repetition of 3 s")
    a = ap.parse_args()
    if a.quick:
        a.reps, a.duration = 1, "3s"
    weft_bin = os.environ.get("WEFT_BIN", os.path.join(ROOT, "target", "release", "weft"))
    for tool in ("oha", "nginx", "taskset", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")
    if not os.access(weft_bin, os.X_OK):
        sys.exit(f"{weft_bin} not built (cargo build --release -p weft) or set WEFT_BIN")
    p = ports(int(os.environ.get("BENCH_PORT_BASE", "19100")))
    seconds = float(a.duration.rstrip("s"))
    raw_dir = os.path.join(ROOT, "bench", "results", "raw", a.run_id)
    os.makedirs(raw_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="weft-http-proxy-bench-")
    procs = []
    results = {m: [] for m in MODES}
    try:
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(NGINX.format(work=work, backend=p["backend"], body=BODY))
        with open(os.path.join(work, "weft.yaml"), "w") as f:
            f.write(WEFT.format(**p))
        nginx_log = open(os.path.join(work, "nginx.out"), "w")
        procs.append(subprocess.Popen(
            ["taskset", "-c", SUT_CPU, "nginx", "-c", os.path.join(work, "nginx.conf"), "-e",
             os.path.join(work, "nginx.early.log")], stdout=nginx_log, stderr=nginx_log))
        wait_port(p["backend"])
        weft_log = open(os.path.join(work, "weft.log"), "w")
        weft = subprocess.Popen(
            ["taskset", "-c", SUT_CPU, weft_bin, "proxy", "-c", os.path.join(work, "weft.yaml"), "--concurrency",
             "1", "--log-level", "warn"], stdout=weft_log, stderr=weft_log)
        procs.append(weft)
        wait_port(p["proxy"])
        for m in MODES:
            check_path(m, p)
        for rep in range(a.reps):
            order = MODES[rep % len(MODES):] + MODES[:rep % len(MODES)]
            for m in order:
                run_oha(oha_args(m, p, a.rate, "1s"), 40)
                before = cpu_ticks(weft.pid)
                d = run_oha(oha_args(m, p, a.rate, a.duration), seconds + 30)
                ticks = cpu_ticks(weft.pid) - before
                ok = d["statusCodeDistribution"].get("200", 0)
                errors = sum(d.get("errorDistribution", {}).values())
                other = sum(v for k, v in d["statusCodeDistribution"].items() if k != "200")
                if other or errors > 20:
                    sys.exit(f"{m}: {other} non-200 answers, {errors} errors: {d['errorDistribution']}")
                lat = d["latencyPercentiles"]
                r = {
                    "mode": m,
                    "rep": rep,
                    "ok": ok,
                    "p50_us": lat["p50"] * 1e6,
                    "p90_us": lat["p90"] * 1e6,
                    "p99_us": lat["p99"] * 1e6,
                    "weft_cpu_ms_per_1000": (ticks * 10.0) / (ok / 1000.0) if m != "direct" and ok else 0.0,
                }
                results[m].append(r)
                with open(os.path.join(raw_dir, f"{m}-r{rep}.json"), "w") as f:
                    json.dump({"result": r, "oha": d}, f)
                print(f"rep {rep} {m:12s} p50 {r['p50_us']:7.0f} µs  p99 {r['p99_us']:7.0f} µs  "
                      f"weft CPU {r['weft_cpu_ms_per_1000']:6.1f} ms/1000 req", flush=True)
    finally:
        for pr in procs:
            pr.terminate()
        for pr in procs:
            try:
                pr.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pr.kill()
        shutil.rmtree(work, ignore_errors=True)

    def med(m, key):
        vals = [r[key] for r in results[m]]
        return statistics.median(vals), min(vals), max(vals)

    def added(m, key):
        diffs = [r[key] - d[key] for r, d in zip(results[m], results["direct"])]
        return statistics.median(diffs), min(diffs), max(diffs)

    lines = [
        f"# HTTP-proxy mode vs bind mode, {a.run_id}",
        "",
        f"`bench/http-proxy/run.py --reps {a.reps} --duration {a.duration} --rate {a.rate}`: one weft hop on "
        "loopback, oha on CPU 0, nginx and weft on CPU 1, `oha -q {rate} -c 10` keep-alive. Median "
        "(min–max) over repetitions; added = median of per-repetition differences to direct.".format(rate=a.rate),
        "",
        "| path | p50 µs | p90 µs | p99 µs | added p50 µs | added p99 µs | weft CPU ms / 1000 req |",
        "|---|---|---|---|---|---|---|",
    ]
    fmt = lambda t: f"{t[0]:.0f} ({t[1]:.0f}–{t[2]:.0f})"
    for m in MODES:
        cpu = "–" if m == "direct" else f"{med(m, 'weft_cpu_ms_per_1000')[0]:.1f}"
        add50 = "–" if m == "direct" else fmt(added(m, "p50_us"))
        add99 = "–" if m == "direct" else fmt(added(m, "p99_us"))
        lines.append(f"| {m} | {fmt(med(m, 'p50_us'))} | {fmt(med(m, 'p90_us'))} | {fmt(med(m, 'p99_us'))} | "
                     f"{add50} | {add99} | {cpu} |")
    report = "\n".join(lines) + "\n"
    with open(os.path.join(ROOT, "bench", "results", f"{a.run_id}.md"), "w") as f:
        f.write(report)
    print(report)


if __name__ == "__main__":
    main()
