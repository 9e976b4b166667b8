#!/usr/bin/env python3
"""Creates or reuses the virtualenv holding the deployment validators.

Usage: python3 ensure_venv.py VENV_DIR

Installs deploy/requirements.txt into VENV_DIR with `python3 -m venv` and
pip, unless VENV_DIR already holds exactly that set. An exclusive lock on
VENV_DIR.lock keeps concurrent callers (the tests in tests/deploy.rs run in
parallel, and .ci/run) from installing at the same time; the later ones find
the work done.
"""

import fcntl
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = os.path.join(os.path.dirname(HERE), "requirements.txt")
STAMP_NAME = "pgwake-deploy-requirements.txt"
# Each validator's entry point must run for the venv to count as ready.
TOOLS = ["kubernetes-validate", "hadolint", "yamllint", "checkov"]
CHECK = "import hcl2, yaml"
PIP_TIMEOUT = 1200
LOCK_TIMEOUT = 1500


def log(msg):
    print(f"ensure_venv: {msg}", file=sys.stderr, flush=True)


def works(venv_dir):
    bindir = os.path.join(venv_dir, "bin")
    if not all(os.access(os.path.join(bindir, t), os.X_OK) for t in TOOLS):
        return False
    try:
        done = subprocess.run(
            [os.path.join(bindir, "python"), "-c", CHECK],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def is_ready(venv_dir, wanted):
    try:
        with open(os.path.join(venv_dir, STAMP_NAME), encoding="utf-8") as f:
            if f.read() != wanted:
                return False
    except OSError:
        return False
    return works(venv_dir)


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
    if len(sys.argv) != 2:
        raise SystemExit("usage: ensure_venv.py VENV_DIR")
    venv_dir = os.path.abspath(sys.argv[1])
    with open(REQUIREMENTS, encoding="utf-8") as f:
        wanted = f.read()
    os.makedirs(os.path.dirname(venv_dir), exist_ok=True)
    fd = lock(venv_dir + ".lock")
    try:
        if is_ready(venv_dir, wanted):
            return
        # Rebuilt from scratch: an old set may hold packages no longer wanted.
        run([sys.executable, "-m", "venv", "--clear", venv_dir], 300)
        python = os.path.join(venv_dir, "bin", "python")
        run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "-r", REQUIREMENTS],
            PIP_TIMEOUT,
        )
        if not works(venv_dir):
            raise SystemExit(f"ensure_venv: the validators do not run from {venv_dir} after pip install")
        stamp = os.path.join(venv_dir, STAMP_NAME)
        with open(stamp + ".tmp", "w", encoding="utf-8") as f:
            f.write(wanted)
        os.replace(stamp + ".tmp", stamp)
        log(f"{venv_dir} is ready")
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
