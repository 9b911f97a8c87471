"""Loading progress for a streaming request that waits for a switch (``stream_loading``).

Usage::

    admission = Admission(switcher, "qwen", cancelled=client_gone)
    if admission.settle():                      # admitted, or failed, at once
        ticket = admission.take()               # the Ticket, or raises the LlmuxError
    else:                                       # queued: answer now, stream the wait
        body = LoadingRelay(exchange, admission, environ, send)
        return Response(body, 200, headers=HEADERS)

The response headers go out at once (200, ``text/event-stream``), then an SSE
comment line every second while the request waits (every SSE client ignores
lines that start with ``:``; HTML Living Standard §9.2.6)::

    : llmux {"model":"qwen","state":"waking","position":1,"queued":3,
             "eta_secs":4.2,"hook_progress":0.42}              (one line)
    : llmux {"admitted":true,"queue_wait_ms":5120}

then the backend's own stream, byte for byte. An error before the backend's
stream began (the switch failed, the queue timed out, the backend refused the
request) can no longer change the status: it ends the stream with one error
event in the shape the client's SDK raises on, and no ``[DONE]``:
``data: {"error": {...}}`` (OpenAI), or ``event: error`` with
``{"type": "error", "error": {...}}`` on ``/v1/messages`` (Anthropic).
A backend that fails after its stream began cuts the response, as everywhere.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator

from ..errors import BackendRefused, ClientGone, LlmuxError
from .exchange import body_outcome
from .upstream import Reply, UpstreamAborted

log = logging.getLogger("llmux.loading")

# the endpoints that answer "stream": true with SSE; elsewhere (embeddings) a
# backend answers JSON whatever the body says, which early SSE headers would break
STREAMING_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
)
PROGRESS_EVERY = 1.0  # seconds between two progress comments
SETTLE_SECS = 5.0  # the longest wait for acquire() to say "queued" or "admitted"
ERROR_BODY_BYTES = 64 * 1024  # of a backend's error answer, put into the error event
HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
)
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class Admission:
    """``Switcher.acquire`` in a thread of its own (a greenlet under gevent).

    The request's own greenlet can then write progress to its client while the
    request waits in the queue. Exactly one side ends up with the ticket: the
    caller through :meth:`take`, or, once the caller :meth:`abandon` ed it,
    nobody (it is released here).
    """

    def __init__(self, switcher, model: str, weight: float = 1.0):
        self.switcher = switcher
        self.model = model
        self.weight = weight  # the request's priority weight
        self.waiter = None  # the switcher's Waiter once queued
        self._lock = threading.Lock()
        self._changed = threading.Event()  # queued, or done
        self._done = threading.Event()
        self._ticket = None
        self._error: LlmuxError | None = None
        self._abandoned = False
        # in the request's context: the switcher's log lines about it carry its request id
        run = contextvars.copy_context().run
        threading.Thread(target=run, args=(self._run,), name="llmux-admission", daemon=True).start()

    def _run(self) -> None:
        try:
            ticket = self.switcher.acquire(self.model, queued=self._queued, weight=self.weight)
        except LlmuxError as exc:
            self._error = exc
        except Exception:
            log.exception("waiting for %s failed", self.model, extra={"event": "internal_error"})
            self._error = LlmuxError("internal error in llmux; see its log")
        else:
            with self._lock:
                if self._abandoned:
                    ticket.release()
                else:
                    self._ticket = ticket
        self._done.set()
        self._changed.set()

    def _queued(self, waiter) -> None:
        """``acquire``'s callback (the switcher's lock held); abandoned already: leave."""
        with self._lock:
            if self._abandoned:
                raise ClientGone("client disconnected while queued")
            self.waiter = waiter
        self._changed.set()

    def settle(self, timeout: float = SETTLE_SECS) -> bool:
        """Wait until the request is queued or done; True if done (admitted or failed)."""
        self._changed.wait(timeout)
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        """True once done; False if still queued after ``timeout`` seconds."""
        return self._done.wait(timeout)

    def take(self):
        """The ticket (the caller releases it); raises the error if the wait failed."""
        if self._error is not None:
            raise self._error
        with self._lock:
            ticket, self._ticket = self._ticket, None
        if ticket is None:
            raise LlmuxError("admission taken twice or before it was done")
        return ticket

    def abandon(self) -> None:
        """Nobody will take the ticket: leave the queue at once, or release it.

        Callable from any greenlet, any number of times.
        """
        with self._lock:
            self._abandoned = True
            ticket, self._ticket = self._ticket, None
            waiter = self.waiter
        if ticket is not None:
            ticket.release()
        elif waiter is not None:
            self.switcher.cancel(waiter)  # a no-op once admitted or failed

    def progress(self) -> dict:
        """The switcher's :meth:`~llmux.engine.switcher.Switcher.progress` for this request."""
        if self.waiter is None:
            return {"model": self.model}
        return self.switcher.progress(self.waiter)


class LoadingRelay:
    """The body of an answer whose headers went out before its request was admitted.

    The WSGI iterable; ``close()`` closes the exchange. ``send`` sends the
    request once admitted and returns the backend's :class:`~llmux.web.upstream.Reply`
    (or raises an :class:`~llmux.errors.LlmuxError`).
    """

    def __init__(self, exchange, admission: Admission, environ: dict, send: Callable[[], Reply]):
        self.exchange = exchange
        self.admission = admission
        self.environ = environ
        self.send = send
        self.anthropic = exchange.path.startswith("/v1/messages")
        self._chunks: Iterator[bytes] | None = None
        self._error: LlmuxError | None = None
        self._streaming = False  # the backend's stream began
        self._finished = False
        self._failed = False

    @property
    def finished(self) -> bool:
        """True once the whole answer (the backend's stream, or the error event) was handed on."""
        return self._finished

    def __iter__(self) -> Iterator[bytes]:
        self._chunks = self._relay()
        return self._chunks

    def _relay(self) -> Iterator[bytes]:
        exchange, admission = self.exchange, self.admission
        yield _comment(admission.progress())
        while not admission.wait(PROGRESS_EVERY):
            yield _comment(admission.progress())
        try:
            exchange.admitted(admission.take(), self.environ)
            yield _comment({"admitted": True, "queue_wait_ms": round(exchange.waited * 1000)})
            exchange.reply = reply = self.send()
            if reply.status != 200 or _mimetype(reply.headers) != "text/event-stream":
                raise _backend_error(reply)
        except Exception as exc:
            if not isinstance(exc, LlmuxError):  # a bug: logged, never shown to the client
                log.exception("waiting stream failed", extra={"event": "internal_error"})
                exc = LlmuxError("internal error in llmux; see its log")
            self._error = exc
            if exc.status != 499:  # else nobody is there to read it
                yield self._error_event(exc)
            self._finished = True
            return
        exchange.headers_sent()
        self._streaming = True
        try:
            yield from reply.chunks()
        except UpstreamAborted:
            self._failed = True
            raise
        self._finished = True

    def _error_event(self, error: LlmuxError) -> bytes:
        if self.anthropic:
            kind = _ANTHROPIC_TYPES.get(error.status, "api_error")
            event = {"type": "error", "error": {"type": kind, "message": error.message}}
            return b"event: error\ndata: " + _dumps(event) + b"\n\n"
        return b"data: " + _dumps(error.envelope()) + b"\n\n"

    def close(self) -> None:
        error = sys.exc_info()[1]  # gunicorn calls this from a finally, as for Relay
        if self._chunks is not None:
            self._chunks.close()
        exchange = self.exchange  # its close() abandons the admission too
        status = exchange.reply.status if exchange.reply is not None else 200
        if self._error is not None:
            outcome = "client_closed" if self._error.status == 499 else "error"
            exchange.close(self._error.status, outcome, self._error.code)
            return
        outcome = body_outcome(exchange, error, finished=self._finished, failed=self._failed)
        exchange.close(status if self._streaming else 499, outcome)


def _comment(fields: dict) -> bytes:
    return b": llmux " + _dumps(fields) + b"\n\n"


def _dumps(data) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _mimetype(headers) -> str:
    for name, value in headers:
        if name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower()
    return ""


def _backend_error(reply: Reply) -> BackendRefused:
    """The backend's answer without a stream, read up to ``ERROR_BODY_BYTES``."""
    parts, size = [], 0
    try:
        for chunk in reply.chunks():
            parts.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_BYTES:
                break
    except UpstreamAborted:
        pass
    body = b"".join(parts)[:ERROR_BODY_BYTES]
    text = body.decode("utf-8", "replace")
    message = f"the backend answered {reply.status} without a stream: {text[:500]}"
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        inner = data["error"]
        return BackendRefused(reply.status, str(inner.get("message", message)), data)
    return BackendRefused(reply.status, message)
