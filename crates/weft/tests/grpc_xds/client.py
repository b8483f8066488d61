"""A proxyless gRPC client for the test: one channel to TARGET (e.g.
xds:///reviews.default.svc.cluster.local:9080; the xDS bootstrap comes from GRPC_XDS_BOOTSTRAP),
driven by commands on stdin, one JSON line on stdout per command.

    client.py --target TARGET [--lifetime SECONDS]

Commands:
    ready TIMEOUT                 one call that waits up to TIMEOUT s for the channel
        -> {"ready": true, "server": NAME} | {"ready": false, "error": CODE, "detail": TEXT}
    call TIMEOUT                  one call with a TIMEOUT s deadline (not waiting for the channel)
        -> {"server": NAME} | {"error": CODE, "detail": TEXT}
    calls N                       N calls, one after the other
        -> {"counts": {NAME: n}, "errors": {CODE: n}}
    until PREFIX RUN MAX TIMEOUT INTERVAL
                                  calls every INTERVAL s until RUN answers in a row came from
                                  servers whose name starts with PREFIX (at most MAX calls and
                                  TIMEOUT s)
        -> {"followed": bool, "switched_at": UNIX_TIME of the first call of that run,
            "calls": n, "counts": {...}, "errors": {...}}
    quit

Every call has a 5 s deadline; the process exits after --lifetime seconds whatever happens.
"""

import argparse
import json
import os
import sys
import threading
import time

import grpc

METHOD = "/weft.test.Identity/Who"
CALL_TIMEOUT = 5.0


def out(obj):
    print(json.dumps(obj), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--lifetime", type=float, default=300.0)
    args = parser.parse_args()

    # A watchdog, so that a stuck channel can never keep the process alive.
    watchdog = threading.Timer(args.lifetime, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()

    channel = grpc.insecure_channel(args.target)
    who = channel.unary_unary(METHOD)

    def call(timeout=CALL_TIMEOUT, wait=False):
        """(server name, None) or (None, status code name)."""
        try:
            return who(b"", timeout=timeout, wait_for_ready=wait).decode(), None
        except grpc.RpcError as e:
            return None, e.code().name

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, rest = words[0], words[1:]
        if cmd == "quit":
            break
        if cmd == "ready":
            try:
                name = who(b"", timeout=float(rest[0]), wait_for_ready=True).decode()
                out({"ready": True, "server": name})
            except grpc.RpcError as e:
                out({"ready": False, "error": e.code().name, "detail": e.details()})
        elif cmd == "call":
            try:
                out({"server": who(b"", timeout=float(rest[0])).decode()})
            except grpc.RpcError as e:
                out({"error": e.code().name, "detail": e.details()})
        elif cmd == "calls":
            counts, errors = {}, {}
            for _ in range(int(rest[0])):
                name, err = call()
                if name is not None:
                    counts[name] = counts.get(name, 0) + 1
                else:
                    errors[err] = errors.get(err, 0) + 1
            out({"counts": counts, "errors": errors})
        elif cmd == "until":
            prefix, run, max_calls = rest[0], int(rest[1]), int(rest[2])
            timeout, interval = float(rest[3]), float(rest[4])
            deadline = time.monotonic() + timeout
            counts, errors = {}, {}
            calls, streak, streak_start, followed = 0, 0, None, False
            while calls < max_calls and time.monotonic() < deadline:
                started = time.time()
                name, err = call()
                calls += 1
                if name is not None:
                    counts[name] = counts.get(name, 0) + 1
                else:
                    errors[err] = errors.get(err, 0) + 1
                if name is not None and name.startswith(prefix):
                    if streak == 0:
                        streak_start = started
                    streak += 1
                    if streak >= run:
                        followed = True
                        break
                else:
                    streak, streak_start = 0, None
                time.sleep(interval)
            out({"followed": followed, "switched_at": streak_start, "calls": calls, "counts": counts,
                 "errors": errors})
        else:
            out({"error": f"unknown command {cmd!r}"})
    channel.close()


if __name__ == "__main__":
    main()
