"""Views of the test site: one ORM write and reads per request."""

import os

from django.db import connection, transaction
from django.http import HttpResponse

from .models import Note


def health(request):
    """Answers without touching the database: gunicorn is up."""
    return HttpResponse("up", content_type="text/plain")


def note(request, n):
    """Creates note-N, reads it back in the same transaction and after the
    commit, and answers `ok note-N` when everything read matches."""
    text = f"note-{n}"
    with transaction.atomic():
        created = Note.objects.create(text=text, worker_pid=os.getpid())
        same_tx = Note.objects.get(pk=created.pk)
    fetched = Note.objects.get(pk=created.pk)
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
    if tz != "UTC":
        problems.append(f"session TimeZone is {tz!r}, Django set 'UTC'")
    if problems:
        return HttpResponse("; ".join(problems), status=500, content_type="text/plain")
    return HttpResponse(f"ok {text}", content_type="text/plain")
