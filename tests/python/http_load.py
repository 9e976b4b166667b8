#!/usr/bin/env python3
"""Sends a bounded number of requests to the Django test site and checks
every answer.

Waits (bounded) for GET /health/ to answer, then requests /note/0/ ..
/note/COUNT-1/ from several threads. Every response must be 200 with body
`ok note-N`. Only 127.0.0.1 is contacted, never through an HTTP proxy.
Prints a one-line summary; exit status 0 only when every request passed.
The summary also gives what the site reported about its SQL: `binding=` the
X-Db-Binding values seen, and `longest_param_sql_min=` the smallest
X-Db-Longest-Param-Sql, so the caller can tell every request sent a long
parameterised statement.

Usage: http_load.py --port PORT [--count N] [--threads N] [--deadline SECONDS]
"""

import argparse
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.request

# No proxy, whatever the environment says: the traffic stays on loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(port, path, timeout):
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace"), resp.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace"), e.headers


def wait_until_up(port, deadline):
    last = None
    while time.monotonic() < deadline:
        try:
            status, body, _ = get(port, "/health/", 5)
            if status == 200 and body == "up":
                return
            last = f"{status} {body!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.2)
    raise SystemExit(f"http: the site did not come up in time; last answer: {last}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--deadline", type=float, default=180.0)
    p.add_argument("--startup-timeout", type=float, default=60.0)
    args = p.parse_args()

    wait_until_up(args.port, time.monotonic() + args.startup_timeout)

    started = time.monotonic()
    deadline = started + args.deadline
    todo = queue.Queue()
    for n in range(args.count):
        todo.put(n)
    lock = threading.Lock()
    failures = []
    done = [0]
    bindings = set()
    longest_param_sql = []

    def worker():
        while time.monotonic() < deadline:
            try:
                n = todo.get_nowait()
            except queue.Empty:
                return
            try:
                status, body, headers = get(args.port, f"/note/{n}/", 30)
                problem = None
                if (status, body) != (200, f"ok note-{n}"):
                    problem = f"/note/{n}/: {status} {body[:500]!r}"
                binding = headers.get("X-Db-Binding", "unreported")
                longest = int(headers.get("X-Db-Longest-Param-Sql", "0"))
            except Exception as e:  # noqa: BLE001 - every failure is reported
                problem = f"/note/{n}/: {e!r}"
            with lock:
                done[0] += 1
                if problem:
                    failures.append(problem)
                else:
                    bindings.add(binding)
                    longest_param_sql.append(longest)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()) + 35)
    elapsed = time.monotonic() - started

    if done[0] != args.count:
        failures.append(f"only {done[0]} of {args.count} requests done within {args.deadline}s")
    if failures:
        print(f"http: FAILED {len(failures)} problem(s) in {elapsed:.1f}s", flush=True)
        for f in failures[:20]:
            print(f, flush=True)
        os._exit(1)
    print(
        f"http: ok requests={args.count} threads={args.threads} seconds={elapsed:.1f} "
        f"binding={','.join(sorted(bindings))} "
        f"longest_param_sql_min={min(longest_param_sql, default=0)}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
