"""Log configuration shared by gunicorn (its error and access logs) and llmux.

Usage, in ``gunicorn.conf.py``::

    logconfig_dict = logging_config("json")     # or "text"

JSON lines go to stderr, or to a file (``log_file``), one object per record,
with ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and, for
llmux's events, ``event`` plus its fields. Every record logged while a request
is handled carries its ``request_id``. Untrusted text cannot forge lines: JSON
escapes control characters, and the text format escapes them in messages.

Imports nothing heavy: gunicorn's master reads this before gevent patches.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re

FORMATS = ("json", "text")

# Set per request by the app; gevent gives each greenlet its own context.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records logged on behalf of a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True


class SequenceFilter(logging.Filter):
    """Numbers every record a process writes: ``pid`` and ``seq``, consecutive per process.

    ``llmux timeline`` reads a gap in a process's numbers as lines lost, and a new
    ``pid`` as a restart. A forked worker goes on counting from where its master was.
    """

    _counter = itertools.count(1)  # one per process: the handler's filter, shared by all

    def filter(self, record: logging.LogRecord) -> bool:
        record.pid = os.getpid()
        record.seq = next(self._counter)
        return True


class ClientTimeoutFilter(logging.Filter):
    """gunicorn's "Socket error processing request." for a client socket timeout, quietly.

    A client that stalls past ``proxy.client_timeout`` (or an idle keep-alive
    connection, when that timeout is shorter than gunicorn's ``keepalive``) is
    an expected event, but gunicorn logs any socket error without an errno as
    an ERROR with a traceback. This turns those records into one INFO line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, TimeoutError):
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "client connection timed out (proxy.client_timeout)", ()
            record.event = "client_timeout"
        return True


class TextFormatter(logging.Formatter):
    """Plain lines for people; control characters in messages are escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        line = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)
        event = getattr(record, "event", None)
        rid = getattr(record, "request_id", None)
        tags = " ".join(f"{k}={v}" for k, v in (("event", event), ("request_id", rid)) if v)
        return f"{line} [{tags}]" if tags else line


def logging_config(fmt: str = "json", level: str = "INFO", log_file: str | None = None) -> dict:
    """A ``logging.config.dictConfig`` dict: llmux's records and gunicorn's error and access
    logs, in format ``fmt`` (json|text), to stderr or to ``log_file``.

    A log file is written through the standard library's ``WatchedFileHandler``:
    opened for appending, one write per record, and reopened when the file at that
    path is no longer the one open (logrotate renamed it), so rotation by renaming
    loses and splits no line and needs no signal. gunicorn's ``USR1`` reopens it too.
    Raises ValueError for an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    formatters = {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": True,
            "json_ensure_ascii": True,
        },
        "text": {
            "()": "llmux.telemetry.logs.TextFormatter",
            "fmt": "%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            "datefmt": "%Y-%m-%d %H:%M:%S",
        },
    }
    handler: dict = {"formatter": fmt, "filters": ["request_id", "sequence"]}
    if log_file is None:
        handler.update({"class": "logging.StreamHandler", "stream": "ext://sys.stderr"})
    else:
        handler.update(
            {
                "class": "logging.handlers.WatchedFileHandler",
                "filename": log_file,
                "encoding": "utf-8",
            }
        )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": "llmux.telemetry.logs.RequestIdFilter"},
            "sequence": {"()": "llmux.telemetry.logs.SequenceFilter"},
            "client_timeout": {"()": "llmux.telemetry.logs.ClientTimeoutFilter"},
        },
        "formatters": {fmt: formatters[fmt]},
        "handlers": {"stderr": handler},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {
                "level": level,
                "handlers": ["stderr"],
                "filters": ["client_timeout"],
                "propagate": False,
            },
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            # urllib3 reports pool details at WARNING; llmux reports what matters
            "urllib3": {"level": "ERROR"},
        },
    }
