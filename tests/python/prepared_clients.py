#!/usr/bin/env python3
"""Named prepared statements through pgwake, as Python drivers make them.

Run by tests/drivers.rs against `pgwake run` in transaction mode. Modes:

- `psycopg-prepared`: psycopg 3 with `prepare_threshold=0`, so every query
  is a named statement (`_pg3_0`, `_pg3_1`, ... on every connection alike,
  the SQL different per thread). Each thread has its own connection and runs
  many transactions; some are rolled back, after an error or on purpose, and
  psycopg then sends `DEALLOCATE ALL`.
- `psycopg-evict`: psycopg 3 with `prepare_threshold=0` and a small
  `prepared_max`, cycling through more statements than that, so psycopg
  closes (protocol Close) the least recently used one on nearly every query.
  Half the connections run in autocommit mode, half in transactions, some of
  which are rolled back (`DEALLOCATE ALL`).
- `asyncpg`: asyncpg with its default statement cache, one asyncio task per
  connection. asyncpg numbers its statements per process
  (`__asyncpg_stmt_1__`, ...), so two processes of this mode running at once
  use the same names for different SQL.

Every answer is checked against the statement it belongs to; what each
client committed is counted back at the end. psycopg connections trace
their protocol messages to TRACE_DIR (one file per connection), from which
the Close and `DEALLOCATE ALL` messages psycopg sent are counted.

Prints one summary line, `MODE: ok key=value ...`, last; exits non-zero on
any wrong answer, unexpected error or deadline.

The table `driver_rows (client text, n int)` must exist.

Usage: prepared_clients.py MODE --port PORT [--host HOST] [--dbname DB]
           [--user USER] [--clients N] [--first-client N] [--iterations N]
           [--prepared-max N] [--cycle N] [--trace-dir DIR]
           [--deadline SECONDS]
"""

import argparse
import asyncio
import os
import re
import sys
import threading
import time
import traceback

import driver_common
from driver_common import Failed, Tally, expect





def k_of(client, j):
    """The constant of client `client`'s statement `j`: different for
    every statement of every client."""
    return 1000 * (client + 1) + j


# --- psycopg 3 -------------------------------------------------------------


def psycopg_connect(args, client, autocommit):
    import psycopg
    from psycopg import pq

    conn = driver_common.psycopg_connect(
        args, f"{args.mode}-{client}", autocommit=autocommit, prepare_threshold=0
    )
    if args.prepared_max is not None:
        conn.prepared_max = args.prepared_max
    trace = None
    if args.trace_dir:
        path = os.path.join(args.trace_dir, f"{args.mode}-{client}.trace")
        trace = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        conn.pgconn.trace(trace)
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
    return conn, trace


def psycopg_close(conn, trace):
    if trace is not None:
        conn.pgconn.untrace()
        os.close(trace)
    conn.close()


def psycopg_statements(client):
    """(sql, params(i), expected rows(i)) of one client: three whose SQL is
    its own, and one every client shares."""
    k1, k2, k3 = k_of(client, 1), k_of(client, 2), k_of(client, 3)
    tag = f"c{client}"
    return [
        (f"select %s::int * {k1}", lambda i: (i,), lambda i: [(i * k1,)]),
        (
            f"select %s::int + {k2}, %s::text",
            lambda i: (i, tag),
            lambda i: [(i + k2, tag)],
        ),
        (
            f"select g * {k3} from generate_series(1, %s::int) g",
            lambda i: (i % 4 + 1,),
            lambda i: [(g * k3,) for g in range(1, i % 4 + 2)],
        ),
        ("select %s::int * 7", lambda i: (i,), lambda i: [(i * 7,)]),
    ]


def psycopg_run_statement(conn, statement, i, what):
    sql, params, wanted = statement
    rows = conn.execute(sql, params(i)).fetchall()
    expect([tuple(r) for r in rows], wanted(i), f"{what}: {sql!r} with i={i}")


def psycopg_insert(conn, name, n):
    cur = conn.execute(
        "insert into driver_rows (client, n) values (%s, %s)", (name, n)
    )
    expect(cur.rowcount, 1, f"{name}: insert {n}")


def psycopg_prepared_client(args, tally, client):
    """Every query prepared; a transaction per iteration, ending in a commit,
    a rollback after an error, a rollback on purpose, or a commit followed by
    a `with transaction()` block that rolls back."""
    import psycopg

    name = f"{args.mode}-{client}"
    statements = psycopg_statements(client)
    conn, trace = psycopg_connect(args, client, autocommit=False)
    try:
        for i in range(args.iterations):
            tally.check_time()
            what = f"{name} iteration {i}"
            for statement in statements:
                psycopg_run_statement(conn, statement, i, what)
            psycopg_insert(conn, name, i)
            tally.add(queries=len(statements) + 1)
            branch = i % 5
            if branch == 4:
                try:
                    conn.execute("select 1 / %s::int", (0,))
                    raise Failed(f"{what}: division by zero succeeded")
                except psycopg.errors.DivisionByZero:
                    pass
                conn.rollback()
                tally.add(queries=1, expected_errors=1, rollbacks=1)
            elif branch == 2:
                conn.rollback()
                tally.add(rollbacks=1)
            else:
                conn.commit()
                tally.add(commits=1, committed_rows=1)
            if branch == 1:
                with conn.transaction():
                    psycopg_insert(conn, name, 100000 + i)
                    psycopg_run_statement(conn, statements[0], i, what)
                    tally.add(queries=2, rollbacks=1)
                    raise psycopg.Rollback()
        # What this client committed, and nothing it rolled back, is there.
        (count,) = conn.execute(
            "select count(*) from driver_rows where client = %s", (name,)
        ).fetchone()
        conn.commit()
        tally.add(queries=1)
        committed = sum(1 for i in range(args.iterations) if i % 5 in (0, 1, 3))
        expect(count, committed, f"{name}: rows committed")
    finally:
        psycopg_close(conn, trace)


def psycopg_evict_client(args, tally, client):
    """More distinct statements than `prepared_max`, in a cycle: psycopg
    closes the least recently used one on nearly every query."""
    import psycopg

    name = f"{args.mode}-{client}"
    autocommit = client % 2 == 0
    cycle = []
    for j in range(args.cycle):
        k = k_of(client, j)
        cycle.append(
            (f"select %s::int * {k}", lambda i: (i,), lambda i, k=k: [(i * k,)])
        )
    shared = psycopg_statements(client)[3]
    conn, trace = psycopg_connect(args, client, autocommit=autocommit)
    committed = 0
    try:
        for i in range(args.iterations):
            tally.check_time()
            what = f"{name} iteration {i}"
            for statement in cycle:
                psycopg_run_statement(conn, statement, i, what)
            psycopg_run_statement(conn, shared, i, what)
            psycopg_insert(conn, name, i)
            tally.add(queries=len(cycle) + 2)
            if autocommit:
                committed += 1
                tally.add(committed_rows=1)
            elif i % 6 == 5:
                conn.rollback()
                tally.add(rollbacks=1)
            else:
                conn.commit()
                committed += 1
                tally.add(commits=1, committed_rows=1)
        (count,) = conn.execute(
            "select count(*) from driver_rows where client = %s", (name,)
        ).fetchone()
        if not autocommit:
            conn.commit()
        tally.add(queries=1)
        expect(count, committed, f"{name}: rows committed")
        # psycopg keeps no more than prepared_max statements.
        if len(conn._prepared._names) > args.prepared_max:
            raise Failed(f"{name}: psycopg holds {len(conn._prepared._names)} statements")
    finally:
        psycopg_close(conn, trace)


CLOSE_RE = re.compile(r'^F\t\d+\t(Close\t S "|Query\t "DEALLOCATE (?!ALL")\S)')
DEALLOCATE_ALL_RE = re.compile(r'^F\t\d+\tQuery\t "DEALLOCATE ALL"')


def count_traced(trace_dir, mode):
    """Statements the psycopg connections of `mode` closed one by one, and
    their `DEALLOCATE ALL`s, from their protocol traces."""
    closes = deallocate_all = 0
    for entry in sorted(os.listdir(trace_dir)):
        if not entry.startswith(mode + "-"):
            continue
        with open(os.path.join(trace_dir, entry), encoding="utf-8", errors="replace") as f:
            for line in f:
                if CLOSE_RE.match(line):
                    closes += 1
                elif DEALLOCATE_ALL_RE.match(line):
                    deallocate_all += 1
    return closes, deallocate_all


def run_threads(args, tally, target):
    def body(client):
        try:
            target(args, tally, client)
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            tally.fail(
                f"client {client}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            )

    threads = [
        threading.Thread(target=body, args=(c,), name=f"client-{c}")
        for c in range(args.first_client, args.first_client + args.clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, tally.deadline - time.monotonic()))
        if t.is_alive():
            tally.fail(f"{t.name} still running at the deadline")


# --- asyncpg ---------------------------------------------------------------


async def asyncpg_client(args, tally, client):
    import asyncpg

    name = f"{args.mode}-{client}"
    k1, k2, k3, k4 = (k_of(client, j) for j in range(1, 5))
    conn = await driver_common.asyncpg_connect(args, name, timeout=30)
    committed = 0
    try:
        minus = await conn.prepare(f"select $1::int - {k4}")
        for i in range(args.iterations):
            tally.check_time()
            what = f"{name} iteration {i}"
            q = f"select $1::int * {k1}"
            expect(await conn.fetchval(q, i), i * k1, f"{what}: {q}")
            q = f"select $1::int + {k2} as n, $2::text as s"
            row = await conn.fetchrow(q, i, name)
            expect((row["n"], row["s"]), (i + k2, name), f"{what}: {q}")
            q = f"select g * {k3} from generate_series(1, $1::int) g"
            rows = await conn.fetch(q, i % 5 + 1)
            expect([r[0] for r in rows], [g * k3 for g in range(1, i % 5 + 2)], f"{what}: {q}")
            q = "select $1::int * 7"
            expect(await conn.fetchval(q, i), i * 7, f"{what}: {q}")
            expect(await minus.fetchval(i), i - k4, f"{what}: prepared minus")
            tally.add(queries=5)
            if i % 3 == 0:
                async with conn.transaction():
                    # executemany: Bind/Execute per row, one Sync.
                    await conn.executemany(
                        "insert into driver_rows (client, n) values ($1, $2)",
                        [(name, i * 10 + r) for r in range(3)],
                    )
                    q = f"select $1::int * {k1}"
                    expect(await conn.fetchval(q, i + 1), (i + 1) * k1, f"{what}: {q} in tx")
                committed += 3
                tally.add(queries=2, commits=1, committed_rows=3)
            if i % 7 == 3:
                try:
                    async with conn.transaction():
                        await conn.execute(
                            "insert into driver_rows (client, n) values ($1, $2)",
                            name,
                            -i,
                        )
                        raise RuntimeError("roll back")
                except RuntimeError:
                    pass
                tally.add(queries=1, rollbacks=1)
            if i % 5 == 2:
                try:
                    await conn.fetchval(f"select {k1} / $1::int", 0)
                    raise Failed(f"{what}: division by zero succeeded")
                except asyncpg.DivisionByZeroError:
                    pass
                tally.add(queries=1, expected_errors=1)
            else:
                q = f"select {k1} / $1::int"
                expect(await conn.fetchval(q, i + 1), k1 // (i + 1), f"{what}: {q}")
                tally.add(queries=1)
        count = await conn.fetchval(
            "select count(*) from driver_rows where client = $1", name
        )
        tally.add(queries=1)
        expect(count, committed, f"{name}: rows committed")
    finally:
        await asyncio.wait_for(conn.close(), 30)


async def asyncpg_main(args, tally):
    async def body(client):
        try:
            await asyncpg_client(args, tally, client)
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            tally.fail(
                f"client {client}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            )

    clients = range(args.first_client, args.first_client + args.clients)
    try:
        await asyncio.wait_for(
            asyncio.gather(*(body(c) for c in clients)),
            max(1.0, tally.deadline - time.monotonic()),
        )
    except asyncio.TimeoutError:
        tally.fail("asyncpg clients still running at the deadline")


# --- main ------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["psycopg-prepared", "psycopg-evict", "asyncpg"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dbname", default="app")
    parser.add_argument("--user", default="app")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--first-client", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--prepared-max", type=int, default=None)
    parser.add_argument("--cycle", type=int, default=8)
    parser.add_argument("--trace-dir", default=None)
    parser.add_argument("--deadline", type=float, default=180)
    args = parser.parse_args()
    if args.mode == "psycopg-evict" and args.prepared_max is None:
        parser.error("psycopg-evict needs --prepared-max")

    tally = Tally(args.deadline)
    started = time.monotonic()
    if args.mode == "psycopg-prepared":
        run_threads(args, tally, psycopg_prepared_client)
    elif args.mode == "psycopg-evict":
        run_threads(args, tally, psycopg_evict_client)
    else:
        asyncio.run(asyncpg_main(args, tally))
    elapsed = time.monotonic() - started

    counts = dict(tally.counts)
    if args.trace_dir and args.mode.startswith("psycopg"):
        counts["closes"], counts["deallocate_all"] = count_traced(args.trace_dir, args.mode)
    for error in tally.errors:
        print(f"{args.mode}: ERROR {error}", file=sys.stderr)
    fields = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    status = "ok" if not tally.errors else f"FAILED errors={len(tally.errors)}"
    print(
        f"{args.mode}: {status} clients={args.clients} {fields} seconds={elapsed:.1f}",
        flush=True,
    )
    sys.exit(1 if tally.errors else 0)


if __name__ == "__main__":
    main()
