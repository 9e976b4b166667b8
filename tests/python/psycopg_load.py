#!/usr/bin/env python3
"""Drives pgwake with psycopg 3 from several threads.

Each thread has its own connection (half in autocommit mode, half with
psycopg's implicit transactions) and, for every iteration, runs:

- a parameterized query (psycopg binds parameters server-side: Parse/Bind
  with $n placeholders; repeated queries get prepared automatically);
- an explicitly prepared query (prepare=True);
- a transaction that inserts a row and reads it back;
- every 5th iteration: a transaction rolled back on purpose, and one that
  fails (division by zero) and is rolled back, after which the connection
  must work normally;
- every 4th iteration: executemany (pipelined) inserting 5 rows;
- every 10th iteration: COPY FROM STDIN of 20 rows and COPY TO STDOUT
  reading them back, via cursor.copy;
- every 20th iteration: a fresh connection.

Any exception fails the run. At the end the row counts are checked. Prints
a one-line summary; exit status 0 only when everything held.

Usage: psycopg_load.py --port PORT --dbname DB --user USER
                       [--threads N] [--iterations N] [--deadline SECONDS]
"""

import argparse
import os
import sys
import threading
import time
import traceback

import psycopg


class Run:
    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.deadline
        self.lock = threading.Lock()
        self.errors = []
        self.queries = 0
        self.transactions = 0
        # Server backends seen, per thread: shows the clients being moved
        # between server connections (transaction pooling).
        self.backends = {}

    def connect(self, autocommit, app_name):
        return psycopg.connect(
            host=self.args.host,
            port=self.args.port,
            dbname=self.args.dbname,
            user=self.args.user,
            connect_timeout=10,
            autocommit=autocommit,
            application_name=app_name,
        )

    def count(self, queries, transactions=0):
        with self.lock:
            self.queries += queries
            self.transactions += transactions

    def fail(self, what):
        with self.lock:
            self.errors.append(what)

    def check_time(self):
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"deadline of {self.args.deadline}s passed")


def expect(actual, wanted, what):
    if actual != wanted:
        raise AssertionError(f"{what}: got {actual!r}, expected {wanted!r}")


def setup(run):
    with run.connect(True, "psycopg-setup") as conn:
        conn.execute("DROP TABLE IF EXISTS items, copy_items")
        conn.execute(
            "CREATE TABLE items (id bigserial PRIMARY KEY, thread int NOT NULL, "
            "n int NOT NULL, label text NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE copy_items (thread int NOT NULL, n int NOT NULL, "
            "payload text NOT NULL)"
        )
    run.count(3)


def iteration(run, conn, t, i):
    autocommit = conn.autocommit
    app_name = f"psycopg-t{t}"

    # Server-side parameter binding; the same text on every iteration, so
    # psycopg prepares it after a few executions (prepare_threshold).
    row = conn.execute(
        "SELECT %s::int * 1000 + %s::int, %s::text, current_setting('application_name'), "
        "pg_backend_pid()",
        (t, i, f"t{t}-i{i}"),
    ).fetchone()
    expect(row[:3], (t * 1000 + i, f"t{t}-i{i}", app_name), "parameterized select")
    with run.lock:
        run.backends.setdefault(t, set()).add(row[3])

    # Explicitly prepared statement.
    row = conn.execute(
        "SELECT count(*) FROM items WHERE thread = %s AND label = %s",
        (t, "committed"),
        prepare=True,
    ).fetchone()
    expect(row, (i,), "committed rows so far (prepared)")
    run.count(2)

    # Write and read back in one transaction (a savepoint inside psycopg's
    # implicit transaction when not in autocommit mode).
    with conn.transaction():
        (new_id,) = conn.execute(
            "INSERT INTO items (thread, n, label) VALUES (%s, %s, 'committed') RETURNING id",
            (t, i),
        ).fetchone()
        row = conn.execute("SELECT thread, n, label FROM items WHERE id = %s", (new_id,)).fetchone()
        expect(row, (t, i, "committed"), "row read back in its transaction")
    run.count(2, 1)

    if i % 5 == 0:
        # Rolled back on purpose: the row must not survive.
        with conn.transaction() as tx:
            conn.execute(
                "INSERT INTO items (thread, n, label) VALUES (%s, %s, 'rolled-back')", (t, i)
            )
            raise psycopg.Rollback(tx)
        row = conn.execute(
            "SELECT count(*) FROM items WHERE thread = %s AND label = 'rolled-back'", (t,)
        ).fetchone()
        expect(row, (0,), "rolled-back rows")
        # A failing statement aborts the transaction; after the rollback the
        # connection must be usable again.
        try:
            with conn.transaction():
                conn.execute("SELECT 1 / (%s::int - %s::int)", (i, i))
        except psycopg.errors.DivisionByZero:
            pass
        else:
            raise AssertionError("division by zero did not fail")
        expect(conn.execute("SELECT 42").fetchone(), (42,), "query after a failed transaction")
        run.count(4, 2)

    if i % 4 == 0:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO items (thread, n, label) VALUES (%s, %s, 'many')",
                [(t, i * 100 + k) for k in range(5)],
            )
        run.count(5, 1)

    if i % 10 == 0:
        rows = [(t, i * 100 + k, f"payload {t}/{i}/{k}\twith a tab") for k in range(20)]
        with conn.cursor() as cur:
            with cur.copy("COPY copy_items (thread, n, payload) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
            with cur.copy(
                "COPY (SELECT thread, n, payload FROM copy_items "
                "WHERE thread = %s AND n >= %s AND n < %s ORDER BY n) TO STDOUT",
                (t, i * 100, i * 100 + 20),
            ) as copy:
                copy.set_types(["int4", "int4", "text"])
                back = list(copy.rows())
        expect(back, rows, "rows copied back out")
        run.count(2, 2)

    if not autocommit:
        conn.commit()
        run.count(0, 1)


def worker(run, t):
    autocommit = t % 2 == 0
    conn = None
    try:
        conn = run.connect(autocommit, f"psycopg-t{t}")
        for i in range(run.args.iterations):
            run.check_time()
            if i and i % 20 == 0:
                conn.close()
                conn = run.connect(autocommit, f"psycopg-t{t}")
            iteration(run, conn, t, i)
    except Exception:  # noqa: BLE001 - every failure is reported
        run.fail(f"thread {t} (autocommit={autocommit}):\n{traceback.format_exc()}")
    finally:
        if conn is not None:
            conn.close()


def verify(run):
    threads, iterations = run.args.threads, run.args.iterations
    many = threads * len([i for i in range(iterations) if i % 4 == 0]) * 5
    copied = threads * len([i for i in range(iterations) if i % 10 == 0]) * 20
    with run.connect(True, "psycopg-verify") as conn:
        rows = dict(
            conn.execute("SELECT label, count(*) FROM items GROUP BY label").fetchall()
        )
        expect(rows, {"committed": threads * iterations, "many": many}, "rows per label")
        expect(
            conn.execute("SELECT count(*) FROM copy_items").fetchone(), (copied,), "copied rows"
        )
    run.count(2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dbname", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--deadline", type=float, default=180.0)
    args = p.parse_args()

    started = time.monotonic()
    run = Run(args)
    setup(run)
    threads = [
        threading.Thread(target=worker, args=(run, t), name=f"worker-{t}", daemon=True)
        for t in range(args.threads)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(0.0, run.deadline - time.monotonic()) + 5)
    stuck = [th.name for th in threads if th.is_alive()]
    if stuck:
        run.fail(f"threads still running after the deadline: {stuck}")
    if not run.errors:
        try:
            verify(run)
        except Exception:  # noqa: BLE001
            run.fail(f"verification:\n{traceback.format_exc()}")

    elapsed = time.monotonic() - started
    if run.errors:
        print(f"psycopg: FAILED with {len(run.errors)} error(s) after {elapsed:.1f}s", flush=True)
        for e in run.errors:
            print(e, flush=True)
        sys.stdout.flush()
        # Daemon threads may still hang on a socket: do not wait for them.
        os._exit(1)
    print(
        f"psycopg: ok threads={args.threads} iterations={args.iterations} "
        f"queries={run.queries} transactions={run.transactions} "
        f"backends={len(set().union(*run.backends.values()))} "
        f"max_backends_per_thread={max(len(b) for b in run.backends.values())} "
        f"seconds={elapsed:.1f} psycopg={psycopg.__version__} "
        f"libpq={psycopg.pq.version()}",
        flush=True,
    )


if __name__ == "__main__":
    main()
