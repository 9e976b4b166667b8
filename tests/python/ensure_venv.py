#!/usr/bin/env python3
"""Creates or reuses a virtualenv of pinned Python packages.

Usage: python3 ensure_venv.py VENV_DIR [--requirements FILE] [--check CODE]
                                       [--tools NAME,...]

Installs FILE (default: requirements.txt next to this file, the Python
client tests' packages) into VENV_DIR with `python3 -m venv` and pip, unless
VENV_DIR already holds exactly that set and CODE runs there and every tool
in --tools is in its bin/. An exclusive lock on VENV_DIR.lock keeps
concurrent callers (parallel tests, .ci/run) from installing at the same
time; the later ones find the work done.
"""

import argparse
import fcntl
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STAMP_NAME = "pgwake-requirements.txt"
PIP_TIMEOUT = 1200
LOCK_TIMEOUT = 1500

ARGS = argparse.ArgumentParser(description="Creates or reuses a virtualenv of pinned packages.")
ARGS.add_argument("venv_dir")
ARGS.add_argument("--requirements", default=os.path.join(HERE, "requirements.txt"))
ARGS.add_argument(
    "--check",
    default="import psycopg, django, gunicorn, asyncpg, opentelemetry.sdk, "
    "opentelemetry.instrumentation.psycopg, opentelemetry.instrumentation.django, "
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)
ARGS.add_argument("--tools", default="", help="comma-separated programs the venv must have")
OPTS = None


def log(msg):
    print(f"ensure_venv: {msg}", file=sys.stderr, flush=True)


def is_ready(venv_dir, wanted):
    stamp = os.path.join(venv_dir, STAMP_NAME)
    try:
        with open(stamp, encoding="utf-8") as f:
            if f.read() != wanted:
                return False
    except OSError:
        return False
    return imports_work(venv_dir)


def imports_work(venv_dir):
    bindir = os.path.join(venv_dir, "bin")
    tools = [t for t in OPTS.tools.split(",") if t]
    if not all(os.access(os.path.join(bindir, t), os.X_OK) for t in tools):
        return False
    python = os.path.join(bindir, "python")
    try:
        done = subprocess.run(
            [python, "-c", OPTS.check],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def run(cmd, timeout):
    log("running " + " ".join(cmd))
    subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=timeout, check=True)


def lock(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise SystemExit(f"ensure_venv: {path} stayed locked for {LOCK_TIMEOUT}s")
            time.sleep(0.5)


def main():
    global OPTS
    OPTS = ARGS.parse_args()
    venv_dir = os.path.abspath(OPTS.venv_dir)
    requirements = os.path.abspath(OPTS.requirements)
    with open(requirements, encoding="utf-8") as f:
        wanted = f.read()
    os.makedirs(os.path.dirname(venv_dir), exist_ok=True)

    fd = lock(venv_dir + ".lock")
    try:
        if is_ready(venv_dir, wanted):
            return
        python = os.path.join(venv_dir, "bin", "python")
        # A venv whose interpreter is gone or broken is rebuilt from scratch.
        fresh = ["--clear"] if os.path.exists(venv_dir) else []
        if fresh and os.path.exists(python):
            try:
                ok = subprocess.run(
                    [python, "-c", "pass"],
                    stdin=subprocess.DEVNULL,
                    timeout=60,
                    check=False,
                ).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                fresh = None
        if fresh is not None:
            run([sys.executable, "-m", "venv", *fresh, venv_dir], 300)
        run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "-r", requirements],
            PIP_TIMEOUT,
        )
        if not imports_work(venv_dir):
            raise SystemExit(
                f"ensure_venv: `{OPTS.check}` or the tools {OPTS.tools!r} fail in {venv_dir} after pip install"
            )
        stamp = os.path.join(venv_dir, STAMP_NAME)
        with open(stamp + ".tmp", "w", encoding="utf-8") as f:
            f.write(wanted)
        os.replace(stamp + ".tmp", stamp)
        log(f"{venv_dir} is ready")
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
