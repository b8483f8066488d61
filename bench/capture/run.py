#!/usr/bin/env python3
"""Capture overhead: the sidecar path of the shared bench, in network namespaces, reached three ways.

    direct    oha ─────────────────────────────────────────────► nginx 10.78.0.2:8080
    bind      oha ─► A 127.0.0.1:18001 ─► B 10.78.0.2:18002 ─────► nginx 127.0.0.1:8080
    iptables  oha ─► 240.240.0.10:80 ─REDIRECT─► A :15001 ─► 10.78.0.2:8080 ─REDIRECT─► B :15006 ─► nginx
    nftables  the same with `weft capture install --mode nftables`
    httpproxy oha -x 127.0.0.1:15080 http://reviews.mesh/ ─► A (HTTP-proxy port, absolute-form
              requests routed by authority) ─► B 10.78.0.2:18002 ─► nginx (no rules; inbound as bind)

Host C (namespace: oha, sidecar A) and host S (namespace: sidecar B, nginx backend) are joined by
a veth pair; rules and routes only ever exist inside these namespaces, which are created fresh for
every repetition and deleted afterwards. Sidecars are `weft proxy --concurrency 1`, access log off,
HTTP/1.1 keep-alive upstream pools, as in the shared harness; in the capture modes they run as uid
1337 and `weft capture install` sets up the rules (outbound VIP range on C, inbound port 8080 on S).

Layout as the shared harness's `split`: oha on CPU 0, nginx and both sidecars on CPU 1.

Measurements (each after a 1 s warm-up with the same load, every run bounded by oha -z and a hard
timeout):
    fixed     oha -q RATE -c 10, keep-alive         latency p50/p90/p99
    connect   oha -q RATE/2 -c 10 --disable-keepalive   a new connection (and NAT lookup) per request
    sat       oha -c 64, keep-alive                 requests/s

    sudo bench/capture/run.py [--modes direct,bind,iptables,nftables,httpproxy] [--reps 3] [--duration 15]
         [--rate 1000] [--sat-duration 10] [--run-id ID] [--quick]

Needs root, oha, nginx, taskset, setpriv; WEFT_BIN (default: target/release/weft). Results:
bench/results/<run-id>.md and .summary.json; raw oha output in bench/results/raw/<run-id>/.
--report-only --run-id ID rewrites the report from the raw output.
"""
import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
VIP = "240.240.0.10"
C_ADDR, S_ADDR = "10.78.0.1", "10.78.0.2"
BACKEND_PORT = 8080
LG_CPU, SUT_CPU = "0", "1"
BODY = "x" * 100
PROXY_UID = "1337"


def log(msg):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def sh(argv, timeout=30, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Host:
    """A network namespace and the processes started in it."""

    def __init__(self, name):
        self.name = name
        self.procs = []
        sh(["ip", "netns", "add", name])
        self.run(["ip", "link", "set", "lo", "up"])

    def argv(self, argv, cpu=None, uid=None):
        pre = ["taskset", "-c", cpu] if cpu else []
        as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid else []
        return pre + ["ip", "netns", "exec", self.name] + as_uid + argv

    def run(self, argv, **kw):
        return sh(self.argv(argv), **kw)

    def spawn(self, argv, log_path, cpu=SUT_CPU, uid=None):
        f = open(log_path, "wb")
        p = subprocess.Popen(self.argv(argv, cpu, uid), stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        pids = sh(["ip", "netns", "pids", self.name], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(os.path.join("/etc/netns", self.name), ignore_errors=True)

    def hosts_file(self, text):
        """/etc/hosts for processes in this namespace (`ip netns exec` bind-mounts it)."""
        d = os.path.join("/etc/netns", self.name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts"), "w") as f:
            f.write(text)


def wait_http(host, url, what, timeout=15, proxy=None):
    deadline = time.time() + timeout
    via = ["-x", proxy] if proxy else []
    while time.time() < deadline:
        r = host.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2"] + via + [url], check=False)
        if r.stdout.strip() == "200":
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what}: {url} did not answer 200 within {timeout}s")


NGINX_CONF = """worker_processes 1;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/nginx.error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    server_tokens off;
    default_type text/plain;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    client_body_temp_path {work}/nginx_body;
    proxy_temp_path {work}/nginx_proxy;
    server {{
        listen 0.0.0.0:{port} backlog=4096;
        location / {{ return 200 "{body}"; }}
    }}
}}
"""

# Bind mode: A listens on loopback for the app, B on S's address for A.
BIND_A = """admin: {{ address: "127.0.0.1:15000" }}
access_log: off
listeners:
  - name: outbound
    address: "127.0.0.1:18001"
    http: {{ codec: http1, route_config: next_hop }}
route_configs:
  - name: next_hop
    virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: next_hop }} }}] }}]
clusters:
  - {{ name: next_hop, endpoints: ["{s}:18002"], protocol: http1 }}
"""
BIND_B = """admin: {{ address: "127.0.0.1:15000" }}
access_log: off
listeners:
  - name: inbound
    address: "{s}:18002"
    http:
      codec: http1
      virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: local_app }} }}] }}]
clusters:
  - {{ name: local_app, endpoints: ["127.0.0.1:{port}"], protocol: http1 }}
"""
# HTTP-proxy mode: the app sends absolute-form requests (HTTP_PROXY) to A's port 15080, which
# routes them by the authority; B is the bind-mode inbound sidecar.
PROXY_A = """admin: {{ address: "127.0.0.1:15000" }}
access_log: off
listeners:
  - name: http_proxy
    address: "127.0.0.1:15080"
    http: {{ codec: http1, route_config: next_hop }}
route_configs:
  - name: next_hop
    virtual_hosts: [{{ name: reviews, domains: ["{host}", "{host}:80"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: next_hop }} }}] }}]
clusters:
  - {{ name: next_hop, endpoints: ["{s}:18002"], protocol: http1 }}
"""
PROXY_HOST = "reviews.mesh"

# Capture mode: A's virtualOutbound picks the chain by original destination (VIP:80) and sends
# to the service's real address; B's virtualInbound takes what S's rules redirect.
CAPTURE_A = """admin: {{ address: "127.0.0.1:15000" }}
access_log: off
listeners:
  - name: virtualOutbound
    address: "0.0.0.0:15001"
    use_original_dst: true
    filter_chains:
      - name: svc
        match: {{ destination_ips: ["{vip}/32"], destination_port: 80 }}
        http: {{ codec: http1, route_config: next_hop }}
    default_chain: {{ tcp: {{ cluster: passthrough }} }}
route_configs:
  - name: next_hop
    virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: next_hop }} }}] }}]
clusters:
  - {{ name: next_hop, endpoints: ["{s}:{port}"], protocol: http1 }}
  - {{ name: passthrough, type: original_dst }}
"""
CAPTURE_B = """admin: {{ address: "127.0.0.1:15000" }}
access_log: off
listeners:
  - name: virtualInbound
    address: "0.0.0.0:15006"
    use_original_dst: true
    filter_chains:
      - name: app
        match: {{ destination_port: {port} }}
        http:
          codec: http1
          virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: local_app }} }}] }}]
    default_chain: {{ tcp: {{ cluster: passthrough }} }}
clusters:
  - {{ name: local_app, endpoints: ["127.0.0.1:{port}"], protocol: http1 }}
  - {{ name: passthrough, type: original_dst }}
"""


class Bench:
    def __init__(self, a):
        self.a = a
        self.weft = os.environ.get("WEFT_BIN") or os.path.join(ROOT, "target", "release", "weft")
        self.oha = os.environ.get("OHA_BIN") or shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
        self.nginx = os.environ.get("NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"
        self.raw = os.path.join(ROOT, "bench", "results", "raw", a.run_id)
        os.makedirs(self.raw, exist_ok=True)

    def check(self):
        if os.geteuid() != 0:
            sys.exit("run as root: the bench creates network namespaces and capture rules inside them")
        for tool in ["ip", "taskset", "setpriv", "curl"]:
            if not shutil.which(tool):
                sys.exit(f"{tool} not found")
        for path, what in [(self.weft, "weft (cargo build --release -p weft, or WEFT_BIN)"),
                           (self.oha, "oha (OHA_BIN)"), (self.nginx, "nginx (apt-get install -y nginx-light)")]:
            if not os.access(path, os.X_OK):
                sys.exit(f"{what} not found at {path}")

    def setup(self, mode, work):
        tag = f"{os.getpid()}"
        c, s = Host(f"wbench-c-{tag}"), Host(f"wbench-s-{tag}")
        try:
            sh(["ip", "link", "add", "veth0", "netns", c.name, "type", "veth", "peer", "name", "veth0",
                "netns", s.name])
            for h, addr in [(c, C_ADDR), (s, S_ADDR)]:
                h.run(["ip", "addr", "add", f"{addr}/24", "dev", "veth0"])
                h.run(["ip", "link", "set", "veth0", "up"])
            os.chmod(work, 0o777)
            conf = os.path.join(work, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(work=work, port=BACKEND_PORT, body=BODY))
            s.spawn([self.nginx, "-c", conf, "-e", os.path.join(work, "nginx.error.log")],
                    os.path.join(work, "nginx.log"))
            wait_http(s, f"http://127.0.0.1:{BACKEND_PORT}/", "nginx")
            if mode == "direct":
                return c, s, f"http://{S_ADDR}:{BACKEND_PORT}/"
            capture = mode in ("iptables", "nftables")
            a_tmpl, b_tmpl = {"bind": (BIND_A, BIND_B), "httpproxy": (PROXY_A, BIND_B)}.get(mode, (CAPTURE_A, CAPTURE_B))
            uid = PROXY_UID if capture else None
            for h, name, tmpl in [(s, "B", b_tmpl), (c, "A", a_tmpl)]:
                path = os.path.join(work, f"{name}.yaml")
                with open(path, "w") as f:
                    f.write(tmpl.format(s=S_ADDR, port=BACKEND_PORT, vip=VIP, host=PROXY_HOST))
                os.chmod(path, 0o644)
                h.spawn([self.weft, "proxy", "-c", path, "--concurrency", "1", "--log-level", "warn"],
                        os.path.join(work, f"{name}.log"), uid=uid)
                wait_http(h, "http://127.0.0.1:15000/ready", f"sidecar {name}")
            if capture:
                c.run([self.weft, "capture", "install", "--mode", mode])
                s.run([self.weft, "capture", "install", "--mode", mode, "--inbound-ports", str(BACKEND_PORT)])
                url = f"http://{VIP}/"
            elif mode == "httpproxy":
                # oha resolves the target even when it sends to a proxy; the address is not used.
                c.hosts_file(f"127.0.0.1 localhost\n{S_ADDR} {PROXY_HOST}\n")
                url = f"http://{PROXY_HOST}/"
            else:
                url = "http://127.0.0.1:18001/"
            wait_http(c, url, f"{mode} path", proxy=self.proxy(mode))
            return c, s, url
        except BaseException:
            c.close()
            s.close()
            raise

    @staticmethod
    def proxy(mode):
        return "http://127.0.0.1:15080" if mode == "httpproxy" else None

    def load(self, c, url, conns, duration, rate=None, keepalive=True, out=None, proxy=None):
        argv = [self.oha, "--no-tui", "--output-format", "json", "--worker-threads", "1",
                "-c", str(conns), "-z", f"{duration:g}s"]
        if proxy:
            argv += ["-x", proxy]
        if rate:
            argv += ["-q", str(rate)]
        if not keepalive:
            argv.append("--disable-keepalive")
        argv.append(url)
        r = subprocess.run(c.argv(argv, cpu=LG_CPU), capture_output=True, text=True,
                           timeout=duration + 30)  # every load run is bounded
        if r.returncode != 0:
            raise RuntimeError(f"oha failed: {r.stderr[-500:]}")
        if out:
            with open(out, "w") as f:
                f.write(r.stdout)
        d = json.loads(r.stdout)
        lp = d.get("latencyPercentiles") or {}
        codes = d.get("statusCodeDistribution") or {}
        ok = int(codes.get("200", 0))
        elapsed = d["summary"]["total"]
        errors = {k: v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k}
        return {"p50_us": lp["p50"] * 1e6, "p90_us": lp["p90"] * 1e6, "p99_us": lp["p99"] * 1e6,
                "ok": ok, "non200": sum(int(v) for k, v in codes.items() if k != "200"), "errors": errors,
                "rps": ok / elapsed if elapsed else 0.0}

    def measure(self, mode, rep):
        a = self.a
        work = tempfile.mkdtemp(prefix=f"wbench-{mode}-")
        c, s = None, None
        try:
            c, s, url = self.setup(mode, work)
            res = {"mode": mode, "rep": rep, "url": url}
            px = self.proxy(mode)
            runs = [("fixed", dict(conns=10, duration=a.duration, rate=a.rate, proxy=px)),
                    ("connect", dict(conns=10, duration=a.duration, rate=a.rate // 2, keepalive=False, proxy=px)),
                    ("sat", dict(conns=64, duration=a.sat_duration, proxy=px))]
            for name, kw in runs:
                self.load(c, url, **{**kw, "duration": 1})  # warm-up
                r = self.load(c, url, out=os.path.join(self.raw, f"{mode}-r{rep}-{name}.oha.json"), **kw)
                if r["non200"] or r["errors"]:
                    raise RuntimeError(f"{mode} {name}: {r['non200']} non-200, errors {r['errors']}")
                res[name] = r
                log(f"  {mode:9s} r{rep} {name:8s} rps={r['rps']:9.1f} p50={r['p50_us']:7.0f}us "
                    f"p99={r['p99_us']:7.0f}us")
            with open(os.path.join(self.raw, f"{mode}-r{rep}.json"), "w") as f:
                json.dump(res, f, indent=1)
            return res
        finally:
            for h in (c, s):
                if h:
                    h.close()
            shutil.rmtree(work, ignore_errors=True)

    def run(self):
        self.check()
        modes = self.a.modes.split(",")
        results = {m: [] for m in modes}
        for rep in range(1, self.a.reps + 1):
            order = modes[rep - 1:] + modes[:rep - 1]  # rotate so drifts hit every mode alike
            for mode in order:
                results[mode].append(self.measure(mode, rep))
        self.report(results)

    def report(self, results):
        a = self.a
        rows = {}
        for mode, reps in results.items():
            rows[mode] = {f"{run}_{k}": [r[run][k] for r in reps]
                          for run in ("fixed", "connect", "sat") for k in ("p50_us", "p99_us", "rps")}
        med = {m: {k: statistics.median(v) for k, v in row.items()} for m, row in rows.items()}
        ref = "bind" if "bind" in rows else None
        base = med.get("direct")
        weft_version = sh([self.weft, "--version"], check=False).stdout.strip() or "weft"
        reps = len(next(iter(results.values()))) if results else 0
        lines = [f"# Capture overhead, {a.run_id}", "",
                 f"`bench/capture/run.py --modes {','.join(rows)} --reps {reps} --duration {a.duration:g} "
                 f"--rate {a.rate} --sat-duration {a.sat_duration:g}`; {weft_version}, "
                 f"kernel {os.uname().release}; median (min–max) of {reps} interleaved repetitions; "
                 f"oha on CPU {LG_CPU}, nginx and both sidecars on CPU {SUT_CPU}.", "",
                 "| mode | p50 µs, keep-alive @%d rps | p99 µs | p50 µs, new connection per request @%d rps | p99 µs | saturation req/s |"
                 % (a.rate, a.rate // 2), "|---|---|---|---|---|---|"]

        def cell(mode, key):
            v, xs = med[mode][key], rows[mode][key]
            text = f"{v:,.0f} ({min(xs):,.0f}–{max(xs):,.0f})"
            if ref and mode not in (ref, "direct"):
                text += f" **{v / med[ref][key]:.2f}×**"
            return text

        for mode in rows:
            lines.append(f"| {mode} | {cell(mode, 'fixed_p50_us')} | {cell(mode, 'fixed_p99_us')} | "
                         f"{cell(mode, 'connect_p50_us')} | {cell(mode, 'connect_p99_us')} | "
                         f"{cell(mode, 'sat_rps')} |")
        if base:
            lines += ["", "Added by the two sidecars over `direct` (median p50, keep-alive / new connection):", ""]
            for mode in med:
                if mode != "direct":
                    lines.append(f"- {mode}: {med[mode]['fixed_p50_us'] - base['fixed_p50_us']:,.0f} µs / "
                                 f"{med[mode]['connect_p50_us'] - base['connect_p50_us']:,.0f} µs")
        lines += ["", "Bold: ratio of the medians to bind mode in the same run. Per-repetition figures: "
                  f"`{a.run_id}.summary.json`; oha's raw output stays in `bench/results/raw/{a.run_id}/` "
                  "(not committed).", ""]
        out = os.path.join(ROOT, "bench", "results", f"{a.run_id}.md")
        with open(out, "w") as f:
            f.write("\n".join(lines))
        with open(os.path.join(ROOT, "bench", "results", f"{a.run_id}.summary.json"), "w") as f:
            json.dump({"run_id": a.run_id, "reps": reps, "medians": med, "per_rep": rows}, f, indent=1)
        print("\n".join(lines))
        log(f"report: {out}")

    def report_only(self):
        results = {}
        for name in sorted(os.listdir(self.raw)):
            if name.endswith(".json") and "-r" in name and not name.endswith(".oha.json"):
                with open(os.path.join(self.raw, name)) as f:
                    r = json.load(f)
                results.setdefault(r["mode"], []).append(r)
        order = [m for m in self.a.modes.split(",") if m in results]
        self.report({m: results[m] for m in order})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="direct,bind,iptables,nftables,httpproxy")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=15, help="seconds per fixed-rate run")
    p.add_argument("--sat-duration", type=float, default=10)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--run-id", default=f"capture-{datetime.date.today()}")
    p.add_argument("--quick", action="store_true", help="1 repetition of 3 s runs (smoke test)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report of --run-id from its raw data")
    a = p.parse_args()
    if a.quick:
        a.reps, a.duration, a.sat_duration = 1, 3, 3
    for m in a.modes.split(","):
        if m not in ("direct", "bind", "iptables", "nftables", "httpproxy"):
            p.error(f"unknown mode {m}")
    b = Bench(a)
    b.report_only() if a.report_only else b.run()


if __name__ == "__main__":
    main()
