"""gRPC servers for the proxyless gRPC test: each answers /weft.test.Identity/Who with its own name.

    server.py --listen NAME=IP [--listen NAME=IP ...] [--lifetime SECONDS]

Each server listens on IP with an ephemeral port. One JSON line per server on stdout,
{"name": NAME, "address": "IP:PORT"}, then {"ready": true}. The process exits when stdin closes,
on SIGTERM, or after --lifetime seconds, whichever comes first.
"""

import argparse
import json
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "weft.test.Identity"


def serve(name, ip):
    def who(request, context):
        # Raw bytes in and out: no generated code, no protobuf schema.
        return name.encode()

    handler = grpc.method_handlers_generic_handler(SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(who)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port(f"{ip}:0")
    if port == 0:
        raise SystemExit(f"server {name}: cannot listen on {ip}")
    server.start()
    return server, f"{ip}:{port}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", action="append", required=True, metavar="NAME=IP")
    parser.add_argument("--lifetime", type=float, default=300.0)
    args = parser.parse_args()

    servers = []
    for spec in args.listen:
        name, sep, ip = spec.partition("=")
        if not sep or not name or not ip:
            raise SystemExit(f"--listen {spec!r}: want NAME=IP")
        server, address = serve(name, ip)
        servers.append(server)
        print(json.dumps({"name": name, "address": address}), flush=True)
    print(json.dumps({"ready": True}), flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(args.lifetime)
    for server in servers:
        server.stop(grace=1.0)


if __name__ == "__main__":
    main()
