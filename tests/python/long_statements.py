#!/usr/bin/env python3
"""Statements of every size around pgwake's buffer sizes, from Python drivers.

Run by tests/drivers.rs against `pgwake run` in transaction mode. The
statement is `select length('xxx...') + $1`, its padding chosen so that its
text (as sent in Parse) is exactly SIZE bytes, for each of SIZES: just below,
at and above the 512 bytes pgwake reads an idle client with, and far above
(64 KiB, 1 MiB, 16 MiB). The answer is the padding's length plus the
parameter, which differs from call to call.

Each size runs in four situations, each on a connection of its own:

- `first`: the statement is the first message of a fresh connection;
- `idle`: after a short query and a pause, so pgwake has gone back to
  waiting for an idle client;
- `transaction`: in a transaction block, after a short query;
- `pipeline`: several statements sent without waiting for answers.

and for unnamed and named statements alike. Modes:

- `psycopg`: psycopg 3 in autocommit mode with server-side binding (its
  default), `prepare=False` (unnamed) and `prepare=True` (named); the
  pipeline is `conn.pipeline()`.
- `asyncpg`: asyncpg with `statement_cache_size=0` (unnamed) and with its
  statement cache (named). asyncpg has no pipeline of queries with answers:
  `pipeline` is `executemany` (Bind/Execute for every row, one Sync) of an
  INSERT of the same size into driver_rows, checked by reading the rows
  back, then one statement prepared by hand and run again and again.

Every answer is checked. Each case has its own time limit (--case-timeout);
a case past it is abandoned, reported, and the next one runs.

Prints one summary line, `MODE: ok key=value ...`, last; exits non-zero on
any wrong answer, unexpected error or deadline.

The table `driver_rows (client text, n int)` must exist (mode asyncpg).

Usage: long_statements.py MODE --port PORT [--host HOST] [--dbname DB]
           [--user USER] [--deadline SECONDS] [--case-timeout SECONDS]
           [--sizes SIZE,...] [--situations SITUATION,...] [--kinds KIND,...]
"""

import argparse
import asyncio
import os
import sys
import threading
import time
import traceback

from driver_common import Tally, asyncpg_connect, expect, psycopg_connect

# Statement text lengths, in bytes; tests/drivers.rs has the same.
SIZES = (300, 511, 512, 513, 600, 4096, 65536, 1 << 20, 16 << 20)
SITUATIONS = ("first", "idle", "transaction", "pipeline")
KINDS = ("unnamed", "named")
# Long enough for the idle path to run between the short query and the
# long statement.
IDLE_PAUSE = 0.15


def pipeline_len(size):
    """Statements in one pipeline: fewer for the big ones, to keep the run
    short. tests/drivers.rs has the same."""
    if size <= 64 * 1024:
        return 5
    if size <= 1 << 20:
        return 3
    return 2


def padded(prefix, size, suffix):
    """`prefix + 'x' * pad + suffix`, SIZE bytes long, and pad."""
    pad = size - len(prefix.encode()) - len(suffix.encode())
    assert pad > 0, (prefix, size)
    text = prefix + "x" * pad + suffix
    assert len(text.encode()) == size
    return text, pad


def select_of(size, placeholder="$1"):
    """The long SELECT of SIZE bytes as the server sees it (psycopg turns
    its `%s` into `$1`, of the same length), and its padding's length."""
    text, pad = padded("select length('", size, "') + $1")
    return text[: -len("$1")] + placeholder, pad


def insert_of(size):
    """An INSERT of SIZE bytes whose row has n = pad + $1, for asyncpg's
    executemany, and its padding's length."""
    return padded("insert into driver_rows (client, n) select $2, length('", size, "') + $1")




def cases(args):
    """(number, kind, size, situation) of every case selected by `args`, in
    the order run."""
    n = 0
    for kind in KINDS:
        for size in SIZES:
            for situation in SITUATIONS:
                if kind in args.kinds and size in args.sizes and situation in args.situations:
                    yield n, kind, size, situation
                n += 1


def param(case, j):
    """The parameter of call j of a case: different for every call."""
    return 10 * case + j + 1



def case_label(kind, size, situation):
    return f"{kind} size={size} {situation}"


# --- psycopg 3 -------------------------------------------------------------


def psycopg_case(args, tally, case, kind, size, situation, state):
    import psycopg

    prepare = kind == "named"
    sql, pad = select_of(size, "%s")
    what = case_label(kind, size, situation)

    def long(conn, j):
        p = param(case, j)
        state["step"] = f"long statement {j}"
        (value,) = conn.execute(sql, (p,), prepare=prepare).fetchone()
        expect(value, pad + p, what)
        tally.add(statements=1)

    def short(conn, j):
        p = param(case, j)
        state["step"] = f"short query {j}"
        (value,) = conn.execute("select %s::int + 1", (p,), prepare=prepare).fetchone()
        expect(value, p + 1, f"{what}: short query")
        tally.add(short=1)

    conn = psycopg_connect(args, f"psycopg-long-{case}", autocommit=True)
    tally.add(connections=1)
    try:
        if situation == "first":
            long(conn, 0)
        elif situation == "idle":
            short(conn, 0)
            time.sleep(IDLE_PAUSE)
            long(conn, 1)
        elif situation == "transaction":
            state["step"] = "begin"
            with conn.transaction():
                short(conn, 0)
                long(conn, 1)
                state["step"] = "commit"
        else:
            params = [param(case, j) for j in range(pipeline_len(size))]
            state["step"] = f"pipeline of {len(params)} long statements"
            with conn.pipeline():
                curs = [conn.execute(sql, (p,), prepare=prepare) for p in params]
            for j, (cur, p) in enumerate(zip(curs, params)):
                (value,) = cur.fetchone()
                expect(value, pad + p, f"{what}: statement {j} of the pipeline")
                tally.add(statements=1)
        state["step"] = "closing"
    finally:
        conn.close()


def due_cases(args, tally):
    """The cases with their label and time limit; those the run's deadline
    leaves no time for are reported as failed and skipped."""
    for case, kind, size, situation in cases(args):
        what = case_label(kind, size, situation)
        limit = min(args.case_timeout, tally.remaining())
        if limit <= 0:
            tally.fail(f"{what}: not run, deadline passed")
            continue
        yield case, kind, size, situation, what, limit


def psycopg_main(args, tally):
    """Every case in a thread of its own, abandoned at its time limit (a
    blocked psycopg call cannot be interrupted otherwise)."""
    for case, kind, size, situation, what, limit in due_cases(args, tally):
        state = {"step": "connecting", "abandoned": False}

        def body(case=case, kind=kind, size=size, situation=situation, what=what, state=state):
            try:
                psycopg_case(args, tally, case, kind, size, situation, state)
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                # An abandoned case was reported already.
                if not state["abandoned"]:
                    tally.fail(f"{what}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")

        t = threading.Thread(target=body, name=f"case-{case}", daemon=True)
        t.start()
        t.join(limit)
        if t.is_alive():
            state["abandoned"] = True
            tally.fail(f"{what}: no answer within {limit:.1f}s ({state['step']})")


# --- asyncpg ---------------------------------------------------------------


async def asyncpg_case(args, tally, case, kind, size, situation, state):
    import asyncpg

    sql, pad = select_of(size)
    what = case_label(kind, size, situation)
    client = f"asyncpg-long-{kind}-{size}"
    options = {} if kind == "named" else {"statement_cache_size": 0}
    conn = await asyncpg_connect(args, f"asyncpg-long-{case}", timeout=10, **options)
    tally.add(connections=1)

    async def long(j):
        p = param(case, j)
        state["step"] = f"long statement {j}"
        expect(await conn.fetchval(sql, p), pad + p, what)
        tally.add(statements=1)

    async def short(j):
        p = param(case, j)
        state["step"] = f"short query {j}"
        expect(await conn.fetchval("select $1::int + 1", p), p + 1, f"{what}: short query")
        tally.add(short=1)

    try:
        if situation == "first":
            await long(0)
        elif situation == "idle":
            await short(0)
            await asyncio.sleep(IDLE_PAUSE)
            await long(1)
        elif situation == "transaction":
            state["step"] = "begin"
            async with conn.transaction():
                await short(0)
                await long(1)
                state["step"] = "commit"
        else:
            params = [param(case, j) for j in range(pipeline_len(size))]
            insert, insert_pad = insert_of(size)
            # Rows of an earlier run against the same database.
            await conn.execute("delete from driver_rows where client = $1", client)
            state["step"] = f"executemany of {len(params)} rows"
            await conn.executemany(insert, [(p, client) for p in params])
            rows = await conn.fetch(
                "select n from driver_rows where client = $1 order by n", client
            )
            expect([r["n"] for r in rows], [insert_pad + p for p in params], f"{what}: rows")
            tally.add(rows=len(params))
            # Prepared by hand (a named statement either way), then run with
            # one parameter after another.
            state["step"] = "preparing"
            stmt = await conn.prepare(sql)
            for j, p in enumerate(params):
                state["step"] = f"prepared statement, call {j}"
                expect(await stmt.fetchval(p), pad + p, f"{what}: prepared, call {j}")
                tally.add(statements=1)
    except BaseException:
        # Failed or out of time (cancelled): no goodbye to wait for.
        conn.terminate()
        raise
    state["step"] = "closing"
    await asyncio.wait_for(conn.close(), 10)


async def asyncpg_main(args, tally):
    tally.add(rows=0)
    for case, kind, size, situation, what, limit in due_cases(args, tally):
        state = {"step": "connecting"}
        try:
            await asyncio.wait_for(
                asyncpg_case(args, tally, case, kind, size, situation, state), limit
            )
        except asyncio.TimeoutError:
            tally.fail(f"{what}: no answer within {limit:.1f}s ({state['step']})")
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            tally.fail(f"{what}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")


# --- main ------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["psycopg", "asyncpg"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dbname", default="app")
    parser.add_argument("--user", default="app")
    parser.add_argument("--deadline", type=float, default=180)
    parser.add_argument("--case-timeout", type=float, default=60)
    # Only some of the cases, to narrow down a failure.
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=SIZES)
    parser.add_argument("--situations", type=lambda v: v.split(","), default=SITUATIONS)
    parser.add_argument("--kinds", type=lambda v: v.split(","), default=KINDS)
    args = parser.parse_args()
    for option, chosen, every in (
        ("sizes", args.sizes, SIZES),
        ("situations", args.situations, SITUATIONS),
        ("kinds", args.kinds, KINDS),
    ):
        if not set(chosen) <= set(every):
            parser.error(f"--{option}: each must be one of {every}")

    tally = Tally(args.deadline, statements=0, short=0, connections=0)
    started = time.monotonic()
    if args.mode == "psycopg":
        psycopg_main(args, tally)
    else:
        asyncio.run(asyncpg_main(args, tally))
    elapsed = time.monotonic() - started

    with tally.lock:
        counts = dict(tally.counts)
        errors = list(tally.errors)
    for error in errors:
        print(f"{args.mode}: ERROR {error}", file=sys.stderr)
    fields = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    status = "ok" if not errors else f"FAILED errors={len(errors)}"
    print(
        f"{args.mode}: {status} sizes={len(set(args.sizes))} "
        f"situations={len(set(args.situations))} kinds={len(set(args.kinds))} largest={max(args.sizes)} {fields} seconds={elapsed:.1f}",
        flush=True,
    )
    sys.stderr.flush()
    # Abandoned cases may still hold a thread blocked on a socket.
    os._exit(1 if errors else 0)


if __name__ == "__main__":
    main()
