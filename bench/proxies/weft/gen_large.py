#!/usr/bin/env python3
"""Large-mesh config for weft (contract: see the harness's proxies/envoy/gen_large.py).

gen_large.py N LISTEN_PORT ADMIN_PORT WORKDIR -> writes WORKDIR/weft-large.yaml, prints its path.
N static clusters × 2 loopback endpoints (not listening, no health checks) and one virtual host
per cluster (svc-<i>.mesh.local → svc-<i>). Written as flow-style YAML, one resource per line.
"""
import os
import sys

ENDPOINT_BASE = int(os.environ.get("LARGE_ENDPOINT_BASE", "20000"))


def main():
    n, listen_port, admin_port, workdir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    lines = [
        f'admin: {{ address: "127.0.0.1:{admin_port}" }}',
        "access_log: off",
        "listeners:",
        f'  - {{ name: large, address: "127.0.0.1:{listen_port}", http: {{ codec: http1, route_config: large }} }}',
        "route_configs:",
        "  - name: large",
        "    virtual_hosts:",
    ]
    for i in range(n):
        lines.append(f'      - {{ name: svc-{i}, domains: ["svc-{i}.mesh.local"], '
                     f'routes: [{{ match: {{ prefix: / }}, route: {{ cluster: svc-{i} }} }}] }}')
    lines.append("clusters:")
    for i in range(n):
        p1 = ENDPOINT_BASE + (2 * i) % 40000
        p2 = ENDPOINT_BASE + (2 * i + 1) % 40000
        lines.append(f'  - {{ name: svc-{i}, connect_timeout: 1s, endpoints: ["127.0.0.1:{p1}", "127.0.0.1:{p2}"] }}')
    path = os.path.join(workdir, "weft-large.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(path)


if __name__ == "__main__":
    main()
