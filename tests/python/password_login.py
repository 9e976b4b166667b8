#!/usr/bin/env python3
"""Logs in to pgwake with psycopg 3 (libpq underneath) as a user with a
password, once with the right password and once with a wrong one.

With the right one, runs `select current_user, 6 * 7` and prints
`login ok: <current_user> <answer>`; with the wrong one, prints
`wrong password refused: <libpq's message>`. Exit status 0 only when the
right password was accepted and the wrong one refused.

Usage: password_login.py --port PORT --dbname DB --user USER
                         --password PW --wrong-password PW
"""

import argparse
import sys

import psycopg


def connect(args, password):
    return psycopg.connect(
        host="127.0.0.1",
        port=args.port,
        dbname=args.dbname,
        user=args.user,
        password=password,
        sslmode="disable",
        connect_timeout=10,
        application_name="password_login.py",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--wrong-password", required=True)
    args = parser.parse_args()

    with connect(args, args.password) as conn:
        user, answer = conn.execute("select current_user::text, 6 * 7").fetchone()
        print(f"login ok: {user} {answer}", flush=True)

    try:
        connect(args, args.wrong_password).close()
    except psycopg.OperationalError as e:
        message = " ".join(str(e).split())
        print(f"wrong password refused: {message}", flush=True)
        return 0
    print("wrong password accepted", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
