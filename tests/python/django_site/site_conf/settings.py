"""Settings of a minimal Django site whose database is reached through pgwake.

The database is pgwake's listener: no password (pgwake trusts local clients
and logs in to the server itself), and CONN_MAX_AGE = 0 so every request opens
and closes its own connection, as many deployments do in front of a pooler.
Host, port, database and user come from DJANGO_DB_* environment variables.

DJANGO_DB_SERVER_SIDE_BINDING=1 turns on psycopg 3 server-side binding: every
query with parameters then goes out as Parse/Bind/Execute with $n
placeholders instead of having its values inlined by the client.
"""

import os

SECRET_KEY = "pgwake-test-site-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["notes"]
MIDDLEWARE = []
ROOT_URLCONF = "site_conf.urls"
WSGI_APPLICATION = "site_conf.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("DJANGO_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DJANGO_DB_PORT", "6432"),
        "NAME": os.environ.get("DJANGO_DB_NAME", "app"),
        "USER": os.environ.get("DJANGO_DB_USER", "app"),
        "PASSWORD": "",
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"connect_timeout": 10},
    }
}

_binding = os.environ.get("DJANGO_DB_SERVER_SIDE_BINDING", "0")
if _binding not in ("0", "1"):
    # A typo must not silently test the default binding instead.
    raise ValueError(f"DJANGO_DB_SERVER_SIDE_BINDING must be 0 or 1, not {_binding!r}")
if _binding == "1":
    DATABASES["default"]["OPTIONS"]["server_side_binding"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Errors (tracebacks of failed requests) to stderr, where the test collects them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING"}},
}
