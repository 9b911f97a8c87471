"""Forwarding one request to a backend on loopback and streaming its answer back.

Usage::

    upstream = Upstream(config.proxy)
    reply = upstream.send("POST", 8001, "/v1/chat/completions", "", headers, body)
    # reply.status, reply.headers: ready to send; reply.chunks(): raw body bytes
    ...
    reply.close()

Transport only: which backend and whether the request may go there is the
caller's business. ``requests``/``urllib3`` errors are translated here, once:
before response headers they become :class:`~llmux.errors.BadGateway` or
:class:`~llmux.errors.GatewayTimeout`; after them, :class:`UpstreamAborted`.

The body is read with ``raw.read1(..., decode_content=False)``: the bytes pass
through untouched (gzip stays gzip) and each chunk is handed on as soon as it
arrives. ``iter_content`` would hold back a close-delimited body until the end.
A chunked body can instead be read with its framing (:meth:`Reply.frames`), for a
client that gets it chunked too: nothing is decoded and framed again per chunk.
"""

from __future__ import annotations

import contextvars
import errno
import http.client
import logging
import re
import socket
import sys
import threading
from collections.abc import Iterable, Iterator

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from ..errors import BackendUnreachable, BadGateway, ClientGone, GatewayTimeout, clip
from .framing import ChunkScanner

log = logging.getLogger("llmux.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
CHUNK_BYTES = 64 * 1024
# Enough pooled connections per backend for hundreds of concurrent streams.
POOL_MAXSIZE = 1024


# Transport failures, by the type of the innermost exception (requests and urllib3
# wrap it): what the log and the client's message call it, and whether it is what
# a server does when it closes an idle keep-alive connection just as we reuse it
# (llama-server does this after every stream). Only such a failure, before a
# single response byte and on a reused connection, sends the request again, once,
# on a new connection: the server closed it without reading the request. First
# match wins (RemoteDisconnected is a ConnectionResetError).
FailureTypes = type[BaseException] | tuple[type[BaseException], ...]
TRANSPORT_FAILURES: tuple[tuple[FailureTypes, str, bool], ...] = (
    ((TimeoutError, urllib3.exceptions.TimeoutError), "timed out", False),
    (ConnectionRefusedError, "connection refused", False),
    (http.client.RemoteDisconnected, "closed the connection without a response", True),
    (ConnectionResetError, "connection reset", True),
    (BrokenPipeError, "broken pipe", True),
)
_reused = contextvars.ContextVar("llmux_connection_reused", default=False)
# The Cancel of the request this greenlet is sending, told which connection it uses.
_cancel: contextvars.ContextVar[Cancel | None] = contextvars.ContextVar(
    "llmux_upstream_cancel", default=None
)

# RFC 9110 §5.1 (field-name = token) and §5.5 (field-value: VCHAR, obs-text, SP, HTAB):
# what gunicorn, like any HTTP/1.1 server, refuses to send.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[ \t\x21-\x7e\x80-\xff]*")


class Cancel:
    """Cuts one request's upstream connection, from any greenlet, at any moment.

    The pool binds the socket of the connection the request uses (a pooled one
    when it is handed out, a new one once it is connected); :meth:`fire` shuts
    it down, which wakes a greenlet blocked sending the request, waiting for
    the response headers or reading the body, and the backend sees the
    connection close. Firing before a connection exists is remembered and
    applied on bind. The socket, not urllib3's connection object, is bound:
    urllib3 reconnects a closed connection object with a new socket.
    :meth:`disarm` forgets it as soon as urllib3 may pool the connection again
    (the body read to its end, an error, the request over), so a late fire
    cannot cut a later request's connection.
    """

    __slots__ = ("fired", "_sock", "_lock")

    def __init__(self):
        self.fired = False
        self._sock = None
        # gevent never switches inside these methods; plain threads (tests) might
        self._lock = threading.Lock()

    def bind(self, sock) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                _shutdown(self._sock)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            _shutdown(self._sock)

    def disarm(self) -> None:
        with self._lock:
            self._sock = None


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


def _shutdown(sock) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Connection(HTTPConnection):
    """Binds its socket to the sending request's :class:`Cancel` once connected.

    ``wire`` keeps the socket: ``http.client`` sets ``sock`` to None as soon as
    a response will end with the connection (``Connection: close``, or a body
    delimited by the close), while that response still reads from it.
    """

    wire = None

    def _new_conn(self) -> socket.socket:
        """urllib3's ``_new_conn`` for a numeric IPv4 host, without the name lookup.

        Under gevent, ``getaddrinfo`` runs in the hub's thread pool even for
        ``127.0.0.1``: a thread hand-off per new connection, with a burst of
        new connections queued on its few threads, and a few KB held per
        waiting connect. The socket options, timeout and exceptions are
        urllib3's (``ConnectTimeoutError``, ``NewConnectionError``).
        """
        if not _is_ipv4(self._dns_host) or self.source_address:
            return super()._new_conn()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            for option in self.socket_options or ():
                sock.setsockopt(*option)
            if self.timeout is not urllib3.util.timeout._DEFAULT_TIMEOUT:
                sock.settimeout(self.timeout)
            sock.connect((self._dns_host, self.port))
        except TimeoutError as e:
            sock.close()
            raise ConnectTimeoutError(
                self,
                f"Connection to {self.host} timed out. (connect timeout={self.timeout})",
            ) from e
        except OSError as e:
            sock.close()
            raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock

    def connect(self):
        super().connect()
        self.wire = self.sock
        cancel = _cancel.get()
        if cancel is not None:
            cancel.bind(self.sock)


class _TrackingPool(HTTPConnectionPool):
    """Notes, per greenlet, whether the connection it hands out was used before."""

    ConnectionCls = _Connection

    def _get_conn(self, timeout=None):
        conn = super()._get_conn(timeout)
        reused = getattr(conn, "sock", None) is not None
        _reused.set(reused)
        cancel = _cancel.get()
        if cancel is not None and reused:
            cancel.bind(conn.sock)
        return conn


class UpstreamAborted(ConnectionResetError):
    """The backend failed after the response headers went out.

    An ``OSError`` with ``ECONNRESET`` on purpose: gunicorn then closes the
    client's connection without the final chunk, quietly, so the client sees a
    cut stream and never a fake clean end.
    """

    def __init__(self, reason: str):
        super().__init__(errno.ECONNRESET, f"backend failed mid-response: {reason}")


def filter_headers(
    headers: Iterable[tuple[str, str]], drop: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers, those named in ``Connection``, and ``drop``."""
    headers = list(headers)
    listed = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in headers
        if (low := name.lower()) not in HOP_BY_HOP and low not in listed and low not in drop
    ]


def invalid_header(headers: Iterable[tuple[str, str]]) -> str | None:
    """The name of the first header no HTTP/1.1 server may send as is, or None."""
    for name, value in headers:
        if not _FIELD_NAME.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            return name
    return None


class Reply:
    """A backend's response whose headers have arrived; the body is still to read.

    Raises :class:`~llmux.errors.BadGateway` (the response closed) when a header
    could not be passed on: gunicorn would refuse it after the request had
    already taken its slot.
    """

    def __init__(
        self,
        response: requests.Response,
        idle_timeout: float,
        model: str,
        cancel: Cancel | None = None,
    ):
        self._response = response
        self._cancel = cancel
        self.status = response.status_code
        self.headers = filter_headers(
            response.raw.headers.items(), drop=frozenset({"content-length"})
        )
        if not 200 <= self.status <= 599:  # http.client hands on any 1xx but 100
            response.close()
            raise BadGateway(
                f"the backend of model '{model}' answered with status {self.status}, "
                "which llmux cannot pass on as a final answer"
            )
        bad = invalid_header(self.headers)
        if bad is not None:
            response.close()
            raise BadGateway(
                f"the backend of model '{model}' sent a response header that cannot be "
                f"passed on (invalid name or value): {clip(bad, 64)!r}"
            )
        _set_read_timeout(response, idle_timeout)

    def chunks(self) -> Iterator[bytes]:
        """Raw body bytes as they arrive; raises :class:`UpstreamAborted` on failure."""
        raw = self._response.raw
        cancel = self._cancel
        while True:
            try:
                chunk = raw.read1(CHUNK_BYTES, decode_content=False)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise UpstreamAborted(_failure(exc)[1]) from None
            if cancel is not None and raw.connection is None:
                # the last bytes are read and urllib3 pooled the connection, maybe
                # for another request by now: it is no longer ours to cut
                cancel.disarm()
                cancel = None
            if not chunk:
                return
            yield chunk

    @property
    def length(self) -> int | None:
        """The body's ``Content-Length``, to pass on as it is, or None (chunked, read to
        the close, or no body: HEAD, 1xx, 204, 304, where http.client counts 0).

        A body with a length is relayed as is, so the client can get the same
        header, and the WSGI server sends it without chunk framing. A body
        that ends early is then cut short, as a chunked one is.
        """
        original = self._response.raw._fp
        if original.chunked or original.length is None or original._method == "HEAD":
            return None
        if "transfer-encoding" in self._response.raw.headers:
            return None  # RFC 9112 §6.3: it overrides a length; http.client knows "chunked" only
        if self.status in (204, 304) or self.status < 200:
            return None
        return original.length

    @property
    def chunked(self) -> bool:
        """True when the backend frames the body in chunks (``Transfer-Encoding: chunked``)."""
        return bool(getattr(self._response.raw._fp, "chunked", False))

    def frames(self) -> Iterator[tuple[bytes, int]]:
        """A chunked body as the backend framed it: ``(framed bytes, payload bytes)``
        per read, up to the last chunk (see :mod:`llmux.web.framing`).

        Only for a :attr:`chunked` reply, instead of :meth:`chunks`. Reads the
        buffered socket file under ``http.client``'s response, so no chunk is
        decoded. At the end the connection goes back to the pool, as urllib3 does
        after :meth:`chunks`. Raises :class:`UpstreamAborted` on failure, on a
        malformed framing, or when the body ends before its last chunk.
        """
        raw = self._response.raw
        original = raw._fp  # http.client.HTTPResponse, headers read
        fp = original.fp
        scanner = ChunkScanner()
        while not scanner.done:
            try:
                # wait with peek(), which reads into the socket file's own buffer:
                # read1() would allocate a result of the buffer's size (8 KiB) before
                # waiting, per waiting stream; then take exactly what arrived
                data = fp.read1(len(fp.peek()))
            except (OSError, ValueError) as exc:  # ValueError: fp closed by a cut
                raise UpstreamAborted(_failure(exc)[1]) from None
            if not data:
                raise UpstreamAborted("the body ended before its last chunk")
            try:
                framed, payload = scanner.feed(data)
            except ValueError as exc:
                raise UpstreamAborted(f"malformed chunked body: {exc}") from None
            if framed:
                yield framed, payload
        if self._cancel is not None:
            self._cancel.disarm()  # before the connection can serve another request
            self._cancel = None
        if scanner.extra:  # bytes past the body: the connection is not reusable
            raw.close()
            return
        original._close_conn()  # http.client's state: this response is over
        raw.release_conn()

    def close(self) -> None:
        """Release the connection; one not read to the end is closed, not pooled."""
        self._response.close()


class Upstream:
    """One pooled HTTP client for all backends (they are all on 127.0.0.1).

    Requests go straight to ``requests``' transport adapter, not through a
    ``Session``: a session's work (merging environment proxies and default
    headers, a cookie jar, redirects, hooks) is exactly what a proxy must not
    do, and it cost a third of llmux's CPU per request. So ``HTTP_PROXY`` and
    the like never redirect backend traffic, the client's headers go out as
    they came, and no client's cookies are kept for the next.
    """

    def __init__(self, proxy_config):
        self.settings = proxy_config
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=POOL_MAXSIZE, max_retries=0)
        adapter.poolmanager.pool_classes_by_scheme = {"http": _TrackingPool}
        self._adapter = adapter

    def send(
        self,
        method: str,
        port: int,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        model: str,
        cancel: Cancel | None = None,
    ) -> Reply:
        """Send the request and wait for the response headers.

        ``cancel``, fired from elsewhere (the client left), cuts the connection
        at any point: this then raises :class:`~llmux.errors.ClientGone`.
        Raises :class:`BackendUnreachable`, :class:`~llmux.errors.BadGateway` or
        :class:`~llmux.errors.GatewayTimeout` when the backend fails first.
        """
        url = f"http://127.0.0.1:{port}{path}"
        if query:
            url = f"{url}?{query}"
        s = self.settings
        token = _cancel.set(cancel)
        try:
            response = self._send(method, url, headers, body, port, model, cancel)
        except BaseException:
            if cancel is not None:  # the failed connection goes back to urllib3
                cancel.disarm()
            raise
        finally:
            _cancel.reset(token)
        if cancel is not None:
            if cancel.fired:
                response.close()
                raise ClientGone("client disconnected before the backend answered")
            # urllib3 gives a connection back to the pool as soon as the body is
            # read (at once for a body-less answer): from then on it is not ours to cut
            if getattr(response.raw, "connection", None) is None:
                cancel.disarm()
        return Reply(response, s.idle_timeout, model, cancel)

    def _send(self, method, url, headers, body, port, model, cancel) -> requests.Response:
        s = self.settings
        for attempt in (1, 2):
            _reused.set(False)
            if cancel is not None and cancel.fired:
                raise ClientGone("client disconnected before the backend answered")
            try:
                return self._adapter.send(
                    _prepare(method, url, headers, body),
                    stream=True,
                    timeout=(s.connect_timeout, s.header_timeout),
                    proxies={},
                )
            except requests.exceptions.RequestException as exc:
                if cancel is not None and cancel.fired:  # we cut it ourselves
                    raise ClientGone("client disconnected before the backend answered") from None
                error = self._translate(exc, attempt, port, model)
                if error is not None:
                    raise error from None
        raise AssertionError("unreachable: the second attempt never retries")

    def _translate(self, exc: Exception, attempt: int, port: int, model: str):
        """llmux's error for a ``requests`` error, or None to send the request again."""
        s = self.settings
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return BackendUnreachable(f"the backend of model '{model}' did not accept a connection")
        if isinstance(exc, requests.exceptions.ReadTimeout):
            return GatewayTimeout(
                f"the backend of model '{model}' sent no response headers "
                f"within {s.header_timeout:g}s"
            )
        cause, reason, stale = _failure(exc)
        log.info("backend on port %d failed (attempt %d): %r", port, attempt, exc)
        if attempt == 1 and stale and _reused.get():
            return None  # the server had closed this pooled connection; it saw nothing
        if isinstance(cause, ConnectionRefusedError):
            return BackendUnreachable(f"the backend of model '{model}' refused the connection")
        return BadGateway(f"the backend of model '{model}' failed: {reason}")

    def close(self) -> None:
        self._adapter.close()


def _prepare(method: str, url: str, headers, body: bytes) -> requests.PreparedRequest:
    """The request exactly as the client sent it, framed anew by Content-Length."""
    prepared = requests.PreparedRequest()
    prepared.method = method
    prepared.url = url
    prepared.headers = CaseInsensitiveDict(headers)
    if body or method in ("POST", "PUT", "PATCH"):
        prepared.headers["Content-Length"] = str(len(body))
    prepared.body = body or None
    prepared.hooks = {"response": []}
    prepared._cookies = None
    return prepared


def _set_read_timeout(response: requests.Response, seconds: float) -> None:
    """From now on, ``seconds`` is the longest silence allowed between two chunks."""
    conn = getattr(response.raw, "connection", None)
    sock = getattr(conn, "sock", None) or getattr(conn, "wire", None)
    if sock is not None:
        try:
            sock.settimeout(seconds)
        except OSError:
            pass


def _failure(exc: BaseException) -> tuple[BaseException, str, bool]:
    """The innermost cause of a transport error (without urllib3's pool and object
    addresses), its name from :data:`TRANSPORT_FAILURES` (else its type's), and
    whether it is a stale pooled connection's."""
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if inner is None and len(exc.args) > 1 and isinstance(exc.args[1], BaseException):
            inner = exc.args[1]
        if inner is None or inner is exc:
            break
        exc = inner
    for types, reason, stale in TRANSPORT_FAILURES:
        if isinstance(exc, types):
            return exc, reason, stale
    return exc, type(exc).__name__, False
