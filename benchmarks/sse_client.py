"""Many concurrent SSE streams from one thread, timed per chunk on raw sockets.

Usage::

    result = run_streams(port=3000, streams=256, chunks=100, gap_ms=20, model="a")
    result.ttfb, result.chunk_latency, result.glued, result.completed

An HTTP library may buffer; a raw non-blocking socket sees each ``recv`` as
it happens, so the time a chunk arrives is the time of the ``recv`` that
completed it. Each event carries the backend's ``time.monotonic()`` when it
was sent, the same clock as here.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import time
from dataclasses import dataclass, field

SENT = re.compile(rb'"content":"([0-9]+\.[0-9]+)"')  # the backend's send time


@dataclass
class StreamsResult:
    streams: int
    completed: int = 0
    failed: int = 0
    ttfb: list[float] = field(default_factory=list)  # request sent -> first body byte
    chunk_latency: list[float] = field(default_factory=list)  # backend send -> arrival
    glued: int = 0  # chunks sent >= 10 ms after the previous one, yet read together with it
    spaced: int = 0  # chunks sent >= 10 ms after the previous one
    chunks: int = 0
    seconds: float = 0.0


class _Stream:
    __slots__ = ("sock", "started", "buf", "head_done", "events", "last_sent", "done")

    def __init__(self, sock):
        self.sock = sock
        self.started = 0.0
        self.buf = b""
        self.head_done = False
        self.events = 0
        self.last_sent = None
        self.done = False


def run_streams(
    port: int,
    streams: int,
    chunks: int,
    gap_ms: float,
    model: str = "a",
    path: str = "/v1/chat/completions",
    deadline_secs: float = 120.0,
    ramp_secs: float = 0.0,
) -> StreamsResult:
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "messages": [],
            "bench": {"chunks": chunks, "gap_ms": gap_ms},
        }
    ).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    result = StreamsResult(streams)
    sel = selectors.DefaultSelector()
    pending: list[_Stream] = []
    try:
        for _ in range(streams):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending.append(_Stream(sock))
        start = time.monotonic()
        step = ramp_secs / streams if streams else 0
        unsent = 0  # requests go out spread over the ramp, while earlier streams are read
        open_streams = streams
        deadline = start + deadline_secs + ramp_secs
        while open_streams and time.monotonic() < deadline:
            now = time.monotonic()
            while unsent < streams and now >= start + unsent * step:
                s = pending[unsent]
                s.started = time.monotonic()
                s.sock.sendall(request)
                s.sock.setblocking(False)
                sel.register(s.sock, selectors.EVENT_READ, s)
                unsent += 1
            wait = 1.0 if unsent == streams else max(0.0, start + unsent * step - now)
            for key, _ in sel.select(timeout=wait):
                s = key.data
                now = time.monotonic()
                try:
                    data = s.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    _feed(s, data, now, result)
                if s.done or not data:  # [DONE], or the connection ended without it
                    sel.unregister(s.sock)
                    open_streams -= 1
                    result.completed += s.done
                    result.failed += not s.done
        result.seconds = time.monotonic() - start
        result.failed += open_streams
    finally:
        for s in pending:
            s.sock.close()
        sel.close()
    return result


def _feed(s: _Stream, data: bytes, now: float, result: StreamsResult) -> None:
    """Take one ``recv``'s bytes; every event completed by them arrived ``now``."""
    s.buf += data
    if not s.head_done:
        head_end = s.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        if not s.buf.startswith(b"HTTP/1.1 200"):
            s.buf = b""  # never done: counted as failed when the connection ends
            return
        s.head_done = True
        s.buf = s.buf[head_end + 4 :]
    # chunked framing is ignored: events are found by their SSE delimiter; the time
    # to first byte is taken at the first event
    glued_here = False
    while True:
        end = s.buf.find(b"\n\n")
        if end < 0:
            break
        event, s.buf = s.buf[: end + 2], s.buf[end + 2 :]
        if b"[DONE]" in event:
            s.done = True
            continue
        match = SENT.search(event)
        if match is None:
            continue
        sent = float(match.group(1))
        if s.events == 0:
            result.ttfb.append(now - s.started)
        result.chunk_latency.append(now - sent)
        result.chunks += 1
        if s.last_sent is not None and sent - s.last_sent >= 0.010:
            result.spaced += 1
            if glued_here:
                result.glued += 1
        glued_here = True  # a later event completed by this same recv is glued to this one
        s.last_sent = sent
        s.events += 1
