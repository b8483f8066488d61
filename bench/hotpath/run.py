#!/usr/bin/env python3
"""What one weft hop costs per proxied request, measured in counts that a busy machine does not
blur: instructions per request (callgrind) and CPU time per request at a fixed rate.

    oha ──h1 or h2c──► weft (one hop: the shared harness's outbound sidecar config) ──h1──► nginx

Modes (`--mode`, comma-separated):
  callgrind  weft runs under `valgrind --tool=callgrind` with instrumentation off; after a
             warm-up, instrumentation is switched on, the counters are zeroed, and exactly
             `--requests` requests (oha -n, closed loop, 10 connections) are counted, then dumped. Reports instructions per request (all of weft's threads,
             user space only) and the functions with the most inclusive instructions.
  cpu        weft runs natively; `oha -q RATE -n COUNT` (10 connections); weft's utime+stime
             over the run divided by the requests (10 ms tick resolution: use ≥ 20,000 requests).
             Repeated `--reps` times; reports each and the median.

Layout as the shared harness: oha on CPU 0, nginx and weft on CPU 1.

    bench/hotpath/run.py [--mode callgrind,cpu] [--proto h1,h2c] [--requests 2000]
                         [--cpu-requests 20000] [--rate 1000] [--reps 3] [--out FILE.json]

Needs oha, nginx, taskset, curl, valgrind (callgrind mode). WEFT_BIN (default:
target/release/weft), BENCH_PORT_BASE (default 19300), WEFT_CMD (the proxy's command line,
default `{weft} proxy -c {config} --concurrency 1 --log-level warn`).
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
LG_CPU, SUT_CPU = "0", "1"
BODY = "x" * 100

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


def ports(base):
    return {"admin": base, "h1": base + 1, "h2c": base + 2, "backend": base + 80}


def weft_config(p):
    with open(os.path.join(ROOT, "bench", "proxies", "weft", "outbound.yaml.tmpl")) as f:
        t = f.read()
    values = {
        "ADMIN_PORT": p["admin"], "LISTEN_PORT": p["h1"], "LISTEN_PORT_H2": p["h2c"],
        "UPSTREAM_HOST": "127.0.0.1", "UPSTREAM_PORT": p["backend"],
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]), t)


def oha(p, proto, extra, timeout):
    args = ["taskset", "-c", LG_CPU, "oha", "--no-tui", "--output-format", "json", "-c", "10"] + extra
    if proto == "h2c":
        args += ["--http2", "-p", "1", f"http://127.0.0.1:{p['h2c']}/"]
    else:
        args += [f"http://127.0.0.1:{p['h1']}/"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        sys.exit(f"oha failed: {out.stderr}")
    d = json.loads(out.stdout)
    ok = d["statusCodeDistribution"].get("200", 0)
    bad = sum(v for k, v in d["statusCodeDistribution"].items() if k != "200")
    errors = sum(d.get("errorDistribution", {}).values())
    if bad or errors:
        sys.exit(f"{proto}: {bad} non-200 answers, {errors} errors: {d.get('errorDistribution')}")
    return ok


def cpu_ticks(pid):
    """(user, system) clock ticks of the process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def wait_port(port, timeout=60):
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def check(p, proto):
    url = f"http://127.0.0.1:{p['h2c'] if proto == 'h2c' else p['h1']}/"
    cmd = ["curl", "-sS", "--max-time", "30", "--noproxy", "*"]
    if proto == "h2c":
        cmd.append("--http2-prior-knowledge")
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=40)
    if out.stdout != BODY:
        sys.exit(f"{proto}: the path does not work: {out.stdout!r} {out.stderr!r}")


class Weft:
    def __init__(self, weft_bin, work, p, callgrind):
        self.work, self.callgrind = work, callgrind
        cfg = os.path.join(work, "weft.yaml")
        with open(cfg, "w") as f:
            f.write(weft_config(p))
        template = os.environ.get("WEFT_CMD", "{weft} proxy -c {config} --concurrency 1 --log-level warn")
        cmd = [a.format(weft=weft_bin, config=cfg) for a in template.split()]
        if callgrind:
            self.out = os.path.join(work, "callgrind.out")
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self.out}",
                   "--dump-instr=no"] + cmd
        log = open(os.path.join(work, "weft.log"), "w")
        self.proc = subprocess.Popen(["taskset", "-c", SUT_CPU] + cmd, stdout=log, stderr=log,
                                     start_new_session=True)
        wait_port(p["h1"], 120)
        wait_port(p["h2c"], 120)

    def control(self, *args):
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], check=True, capture_output=True,
                       timeout=60)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def callgrind_run(weft_bin, work, p, proto, n, keep):
    w = Weft(weft_bin, work, p, callgrind=True)
    try:
        check(p, proto)
        oha(p, proto, ["-n", str(max(200, n // 10))], 600)
        w.control("-i", "on")
        oha(p, proto, ["-n", "50"], 600)
        w.control("-z")
        ok = oha(p, proto, ["-n", str(n)], 1800)
        w.control("-d")
    finally:
        w.stop()
    dumps = sorted(f for f in os.listdir(work) if f.startswith("callgrind.out"))
    total = 0
    top = []
    for d in dumps:
        path = os.path.join(work, d)
        ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                             capture_output=True, text=True, timeout=300).stdout
        m = re.search(r"^([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", ann, re.M)
        if m:
            total += int(m.group(1).replace(",", ""))
        for line in ann.splitlines():
            m = re.match(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$", line)
            if m and "PROGRAM TOTALS" not in line and float(m.group(2)) >= 1.0:
                top.append((int(m.group(1).replace(",", "")), m.group(3).strip()))
        if keep:
            shutil.copy(path, os.path.join(keep, f"callgrind.{proto}.{d}"))
        os.remove(path)
    top.sort(reverse=True)
    return {"requests": ok, "instructions": total, "per_request": total / max(ok, 1),
            "top_inclusive": [(round(c / max(ok, 1)), f) for c, f in top[:60]]}


def cpu_run(weft_bin, work, p, proto, n, rate, reps):
    w = Weft(weft_bin, work, p, callgrind=False)
    out, user, system = [], [], []
    try:
        check(p, proto)
        for _ in range(reps):
            oha(p, proto, ["-q", str(rate), "-n", str(rate)], 60)
            u0, s0 = cpu_ticks(w.proc.pid)
            ok = oha(p, proto, ["-q", str(rate), "-n", str(n)], n / rate + 60)
            u1, s1 = cpu_ticks(w.proc.pid)
            user.append((u1 - u0) * 10_000 / ok)
            system.append((s1 - s0) * 10_000 / ok)
            out.append(user[-1] + system[-1])
    finally:
        w.stop()
    return {"cpu_us_per_request": out, "median": statistics.median(out), "user_us": user, "system_us": system,
            "user_median": statistics.median(user), "system_median": statistics.median(system)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="callgrind,cpu")
    ap.add_argument("--proto", default="h1,h2c")
    ap.add_argument("--requests", type=int, default=2000, help="requests counted under callgrind")
    ap.add_argument("--cpu-requests", type=int, default=20000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--keep", help="copy callgrind's profiles into this directory (for callgrind_annotate)")
    a = ap.parse_args()
    weft_bin = os.environ.get("WEFT_BIN", os.path.join(ROOT, "target", "release", "weft"))
    modes = a.mode.split(",")
    for tool in ["oha", "nginx", "taskset", "curl"] + (["valgrind", "callgrind_control"] if "callgrind" in modes
                                                       else []):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")
    if not os.access(weft_bin, os.X_OK):
        sys.exit(f"{weft_bin} not built (cargo build --release -p weft) or set WEFT_BIN")
    p = ports(int(os.environ.get("BENCH_PORT_BASE", "19300")))
    work = tempfile.mkdtemp(prefix="weft-hotpath-")
    nginx = None
    results = {"weft": weft_bin, "load": os.getloadavg()}
    try:
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(NGINX.format(work=work, backend=p["backend"], body=BODY))
        log = open(os.path.join(work, "nginx.out"), "w")
        nginx = subprocess.Popen(["taskset", "-c", SUT_CPU, "nginx", "-c", os.path.join(work, "nginx.conf"), "-e",
                                  os.path.join(work, "nginx.early.log")], stdout=log, stderr=log,
                                 start_new_session=True)
        wait_port(p["backend"])
        for proto in a.proto.split(","):
            if "callgrind" in modes:
                r = callgrind_run(weft_bin, work, p, proto, a.requests, a.keep)
                results[f"callgrind_{proto}"] = r
                print(f"{proto}: {r['per_request']:,.0f} instructions per request ({r['requests']} requests)")
                for c, f in r["top_inclusive"][:40]:
                    print(f"    {c:>10,}  {f}")
            if "cpu" in modes:
                r = cpu_run(weft_bin, work, p, proto, a.cpu_requests, a.rate, a.reps)
                results[f"cpu_{proto}"] = r
                print(f"{proto}: CPU µs per request {r['median']:.1f} (user {r['user_median']:.1f}, system "
                      f"{r['system_median']:.1f}; runs: " + ", ".join(f"{x:.1f}" for x in r["cpu_us_per_request"]) + ")")
    finally:
        if nginx and nginx.poll() is None:
            os.killpg(nginx.pid, signal.SIGTERM)
            nginx.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
