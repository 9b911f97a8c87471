"""One routed request, from arrival to the end of its answer, and everything it holds.

Usage::

    exchange = Exchange(metrics, method="POST", path="/v1/chat/completions")
    exchange.model = "llama"              # once the body named a configured model
    exchange.admitted(ticket, environ)    # holds the ticket, watches the client
    exchange.reply = upstream.send(..., cancel=exchange.cancel)
    return Response(exchange.relay(), ...)  # the body; WSGI closes it, and so the exchange
    ...
    exchange.close(404, "error", "model_not_found")   # an error answer instead

The exchange owns the in-flight ticket, the upstream reply, the client watch
and the request's bookkeeping, and :meth:`Exchange.close` releases all of them
exactly once, wherever the request ends: the end of the relayed body, an
upstream failure mid-stream, a client that left or stalled, an error answer,
or a response gunicorn never even started to send. Nothing is released in a
generator's ``finally``: a generator that never ran never gets there, while
WSGI servers call ``close()`` on the response iterable in every case, and
``llmux.web.app``'s outermost layer closes the exchange when not even an iterable
came back.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator

from ..errors import ClientGone
from . import inbound
from .upstream import Cancel, Reply, UpstreamAborted

log = logging.getLogger("llmux.request")

# The environ key of gunicorn's own response object (``gunicorn.http.wsgi.Response``),
# which llmux.web.app's outermost layer finds behind ``start_response``.
SERVER_RESPONSE = "llmux.server_response"

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-Id`` when it is short and plain, else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class Exchange:
    """The resources and bookkeeping of one routed request; see the module docstring.

    ``clock`` is monotonic seconds. Not thread-safe by design: one request is
    handled by one greenlet, and the client watch only calls :meth:`abort`,
    which never blocks.
    """

    def __init__(self, metrics, *, method: str, path: str, clock=time.monotonic):
        self.metrics = metrics
        self.method = method
        self.path = path
        self.clock = clock
        self.started = clock()
        self.model: str | None = None  # the configured model
        self.requested: str | None = None  # the name the client used: the model or an alias
        self.waited = 0.0
        self.arrived_state: str | None = None  # the model's state when it asked for it
        self.queued_at: float | None = None
        self.early = False  # its headers went out before it was admitted (stream_loading)
        self.admission = None  # loading.Admission while it waits that way
        self.ttfb: float | None = None
        self.ticket = None  # the switcher's Ticket once admitted
        self.reply: Reply | None = None
        self.cancel = Cancel()  # cuts the upstream connection
        self.aborted: str | None = None  # why abort() cut it
        self.body: Relay | None = None
        self._watch: inbound.ClientWatch | None = None
        self.waiter = None  # the switcher's Waiter while queued
        self._leave_queue = None  # Switcher.cancel
        self.closed = False

    def arrived(self, state: str, environ: dict, leave_queue) -> None:
        """It asks for its model now, which is in ``state`` (``X-Llmux-Model-State``).

        The client is watched from now on: if it leaves while queued, the
        request leaves the queue (``leave_queue(waiter)``, i.e.
        ``Switcher.cancel``); once admitted, the upstream connection is cut.
        """
        self.arrived_state = state
        self.queued_at = self.clock()
        self._leave_queue = leave_queue
        self._watch = inbound.watch_client(environ, on_gone=self._client_gone)

    def queued(self, waiter) -> None:
        """``acquire``'s ``queued`` callback (the switcher's lock held): its place in the queue.

        Raises :class:`~llmux.errors.ClientGone` if the client already left,
        which makes ``acquire`` take it out of the queue again.
        """
        if self._watch is not None and self._watch.fired:
            raise ClientGone("client disconnected while queued")
        self.waiter = waiter

    def _client_gone(self) -> None:
        """The client watch saw the client leave (the watch's greenlet)."""
        if self.ticket is not None:
            self.abort("client_closed")
        elif self.admission is not None:
            self.admission.abandon()
        elif self.waiter is not None and self._leave_queue is not None:
            self._leave_queue(self.waiter)

    def queue_wait(self) -> float | None:
        """Seconds it waited for its model (``X-Llmux-Queue-Wait-Ms``): until admitted,
        or, if never admitted, until now; None when unknown at header time."""
        if self.ticket is not None:
            return self.waited
        if self.queued_at is None or self.early:
            return None
        return self._unadmitted()

    def _unadmitted(self) -> float:
        """Seconds a request that was never admitted waited: from asking for its model
        until now (it ends as it leaves the queue); 0 if it never asked."""
        return 0.0 if self.queued_at is None else self.clock() - self.queued_at

    def admitted(self, ticket, environ: dict) -> None:
        """Hold ``ticket``; the client stays watched until the last byte."""
        self.ticket = ticket
        self.waited = ticket.waited
        if self._watch is None:
            self._watch = inbound.watch_client(environ, on_gone=self._client_gone)
        elif self._watch.fired:  # it left just as it was admitted
            self.abort("client_closed")

    def abort(self, reason: str) -> None:
        """Cut the upstream connection now (the client left); callable from any greenlet.

        Once the whole body was relayed there is nothing left to cut: a client
        leaving then does not change how the request ended.
        """
        body = self.body
        if self.aborted is None and not self.closed and not (body and body.finished):
            self.aborted = reason
            self.cancel.fire()

    def relay(self, server_response=None) -> Relay:
        """The response body iterable for the reply; closing it closes this exchange.

        ``server_response``: gunicorn's response object (``environ[SERVER_RESPONSE]``),
        or None under another WSGI server; see :class:`Relay`.
        """
        self.body = Relay(self, server_response)
        return self.body

    def headers_sent(self) -> None:
        self.ttfb = self.clock() - self.started
        if self.model is not None:
            self.metrics.request_headers_sent(self.model, self.ttfb)

    def close(self, status: int, outcome: str, code: str | None = None) -> None:
        """Release everything the request holds and record how it ended; once only.

        ``outcome``, for ``request_finished`` and ``llmux_request_outcomes_total``:
        ``completed`` (the whole answer was sent), ``error`` (llmux answered with
        an error of its own), ``client_closed`` (the client left first),
        ``client_stalled`` (a write to it blocked for ``proxy.client_timeout``),
        ``upstream_aborted`` (the backend failed after the response headers).
        """
        if self.closed:
            return
        self.closed = True
        try:
            if self.admission is not None:  # still queued, or admitted and not taken
                self.admission.abandon()
            if self._watch is not None:
                self._watch.stop()
            if self.reply is not None:
                self.reply.close()  # not read to the end: the connection is closed
        finally:
            self.cancel.disarm()
            if self.ticket is not None:
                self.ticket.release()
            self._finish(status, outcome, code)

    def _finish(self, status: int, outcome: str, code: str | None) -> None:
        seconds = self.clock() - self.started
        if self.model is None:  # not a request for a configured model: no metrics
            return
        self.metrics.request_finished(self.model, status, seconds, outcome)
        fields = {
            "event": "request_finished",
            "model": self.model,
            "status": status,
            "outcome": outcome,
            "method": self.method,
            "path": self.path,
            "duration_secs": round(seconds, 6),
            # never admitted (a queue timeout, a client gone): what it waited until now
            "wait_secs": round(
                self.waited if self.ticket is not None else min(self._unadmitted(), seconds), 6
            ),
        }
        if self.requested not in (None, self.model):
            fields["alias"] = self.requested
        if self.ttfb is not None:
            fields["ttfb_secs"] = round(self.ttfb, 6)
        if code:
            fields["code"] = code
        level = logging.INFO if status < 500 else logging.WARNING
        log.log(level, "%s %s -> %s (%s)", self.method, self.path, status, outcome, extra=fields)


class Relay:
    """The body of a relayed response, as the WSGI iterable; ``close()`` ends the exchange.

    Yields ``b""`` first, so gunicorn sends the headers before the first token.
    When gunicorn frames the body in chunks and the backend did too, the
    backend's chunks then go to the client socket as they arrived, framing and
    all (:meth:`~llmux.web.upstream.Reply.frames`), with gunicorn's byte count
    kept for its access log; gunicorn ends the body with its own last chunk.
    Otherwise (HTTP/1.0 clients, bodies with a length, other WSGI servers) it
    yields the reply's raw chunks for the server to frame. A backend failure
    mid-body propagates as :class:`~llmux.web.upstream.UpstreamAborted`, so the
    client sees a cut response; a failed or timed-out write to the client
    propagates as gunicorn's own would.
    """

    __slots__ = ("exchange", "_server", "_chunks", "_finished", "_failed")

    @property
    def finished(self) -> bool:
        """True once the backend's whole body was handed to the WSGI server."""
        return self._finished

    def __init__(self, exchange: Exchange, server_response=None):
        self.exchange = exchange
        self._server = server_response
        self._chunks: Iterator[bytes] | None = None
        self._finished = False
        self._failed = False

    def __iter__(self) -> Iterator[bytes]:
        self._chunks = self._relay()
        return self._chunks

    def _relay(self) -> Iterator[bytes]:
        exchange = self.exchange
        yield b""
        exchange.headers_sent()
        reply, server = exchange.reply, self._server
        try:
            if server is not None and server.chunked and reply.chunked:
                sock = server.sock
                for framed, payload in reply.frames():
                    sock.sendall(framed)
                    server.sent += payload
            else:
                yield from reply.chunks()
        except UpstreamAborted:
            self._failed = True
            raise
        self._finished = True

    def close(self) -> None:
        # gunicorn calls this from a ``finally``: a write that failed is the
        # exception being handled, and a socket timeout there is a stalled client.
        error = sys.exc_info()[1]
        if self._chunks is not None:
            self._chunks.close()
        exchange = self.exchange
        # never iterated: a body-less answer (HEAD, 204, 304)
        finished = self._finished or self._chunks is None
        outcome = body_outcome(exchange, error, finished=finished, failed=self._failed)
        exchange.close(exchange.reply.status if exchange.reply else 500, outcome)


def body_outcome(exchange: Exchange, error: BaseException | None, *, finished, failed) -> str:
    """How a relayed body ended, for :meth:`Exchange.close`, from its WSGI ``close()``.

    ``error`` is the exception being handled when gunicorn closed the body
    (``sys.exc_info()``): a socket timeout there is a stalled client.
    """
    if exchange.aborted is not None:  # the watch cut it: an upstream "end" is ours
        return exchange.aborted
    if error is None and finished:
        return "completed"
    if isinstance(error, TimeoutError):
        return "client_stalled"
    if failed:
        return "upstream_aborted"
    return "client_closed"
