"""Views of the test site: one ORM write and reads per request."""

import os

import psycopg
from django.db import connection, transaction
from django.http import HttpResponse

from .models import Note

# Decoys for the IN-lists of the long query: enough of them that its SQL is
# well over 512 bytes even before psycopg turns each %s into $n.
ABSENT_IDS = [-i for i in range(1, 121)]
ABSENT_TEXTS = [f"absent-{i}" for i in range(120)]


def health(request):
    """Answers without touching the database: gunicorn is up."""
    return HttpResponse("up", content_type="text/plain")


class StatementLog:
    """execute_wrapper recording, for each statement run, whether psycopg
    bound its parameters client-side and how long its SQL is."""

    def __init__(self):
        self.statements = []  # (client-side binding, SQL bytes, has parameters)

    def __call__(self, execute, sql, params, many, context):
        client_side = isinstance(context["cursor"].cursor, psycopg.ClientCursor)
        self.statements.append((client_side, len(sql.encode()), bool(params)))
        return execute(sql, params, many, context)

    def binding(self):
        kinds = {"client" if client else "server" for client, _, _ in self.statements}
        return kinds.pop() if len(kinds) == 1 else "mixed:" + ",".join(sorted(kinds))

    def longest_with_params(self):
        """Bytes of the longest SQL sent with parameters; Django's %s
        placeholders are no longer than psycopg's $n, so the SQL the server
        gets is at least this long."""
        sizes = [size for _, size, with_params in self.statements if with_params]
        return max(sizes, default=0)


def note(request, n):
    """Creates note-N, reads it back in the same transaction and after the
    commit, once more through a long query with a parameter per IN-list item,
    and answers `ok note-N` when everything read matches.

    Headers tell how psycopg bound the parameters (X-Db-Binding) and how long
    the longest parameterised SQL was (X-Db-Longest-Param-Sql)."""
    text = f"note-{n}"
    log = StatementLog()
    with connection.execute_wrapper(log):
        with transaction.atomic():
            created = Note.objects.create(text=text, worker_pid=os.getpid())
            same_tx = Note.objects.get(pk=created.pk)
        fetched = Note.objects.get(pk=created.pk)
        long_query = list(
            Note.objects.filter(
                pk__in=[*ABSENT_IDS, created.pk], text__in=[*ABSENT_TEXTS, text]
            ).values_list("pk", "text", "worker_pid")
        )
        with connection.cursor() as cur:
            cur.execute("SELECT current_setting('TimeZone')")
            (tz,) = cur.fetchone()

    problems = []
    for what, got in (("in its transaction", same_tx), ("after commit", fetched)):
        if (got.text, got.worker_pid, got.created) != (text, os.getpid(), created.created):
            problems.append(
                f"{what}: read {got.text!r} {got.worker_pid} {got.created!r}, "
                f"wrote {text!r} {os.getpid()} {created.created!r}"
            )
    if long_query != [(created.pk, text, os.getpid())]:
        problems.append(f"the IN-list query read {long_query!r}")
    if tz != "UTC":
        problems.append(f"session TimeZone is {tz!r}, Django set 'UTC'")
    if problems:
        return HttpResponse("; ".join(problems), status=500, content_type="text/plain")
    response = HttpResponse(f"ok {text}", content_type="text/plain")
    response["X-Db-Binding"] = log.binding()
    response["X-Db-Longest-Param-Sql"] = str(log.longest_with_params())
    return response
