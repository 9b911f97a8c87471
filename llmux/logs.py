"""Log configuration shared by gunicorn (its error and access logs) and llmux.

Usage, in ``gunicorn.conf.py``::

    logconfig_dict = logging_config("json")     # or "text"

JSON lines go to stderr, one object per record, with ``timestamp``, ``level``,
``logger``, ``message`` and, for llmux's events, ``event`` plus its fields.
Imports nothing heavy: gunicorn's master reads this before gevent patches.
"""

from __future__ import annotations

FORMATS = ("json", "text")


def logging_config(fmt: str = "json", level: str = "INFO") -> dict:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    formatters = {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "timestamp", "levelname": "level", "name": "logger"},
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
            "json_ensure_ascii": True,  # a newline or control byte stays escaped: one line
        },
        "text": {
            "format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            "datefmt": "%Y-%m-%d %H:%M:%S",
        },
    }
    handler = {"class": "logging.StreamHandler", "formatter": fmt, "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {fmt: formatters[fmt]},
        "handlers": {"stderr": handler},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            # urllib3 says "Connection pool is full" and retries at WARNING: ours to report
            "urllib3": {"level": "ERROR"},
        },
    }
