#!/usr/bin/env python3
"""Agent figures: how fast a host's service becomes routable after `weft agent` starts, and how
fast every proxy stops routing to it after the host dies (agent SIGKILLed: no deregistration,
only the lease runs out). Loopback only; every wait is bounded.

    bench/agent/run.py [--reps 5] [--lease 10s] [--heartbeat 2s] [--observers 3]
                       [--weft target/release/weft] [--out FILE]

Processes: `weft control` (default debounce 100 ms, lease sweep 1 s), a `weft demo-backend`
standing for the host's application on 127.0.70.2, and N observer sidecars (bind mode,
127.0.71.N:9080) standing for other hosts' proxies. Each repetition:

  1. start `weft agent` (bind-mode proxy on 127.0.70.1, an HTTP health check every second);
     from the moment the process is started, poll every 5 ms until
       - the control plane lists the instance           ("registered"),
       - a request through the first observer answers 200 ("routable, other host"),
       - a request through the host's own sidecar answers 200 ("routable, own sidecar");
  2. wait until every observer routes to it, then SIGKILL the agent (its proxy goes with it)
     at a random point of the heartbeat period, and poll every observer every 5 ms until it no
     longer answers 200; the figure is the slowest observer. The goal is lease TTL + 1 s.
"""

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "reviews.bench.svc.cluster.local"
AGENT_BIND = "127.0.70.1"
AGENT_HOST = "127.0.70.2"


def die(msg):
    print(f"bench/agent: {msg}", file=sys.stderr)
    sys.exit(1)


def seconds(text):
    text = text.strip()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    if text.endswith("s"):
        return float(text[:-1])
    die(f"bad duration {text!r} (e.g. 10s, 500ms)")


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def wait_file(path, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            time.sleep(0.01)
    die(f"{what}: no ready file {path} within {timeout}s")


def http(url, host=None, method="GET", body=None, timeout=2.0):
    req = urllib.request.Request(url, method=method, data=body)
    if host:
        req.add_header("Host", host)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError):
        return None, b""


def routable(bind):
    status, _ = http(f"http://{bind}:9080/", host=HOST, timeout=1.0)
    return status == 200


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, log):
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--lease", default="10s")
    ap.add_argument("--heartbeat", default="2s")
    ap.add_argument("--observers", type=int, default=3)
    ap.add_argument("--weft", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    lease, heartbeat = seconds(a.lease), seconds(a.heartbeat)
    weft = a.weft
    if weft is None:
        subprocess.run(["cargo", "build", "--release", "-p", "weft"], cwd=ROOT, check=True, stdout=sys.stderr)
        weft = os.path.join(ROOT, "target/release/weft")
    work = tempfile.mkdtemp(prefix="weft-agent-bench.")
    log = open(os.path.join(work, "processes.log"), "w")
    procs = Procs()
    try:
        run(a, weft, work, log, procs, lease, heartbeat)
    finally:
        procs.stop_all()
        log.close()
        print(f"(logs in {work})", file=sys.stderr)


def run(a, weft, work, log, procs, lease, heartbeat):
    procs.start([weft, "control", "--data-dir", f"{work}/cp", "--xds-listen", "127.0.0.1:0",
                 "--api-listen", "127.0.0.1:0", "--ready-file", f"{work}/cp.json"], log)
    cp = wait_file(f"{work}/cp.json", 30, "weft control")
    api, xds = cp["listeners"]["api"], cp["listeners"]["xds"]

    docs = [f"""apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: host, namespace: bench }}
spec:
  workloadSelector: {{ labels: {{ app: reviews }} }}
  egress: [{{ port: {{ number: 9080, protocol: HTTP, name: http }}, bind: {AGENT_BIND}, captureMode: NONE, hosts: ["./*"] }}]
"""]
    for i in range(1, a.observers + 1):
        docs.append(f"""apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: obs-{i}, namespace: bench }}
spec:
  workloadSelector: {{ labels: {{ role: obs-{i} }} }}
  egress: [{{ port: {{ number: 9080, protocol: HTTP, name: http }}, bind: 127.0.71.{i}, captureMode: NONE, hosts: ["./*"] }}]
""")
    body = json.dumps({"file": "bench.yaml", "yaml": "---\n".join(docs)}).encode()
    status, answer = http(f"http://{api}/v1/apply", method="POST", body=body, timeout=10)
    if status != 200:
        die(f"apply: {status} {answer[:300]!r}")

    backend_port = free_port(AGENT_HOST)
    procs.start([weft, "demo-backend", "--listen", f"{AGENT_HOST}:{backend_port}", "--name", "reviews-vm"], log)

    observers = []
    for i in range(1, a.observers + 1):
        boot = f"{work}/obs-{i}.yaml"
        with open(boot, "w") as f:
            f.write('admin: { address: "127.0.0.1:0" }\n')
        procs.start([weft, "proxy", "-c", boot, "--xds", xds, "--node-id",
                     f"sidecar~127.0.71.{i}~obs-{i}.bench~bench.svc.cluster.local", "--labels", f"role=obs-{i}",
                     "--concurrency", "1", "--ready-file", f"{work}/obs-{i}.json"], log)
        observers.append(f"127.0.71.{i}")
    for i in range(1, a.observers + 1):
        wait_file(f"{work}/obs-{i}.json", 30, f"observer {i}")

    agent_file = f"{work}/agent.yaml"
    with open(agent_file, "w") as f:
        f.write(f"""control: {{ api: "{api}", xds: "{xds}" }}
host: {{ address: {AGENT_HOST}, name: vm-1, namespace: bench }}
services:
  - name: reviews
    ports: [{{ name: http, number: 9080, protocol: HTTP, targetPort: {backend_port} }}]
    labels: {{ app: reviews }}
    healthCheck: {{ http: {{ port: {backend_port}, path: /health }}, interval: 1s }}
leaseTtl: {a.lease}
heartbeat: {a.heartbeat}
proxy: {{ mode: bind, admin: "127.0.0.1:0", concurrency: 1 }}
status: {{ listen: "127.0.0.1:0" }}
stateDir: "{work}/agent-state"
""")

    def listed():
        status, answer = http(f"http://{api}/v1/instances", timeout=2)
        return status == 200 and len(json.loads(answer).get("items", [])) > 0

    rows = []
    for rep in range(1, a.reps + 1):
        if any(routable(o) for o in observers) or listed():
            die("the service is still routable before the agent starts")
        t0 = time.monotonic()
        agent = procs.start([weft, "agent", "-c", agent_file, "--ready-file", f"{work}/agent-{rep}.json"], log)
        marks = {}
        deadline = t0 + 60
        while len(marks) < 3 and time.monotonic() < deadline:
            now = time.monotonic() - t0
            if "registered" not in marks and listed():
                marks["registered"] = now
            if "other" not in marks and routable(observers[0]):
                marks["other"] = now
            if "own" not in marks and routable(AGENT_BIND):
                marks["own"] = now
            time.sleep(0.005)
        if len(marks) < 3:
            die(f"rep {rep}: not routable within 60s: {marks}")
        deadline = time.monotonic() + 30
        while not all(routable(o) for o in observers):
            if time.monotonic() > deadline:
                die(f"rep {rep}: not every observer routes to the service")
            time.sleep(0.01)
        time.sleep(heartbeat + random.uniform(0, heartbeat))
        t1 = time.monotonic()
        agent.send_signal(signal.SIGKILL)
        gone = {}
        deadline = t1 + lease + 30
        while len(gone) < len(observers) and time.monotonic() < deadline:
            for o in observers:
                if o not in gone and not routable(o):
                    gone[o] = time.monotonic() - t1
            time.sleep(0.005)
        agent.wait(timeout=10)
        if len(gone) < len(observers):
            die(f"rep {rep}: still routable {lease + 30}s after the host died: {gone}")
        # The agent's proxy gets SIGTERM when its agent dies; give it a moment to release 127.0.70.1.
        deadline = time.monotonic() + 10
        while routable(AGENT_BIND) and time.monotonic() < deadline:
            time.sleep(0.05)
        row = (rep, marks["registered"], marks["other"], marks["own"], max(gone.values()), min(gone.values()))
        rows.append(row)
        print("rep %d: registered %.3fs, routable via another host %.3fs, via own sidecar %.3fs; "
              "host death removed from every proxy after %.3fs (first %.3fs)" % row, file=sys.stderr)

    def col(i):
        return [r[i] for r in rows]

    lines = [
        f"lease {a.lease}, heartbeat {a.heartbeat}, {a.observers} observer proxies, {a.reps} repetitions",
        "",
        "| figure | median s | max s | goal |",
        "|---|---|---|---|",
        "| agent start → instance registered | %.3f | %.3f | |" % (statistics.median(col(1)), max(col(1))),
        "| agent start → first 200 through another host's sidecar | %.3f | %.3f | < 2 s |" % (statistics.median(col(2)), max(col(2))),
        "| agent start → first 200 through the host's own sidecar | %.3f | %.3f | |" % (statistics.median(col(3)), max(col(3))),
        "| host death (agent SIGKILL) → removed from every proxy | %.3f | %.3f | ≤ lease + 1 s = %.1f s |" % (statistics.median(col(4)), max(col(4)), lease + 1),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
