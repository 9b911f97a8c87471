"""Checking what a client sent before anything is forwarded or switched.

Usage::

    path = routed_path(environ, extra_paths)          # NotFound unless allowlisted
    kind = body_kind(environ.get("CONTENT_TYPE", ""))  # "json" | "form", or UnsupportedMediaType
    headers = request_headers(environ)                # [(name, value)], as Werkzeug names them
    refuse_cross_site(environ, listed)                # Forbidden
    body = read_body(environ, limit)                  # RequestTooLarge, InvalidBody
    u = urgency(environ)                              # 0-7 from the Priority header

Every check raises an :class:`~llmux.errors.LlmuxError`; none touches the switcher.
Paths are matched on the raw request target, so encoded or dotted variants of an
allowed path (``/v1/%2e%2e/slots``, ``//v1/...``) are never routed anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import http_sf
from gunicorn.http.errors import NoMoreData, ParseException

from ..engine.cost_aware import DEFAULT_URGENCY
from ..errors import (
    Forbidden,
    InvalidBody,
    NotFound,
    RequestBodyTimeout,
    RequestTooLarge,
    UnsupportedMediaType,
    clip,
)
from ..polling import readable
from . import content_coding, forms

log = logging.getLogger("llmux.inbound")

ROUTED_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/rerank",
    "/v1/score",
    "/v1/audio",
    "/v1/images",
    "/tokenize",
    "/detokenize",
)
_CANONICAL = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,=:@-]+)+")
READ_BYTES = 64 * 1024


def routed_path(environ: dict, extra_paths: Iterable[str] = ()) -> str:
    """The canonical path of a request for a routed endpoint, or :class:`NotFound`."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    if "://" in raw.split("?", 1)[0]:  # absolute-form target: keep only its path
        raw = urlsplit(raw).path or "/"
    path = raw.split("?", 1)[0]
    if _CANONICAL.fullmatch(path) and not any(seg in (".", "..") for seg in path.split("/")):
        for prefix in (*ROUTED_PATHS, *extra_paths):
            if path == prefix or path.startswith(prefix + "/"):
                return path
    raise NotFound(f"no route for {clip(path)}{hint(path, extra_paths)}")


def hint(path: str, extra_paths: Iterable[str] = ()) -> str:
    """`` (did you mean /v1/...?)`` when ``path`` lacks the ``/v1`` a routed path has (a
    client's base URL without ``/v1``), else ``""``."""
    prefixed = "/v1" + path
    for prefix in (*ROUTED_PATHS, *extra_paths):
        if prefixed == prefix or prefixed.startswith(prefix + "/"):
            return f" (did you mean {clip(prefixed)}? a client's base URL ends in /v1)"
    return ""


def urgency(environ: dict) -> int:
    """The urgency (0 most urgent - 7) of the request's ``Priority`` header, RFC 9218 §4.1.

    The header is a Structured Field Dictionary (RFC 8941), parsed by ``http_sf``;
    as RFC 9218 §4 asks, a header that does not parse, or a ``u`` that is not an
    integer 0-7, counts as absent: the default urgency 3. Other members
    (``i``, extensions) are ignored.
    """
    value = environ.get("HTTP_PRIORITY")
    if not value:
        return DEFAULT_URGENCY
    try:
        members = http_sf.parse(value.encode("latin-1"), tltype="dictionary")
    except (http_sf.StructuredFieldError, ValueError, UnicodeEncodeError):
        return DEFAULT_URGENCY
    u = members.get("u", (DEFAULT_URGENCY, {}))[0]
    if isinstance(u, int) and not isinstance(u, bool) and 0 <= u <= 7:
        return u
    return DEFAULT_URGENCY


def body_kind(content_type: str) -> str:
    """``"json"`` or ``"form"`` (multipart/form-data) from a request's Content-Type;
    else 415. JSON is what Werkzeug's ``is_json`` says: ``application/json`` or
    ``application/*+json``."""
    kind = mimetype(content_type)
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return "json"
    if forms.is_form(content_type):
        return "form"
    shown = f"'{clip(content_type)}'" if content_type else "none"
    raise UnsupportedMediaType(
        f"Content-Type must be application/json or multipart/form-data, got {shown}"
    )


def mimetype(content_type: str) -> str:
    """The media type of a ``Content-Type`` value, lower-case, without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def request_headers(environ: dict) -> list[tuple[str, str]]:
    """The request's headers from its WSGI environ, named as Werkzeug's
    ``EnvironHeaders`` names them (``HTTP_X_API_KEY`` is ``X-Api-Key``)."""
    headers = []
    for key, value in environ.items():
        if key[:5] == "HTTP_":
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                headers.append((key[5:].replace("_", "-").title(), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers.append((key.replace("_", "-").title(), value))
    return headers


def refuse_cross_site(environ: dict, listed: Callable[[str], bool] = lambda _: False) -> None:
    """403 for a request a browser sends on behalf of another site, unless ``listed``
    says its ``Origin`` is allowed (``cors.allow_origins``).

    Any web page can make a browser POST a form to 127.0.0.1, and so make
    llmux switch models (run hooks). Browsers say where such a request comes
    from: ``Sec-Fetch-Site`` (Fetch Metadata, sent by every current browser)
    other than ``same-origin`` or ``none`` (typed by the user), or an
    ``Origin`` that is not this server's own. Clients that are not browsers
    (SDKs, curl) send neither and are not affected.
    """
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None and listed(origin.strip()):
        return
    site = environ.get("HTTP_SEC_FETCH_SITE", "").strip().lower()
    if site and site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site requests are refused (Sec-Fetch-Site: {clip(site, 32)})")
    if origin is not None:
        host = environ.get("HTTP_HOST", "")
        if urlsplit(origin.strip()).netloc.lower() != host.lower() or not host:
            raise Forbidden(f"cross-origin requests are refused (Origin: {clip(origin, 64)})")


def read_body(environ: dict, limit: int, timeout: float | None = None) -> bytes:
    """The whole request body, decoded, refusing more than ``limit`` bytes (413).

    A body sent with ``Content-Encoding`` is decoded (:mod:`llmux.web.content_coding`),
    and ``limit`` applies to the decoded size too.

    A declared ``Content-Length`` over the limit is refused before reading
    anything; a chunked body is counted while it is read. Under gevent, the
    whole body must arrive within ``timeout`` seconds (408): a client sending a
    byte now and then never trips an inactivity timeout, a total one it does.
    A body that ends early (short of its ``Content-Length``, or inside its
    chunks) or whose chunked framing is malformed is :class:`InvalidBody`.
    """
    try:
        with _deadline(timeout):
            body = _read_body(environ, limit)
    except RequestBodyTimeout:
        environ["llmux.body_unread"] = True
        raise
    except TimeoutError:  # the client socket's own deadline: nothing came for that long
        environ["llmux.body_unread"] = True
        raise RequestBodyTimeout("request body stopped arriving") from None
    except ParseException as exc:  # gunicorn's chunked-body parser: what follows is garbage
        environ["llmux.body_unread"] = True
        raise InvalidBody(f"malformed chunked request body ({type(exc).__name__})") from None
    except NoMoreData:  # the connection ended inside the chunked body
        raise InvalidBody("request body ended before its last chunk") from None
    coding = environ.get("HTTP_CONTENT_ENCODING")
    return content_coding.decode(body, coding, limit) if coding else body


@contextlib.contextmanager
def _deadline(seconds: float | None):
    gevent_monkey = sys.modules.get("gevent.monkey")
    if seconds is None or gevent_monkey is None or not gevent_monkey.is_module_patched("socket"):
        yield  # plain threads (tests with Flask's client): no way to interrupt a read
        return
    import gevent

    error = RequestBodyTimeout(f"request body not received within {seconds:g}s")
    with gevent.Timeout(seconds, error):
        yield


def _read_body(environ: dict, limit: int) -> bytes:
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared:
        try:
            length = int(declared)
        except ValueError:
            raise InvalidBody("invalid Content-Length") from None
        if length > limit:
            environ["llmux.body_unread"] = True
            raise RequestTooLarge(f"request body of {length} bytes exceeds {limit} bytes")
    stream = environ["wsgi.input"]
    parts, size = [], 0
    while True:
        part = stream.read(min(READ_BYTES, limit + 1 - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
        if size > limit:
            environ["llmux.body_unread"] = True
            raise RequestTooLarge(f"request body exceeds {limit} bytes")
    if declared and size < length:  # RFC 9112 §8: the connection closed early; incomplete
        raise InvalidBody(f"request body ended after {size} of its {length} bytes")
    return b"".join(parts)


def client_gone_probe(environ: dict) -> Callable[[], bool] | None:
    """A check that the client closed its connection while we made it wait.

    An HTTP/1.1 client sends nothing while it waits for its response, so a
    readable socket that yields no byte means it hung up.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None

    def gone() -> bool:
        try:
            return bool(readable([sock], 0)) and closed_by_peer(sock)
        except (OSError, ValueError):
            return True

    return gone


def closed_by_peer(sock) -> bool:
    """For a readable client socket: True if the client closed it (no byte to read).

    An HTTP/1.1 client sends nothing while it waits for its answer; a pipelined
    next request is data, not a close, and is left in the socket.
    """
    try:
        return sock.fileno() < 0 or sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:  # spurious readiness: nothing there after all
        return False
    except (OSError, ValueError):
        return True


class ClientWatch:
    """Calls ``on_gone`` once if the client hangs up before its answer ends.

    While a request waits for its model, or while a backend processes a long
    prompt or stalls, nothing is written to the client, so a client that left
    would only be noticed at the next write: a queued request would keep its
    place (and could cause a switch), the backend would work for nobody and
    the model's drain would wait. One thread (a greenlet under gevent) checks
    every watched connection each ``every`` seconds with a single ``poll()``
    over all of them; a probe per waiting request, each in its own greenlet
    ten times a second, cost a core with a thousand requests queued.
    """

    __slots__ = ("fired", "sock", "_on_gone")

    def __init__(self, sock, on_gone: Callable[[], None]):
        self.fired = False
        self.sock = sock
        self._on_gone = on_gone
        _WATCHER.add(self)

    def gone(self) -> bool:
        """True if the client closed the connection (readable, yet no byte)."""
        return closed_by_peer(self.sock)

    def fire(self) -> None:
        self.fired = True
        self._on_gone()

    def stop(self) -> None:
        _WATCHER.discard(self)


class _Watcher:
    """The one thread behind every :class:`ClientWatch`, started on first use."""

    def __init__(self, every: float = 0.1):
        self.every = every
        self._watches: set[ClientWatch] = set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, watch: ClientWatch) -> None:
        with self._lock:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="llmux-client-watch", daemon=True
                )
                self._thread.start()

    def discard(self, watch: ClientWatch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            with self._lock:
                watches = list(self._watches)
            if watches:
                self._check(watches)

    def _check(self, watches: list[ClientWatch]) -> None:
        """One ``poll()`` for all; only readable connections are looked at further."""
        by_fd: dict[int, list[ClientWatch]] = {}
        for watch in watches:
            try:
                by_fd.setdefault(watch.sock.fileno(), []).append(watch)
            except (OSError, ValueError):
                by_fd.setdefault(-1, []).append(watch)
        closed = by_fd.pop(-1, [])
        ready = readable(list(by_fd), 0) if by_fd else []
        for watch in closed + [w for fd in ready for w in by_fd[fd]]:
            try:
                if watch in self._watches and (watch in closed or watch.gone()):
                    self.discard(watch)
                    watch.fire()
            except Exception:  # one broken watch must not stop the others
                log.exception("client watch failed", extra={"event": "client_watch_failed"})
                self.discard(watch)


_WATCHER = _Watcher()


def watch_client(environ: dict, on_gone: Callable[[], None]) -> ClientWatch | None:
    """A :class:`ClientWatch` for this request, or None where the socket is unknown."""
    sock = environ.get("gunicorn.socket")
    return None if sock is None else ClientWatch(sock, on_gone)


def prepare_client_socket(environ: dict, timeout: float) -> None:
    """Give the client's connection a deadline for every operation, and no Nagle.

    gunicorn's gevent worker leaves client sockets without a timeout: a client
    that stops reading (but keeps its connection open) would block the write
    of its answer, and so hold its request's slot, for as long as it lives.
    With ``timeout`` (``proxy.client_timeout``) every send or receive on the
    socket fails with :class:`TimeoutError` once it has waited that long;
    a write of up to 64 KiB that a client does not take in time cuts it.
    gunicorn writes each body chunk with one ``sendall``, whose deadline covers
    the whole chunk (gevent's ``_socketcommon._sendall``): unlike nginx's
    ``send_timeout`` (between two successive writes), a client that reads
    slower than 64 KiB per timeout is cut too.

    Nagle's algorithm is off: a response goes out in several small writes
    (headers, then each chunk); with Nagle on, a write waits for the ACK of
    the previous one, which the client delays by up to 40 ms: every short
    answer took 40-90 ms longer and stream chunks arrived in bunches. nginx's
    ``tcp_nodelay`` is on for the same reason.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return
    try:
        sock.settimeout(timeout)
    except (OSError, AttributeError):
        pass
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # a Unix socket has no Nagle


def stop_reading(environ: dict) -> None:
    """Refuse the rest of a body we will not read, so keep-alive does not drain it."""
    sock = environ.get("gunicorn.socket")
    if sock is not None and environ.get("llmux.body_unread"):
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
