"""The bookkeeping of one routed request, from arrival to the end of its answer.

Usage::

    exchange = Exchange(metrics, method="POST", path="/v1/chat/completions")
    exchange.model = "llama"          # once the body named a configured model
    exchange.headers_sent()           # time to first byte
    exchange.finish(200, "completed") # metrics and the request_finished log event

``finish`` runs once, wherever the request ends: the end of the relayed body,
an upstream failure mid-stream, a client that left, or an error answer.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

log = logging.getLogger("llmux.request")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-Id`` when it is short and plain, else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class Exchange:
    def __init__(self, metrics, *, method: str, path: str, clock=time.monotonic):
        self.metrics = metrics
        self.method = method
        self.path = path
        self.clock = clock
        self.started = clock()
        self.model: str | None = None
        self.waited = 0.0
        self.ttfb: float | None = None
        self.finished = False

    def headers_sent(self) -> None:
        self.ttfb = self.clock() - self.started
        if self.model is not None:
            self.metrics.request_headers_sent(self.model, self.ttfb)

    def finish(self, status: int, outcome: str, code: str | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        seconds = self.clock() - self.started
        if self.model is None:  # not a request for a configured model: no metrics
            return
        self.metrics.request_finished(self.model, status, seconds)
        fields = {
            "event": "request_finished",
            "model": self.model,
            "status": status,
            "outcome": outcome,
            "method": self.method,
            "path": self.path,
            "duration_secs": round(seconds, 6),
            "wait_secs": round(self.waited, 6),
        }
        if self.ttfb is not None:
            fields["ttfb_secs"] = round(self.ttfb, 6)
        if code:
            fields["code"] = code
        level = logging.INFO if status < 500 else logging.WARNING
        log.log(level, "%s %s -> %s (%s)", self.method, self.path, status, outcome, extra=fields)
