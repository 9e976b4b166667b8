"""What the driver scripts in this folder share: their failure type, the
check of one answer, and the counts and deadline of one run."""

import threading
import time


class Failed(Exception):
    """A wrong answer or a broken expectation."""


def expect(actual, wanted, what):
    if actual != wanted:
        raise Failed(f"{what}: got {actual!r}, expected {wanted!r}")


class Tally:
    """Counts shared by the clients of one run, and its deadline."""

    def __init__(self, deadline, **counts):
        self.deadline = time.monotonic() + deadline
        self.lock = threading.Lock()
        self.counts = dict(counts)
        self.errors = []

    def add(self, **counts):
        with self.lock:
            for key, n in counts.items():
                self.counts[key] = self.counts.get(key, 0) + n

    def fail(self, what):
        with self.lock:
            self.errors.append(what)

    def remaining(self):
        return self.deadline - time.monotonic()

    def check_time(self):
        if time.monotonic() > self.deadline:
            raise TimeoutError("deadline passed")


def psycopg_connect(args, application_name, **options):
    """A psycopg 3 connection to `--host/--port/--dbname/--user`."""
    import psycopg

    return psycopg.connect(
        host=args.host,
        port=args.port,
        dbname=args.dbname,
        user=args.user,
        connect_timeout=10,
        application_name=application_name,
        **options,
    )


async def asyncpg_connect(args, application_name, **options):
    """An asyncpg connection to `--host/--port/--dbname/--user`."""
    import asyncpg

    return await asyncpg.connect(
        host=args.host,
        port=args.port,
        database=args.dbname,
        user=args.user,
        server_settings={"application_name": application_name},
        **options,
    )
