#!/usr/bin/env python3
"""Hold N idle Postgres client connections open.

    idle_clients.py --port PORT --count N [--user U] [--dbname D]

Opens N TCP connections to 127.0.0.1:PORT, sends a StartupMessage on each and
reads until ReadyForQuery (trust authentication only), then prints one JSON
line {"ok": ..., "failed": ..., "seconds": ..., "first_error": ...} and holds
the connections until standard input closes, SIGTERM/SIGINT arrives or
--hold-max seconds pass. Then it sends Terminate on each and exits.

Also importable: `startup_message`, `read_until_ready` and `probe_select1`
are the small protocol pieces bench/run uses to time a pooler's first answer.
"""

import argparse
import asyncio
import json
import resource
import signal
import socket
import struct
import sys
import time

PROTOCOL_3_0 = 196608


def startup_message(user, dbname):
    body = struct.pack("!i", PROTOCOL_3_0)
    for key, value in (("user", user), ("database", dbname)):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def query_message(sql):
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


TERMINATE = b"X\0\0\0\4"


class ProtocolError(Exception):
    pass


def _check(tag, payload):
    """Raise on an error or an authentication request other than AuthenticationOk."""
    if tag == b"E":
        fields = dict(
            (f[:1].decode(), f[1:].decode(errors="replace"))
            for f in payload.split(b"\0")
            if f
        )
        raise ProtocolError(f"{fields.get('C', '?')}: {fields.get('M', '?')}")
    if tag == b"R":
        (code,) = struct.unpack("!i", payload[:4])
        if code != 0:
            raise ProtocolError(f"server asks for authentication (code {code}); trust expected")


def read_until_ready(sock, deadline):
    """Read backend messages from a blocking socket until ReadyForQuery."""
    buf = b""
    while True:
        while len(buf) >= 5:
            tag = buf[:1]
            (length,) = struct.unpack("!i", buf[1:5])
            if len(buf) < 1 + length:
                break
            payload, buf = buf[5 : 1 + length], buf[1 + length :]
            _check(tag, payload)
            if tag == b"Z":
                return
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no ReadyForQuery in time")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError("connection closed before ReadyForQuery")
        buf += chunk


def probe_select1(port, user, dbname, timeout):
    """One attempt: connect, start up, run `select 1`. Raises on any failure."""
    deadline = time.monotonic() + timeout
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock.getsockname() == sock.getpeername():
            # Connected to itself while nothing listened (port in the ephemeral range).
            raise ConnectionRefusedError("self-connect")
        sock.sendall(startup_message(user, dbname))
        read_until_ready(sock, deadline)
        sock.sendall(query_message("select 1"))
        read_until_ready(sock, deadline)
        sock.sendall(TERMINATE)
    finally:
        sock.close()


async def _read_until_ready_async(reader):
    while True:
        head = await reader.readexactly(5)
        tag = head[:1]
        (length,) = struct.unpack("!i", head[1:5])
        payload = await reader.readexactly(length - 4)
        _check(tag, payload)
        if tag == b"Z":
            return


async def _open_one(port, startup, sem, timeout, held, errors):
    async with sem:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout
            )
            writer.write(startup)
            await asyncio.wait_for(_read_until_ready_async(reader), timeout)
            held.append(writer)
        except Exception as e:  # counted and reported, not fatal
            errors.append(f"{type(e).__name__}: {e}")
            if writer is not None:
                writer.close()


async def _main(args):
    startup = startup_message(args.user, args.dbname)
    # A bounded number of handshakes in flight, so a pooler's listen backlog
    # never overflows (a dropped SYN costs a 1 s retransmit).
    sem = asyncio.Semaphore(args.concurrency)
    held, errors = [], []
    start = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(
            *(
                _open_one(args.port, startup, sem, args.timeout, held, errors)
                for _ in range(args.count)
            )
        ),
        args.timeout * 4 + args.count / 200,
    )
    report = {
        "ok": len(held),
        "failed": len(errors),
        "seconds": round(time.monotonic() - start, 3),
        "first_error": errors[0] if errors else None,
    }
    print(json.dumps(report), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(4096) or stop.set())
    try:
        await asyncio.wait_for(stop.wait(), args.hold_max)
    except asyncio.TimeoutError:
        pass
    loop.remove_reader(sys.stdin.fileno())
    for w in held:
        try:
            w.write(TERMINATE)
            w.close()
        except Exception:
            pass
    await asyncio.sleep(0.2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--user", default="postgres")
    p.add_argument("--dbname", default="bench")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--timeout", type=float, default=20.0, help="per connection, seconds")
    p.add_argument("--hold-max", type=float, default=600.0, help="seconds")
    args = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 100
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            sys.exit(f"idle_clients: RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
