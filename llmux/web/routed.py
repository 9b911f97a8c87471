"""Routed requests at the WSGI level, without Flask's request and response objects.

Usage::

    app.wsgi_app = Dispatch(gateway.route, app.wsgi_app)

Flask answers llmux's own endpoints (``/health``, ``/metrics``, ``/v1/models``,
``/llmux/...``) and every ``OPTIONS`` request; everything else is a request
for a model, or a path nobody serves, and goes through :class:`Dispatch`: no
request context, URL map, request or response object is built for it. Profiling
the non-streamed path showed Flask and Werkzeug taking about a tenth of the
CPU of a routed request; see docs/data-plane.md.

An answer is an :class:`Answer` (status, header list, body iterable). The
headers every answer gets (``X-Request-Id``, the model's state and queue wait,
CORS) come from :func:`common_headers`, which Flask's ``after_request`` uses
too, and an :class:`~llmux.errors.LlmuxError` becomes its envelope in
:func:`error_answer` and nowhere else.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from werkzeug.http import HTTP_STATUS_CODES, remove_entity_headers
from werkzeug.urls import iri_to_uri
from werkzeug.wsgi import ClosingIterator

from ..errors import LlmuxError
from ..telemetry import logs
from . import cors, inbound
from .exchange import request_id_from

log = logging.getLogger("llmux.app")

# What a request keeps in its WSGI environ: its config snapshot and its Exchange.
CONFIG, EXCHANGE = "llmux.config", "llmux.exchange"
# The methods llmux routes; any other gets 405 from Flask.
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
ROUTED_METHODS = frozenset(ALL_METHODS) - {"OPTIONS"}
# PATH_INFO values Flask's own routes answer, with or without a trailing slash
# (any method: a method none of them takes falls through to the routed view
# there, as it always did)
LOCAL_PATHS = frozenset({"/health", "/metrics", "/v1/models", "/llmux"})
LOCAL_PREFIXES = ("/v1/models/", "/llmux/")


@dataclass
class Answer:
    """A response before ``start_response``: ``status`` (an HTTP status code),
    ``headers`` (name, value pairs, in order) and ``body`` (an iterable of bytes,
    closed by the WSGI server). ``reason`` replaces the standard reason phrase."""

    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes]
    reason: str | None = None

    @property
    def status_line(self) -> str:
        """``"200 OK"``, with Werkzeug's upper-case phrases (``"599 UNKNOWN"``)."""
        reason = self.reason or HTTP_STATUS_CODES.get(self.status, "unknown").upper()
        return f"{self.status} {reason}"


def error_answer(error: LlmuxError) -> Answer:
    """The OpenAI error envelope for ``error``, with ``Retry-After`` on every 429 and 503."""
    body = json.dumps(error.envelope(), separators=(",", ":")).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    retry_after = error.retry_after
    if retry_after is None and error.status in (429, 503):
        # every 429 and 503 says when to come back; 1 s where nothing better is
        # known (shutting down: a restart's new worker takes about that long)
        retry_after = 1
    if retry_after is not None:
        headers.append(("Retry-After", str(max(0, math.ceil(retry_after)))))
    # nginx's name for 499; Werkzeug would send "499 UNKNOWN"
    reason = "Client Closed Request" if error.status == 499 else None
    return Answer(error.status, headers, [body], reason)


def failed(environ: dict, error: LlmuxError) -> Answer:
    """Answer a request with ``error``: stop reading its body, close its exchange."""
    inbound.stop_reading(environ)
    exchange = environ.get(EXCHANGE)
    if exchange is not None:
        outcome = "error"
        if error.status == 499:
            outcome = exchange.aborted or "client_closed"
        exchange.close(error.status, outcome, error.code)
    return error_answer(error)


def unexpected(environ: dict) -> Answer:
    """Answer a request whose handling raised an unexpected exception (being handled)."""
    log.exception("unexpected error", extra={"event": "internal_error"})
    return failed(environ, LlmuxError("internal error in llmux; see its log"))


def common_headers(environ: dict, status: int, admin: bool) -> list[tuple[str, str]]:
    """The headers llmux sets on every answer, replacing any of the same name
    (``Vary`` is merged instead): ``X-Request-Id``; a routed request's
    ``X-Llmux-Model-State`` and ``X-Llmux-Queue-Wait-Ms``; CORS headers, except on
    an answered preflight and on ``admin`` paths (never readable by another origin)."""
    headers = [("X-Request-Id", logs.request_id.get() or "")]
    exchange = environ.get(EXCHANGE)
    if exchange is not None and exchange.arrived_state is not None:
        headers.append(("X-Llmux-Model-State", exchange.arrived_state))
        wait = exchange.queue_wait()
        if wait is not None:
            headers.append(("X-Llmux-Queue-Wait-Ms", str(round(wait * 1000))))
    config = environ.get(CONFIG)
    answered_preflight = status == 204 and cors.is_preflight(environ)
    if config is not None and not answered_preflight and not admin:
        headers.extend(cors.response_headers(environ, config.cors))
    return headers


def merge_headers(headers: list[tuple[str, str]], extra: list[tuple[str, str]]) -> None:
    """Set each of ``extra`` in ``headers`` in place, as Werkzeug's ``headers[name] =``
    does (the first of that name is replaced, the others dropped); a ``Vary`` is
    added to the existing one's field names."""
    for name, value in extra:
        low = name.lower()
        found = [i for i, (n, _) in enumerate(headers) if n.lower() == low]
        if low == "vary":
            fields = [f.strip() for i in found for f in headers[i][1].split(",") if f.strip()]
            if value.lower() not in {f.lower() for f in fields}:
                fields.append(value)
            value = ", ".join(fields)
        if not found:
            headers.append((name, value))
            continue
        headers[found[0]] = (name, value)
        for i in reversed(found[1:]):
            del headers[i]


def begin(environ: dict, config) -> None:
    """What every request gets first, routed or Flask's: ``config`` as its snapshot
    (whatever a reload does meanwhile), its client socket's timeout and
    ``TCP_NODELAY``, and its request id."""
    environ[CONFIG] = config
    inbound.prepare_client_socket(environ, config.proxy.client_timeout)
    logs.request_id.set(request_id_from(environ.get("HTTP_X_REQUEST_ID")))


def is_local(environ: dict) -> bool:
    """Whether Flask answers this request: one of its paths, ``OPTIONS``, or a method
    llmux does not route (405)."""
    path = environ.get("PATH_INFO", "")
    return (
        environ["REQUEST_METHOD"] not in ROUTED_METHODS
        or path.rstrip("/") in LOCAL_PATHS
        or path.startswith(LOCAL_PREFIXES)
    )


def wsgi_headers(environ: dict, answer: Answer) -> list[tuple[str, str]]:
    """``answer``'s headers as Werkzeug would send them for this status (RFC 9110
    §8.6: no ``Content-Length`` on a 1xx or 204; no entity headers on a 304)."""
    headers = answer.headers
    status = answer.status
    for i, (name, value) in enumerate(headers):
        if name.lower() in ("location", "content-location"):
            headers[i] = (name, iri_to_uri(value))
    if 100 <= status < 200 or status == 204:
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    elif status == 304:
        remove_entity_headers(headers)
    return headers


def body_of(environ: dict, answer: Answer) -> Iterable[bytes]:
    """The body to send: none for HEAD, 1xx, 204 and 304 (``answer.body`` is then
    closed by the WSGI server all the same)."""
    status = answer.status
    if environ["REQUEST_METHOD"] == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return ClosingIterator((), getattr(answer.body, "close", None))
    return answer.body


class Dispatch:
    """The WSGI layer in front of Flask: routed requests are answered here.

    ``route(environ, config) -> Answer`` handles one routed request (it raises
    :class:`~llmux.errors.LlmuxError` to refuse it); ``config()`` is the config
    a new request is handled with; ``local`` is Flask's WSGI app.
    """

    def __init__(self, route: Callable, config: Callable, local):
        self.route = route
        self.config = config
        self.local = local

    def __call__(self, environ, start_response):
        if is_local(environ):
            return self.local(environ, start_response)
        config = self.config()
        begin(environ, config)
        answer = None
        try:
            answer = self._answer(environ, config)
            headers = wsgi_headers(environ, answer)
            merge_headers(headers, common_headers(environ, answer.status, admin=False))
        except Exception:  # answering failed too: the plainest envelope, and nothing held
            log.exception("unexpected error in an answer", extra={"event": "internal_error"})
            close = getattr(answer and answer.body, "close", None)
            if close is not None:
                close()  # a relay's: that closes the exchange
            answer = error_answer(LlmuxError("internal error in llmux; see its log"))
            headers = [*answer.headers, ("X-Request-Id", logs.request_id.get() or "")]
        start_response(answer.status_line, headers)
        return body_of(environ, answer)

    def _answer(self, environ: dict, config) -> Answer:
        try:
            return self.route(environ, config)
        except LlmuxError as error:
            return failed(environ, error)
        except Exception:
            return unexpected(environ)
