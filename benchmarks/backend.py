"""A lean OpenAI-shaped backend for benchmarks: raw gevent sockets, no WSGI layer.

Usage::

    python -m benchmarks.backend --port 18500 [--slots 16]

``POST /v1/chat/completions`` with ``{"stream": false, "bench": {"delay_ms": 500}}``
answers a small completion after the delay (``"jitter": 0.5`` varies it by
±50 %); with ``"stream": true`` and ``{"chunks": 100, "gap_ms": 20}`` it
streams that many SSE events on a fixed schedule (no drift), each carrying in
its content the backend's ``time.monotonic()`` when it wrote the event (one
clock for every process on a Linux machine); ``"prefill_ms"`` delays its
headers, as prompt processing does. With ``--slots N`` at most N requests are
served at once, the rest wait in arrival order, as in vLLM's or llama.cpp's
own queue (the policy replay needs that; the proxy benchmarks do not).
Keep-alive, chunked framing, nothing else: its CPU cost per request and per
chunk stays far below a proxy's, so it is not what a benchmark measures.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.lock import Semaphore  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

SLOTS: Semaphore | None = None  # --slots

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


# Varied answer times from a low-discrepancy sequence, not random draws: any few
# hundred consecutive requests see the same spread, so paths measured one after
# the other are compared on equal work, not on luck.
SPREAD = ((k * 0.6180339887498949) % 1.0 for k in itertools.count())

CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench","choices":[{"index":0,"delta":{%s"content":"%.6f"},"finish_reason":null}]}'
    b"\n\n"
)
LAST = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


def handle(sock, _address) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvicorn and Go servers do
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            body, buf = buf[:length], buf[length:]
            request = json.loads(body or b"{}")
            knobs = request.get("bench") or {}
            if request.get("stream"):
                chunks, gap = int(knobs.get("chunks", 100)), knobs.get("gap_ms", 20) / 1000
                prefill = knobs.get("prefill_ms", 0) / 1000
                if SLOTS is None:
                    stream(sock, chunks, gap, prefill)
                else:
                    with SLOTS:
                        stream(sock, chunks, gap, prefill)
            else:
                delay = knobs.get("delay_ms", 0) / 1000
                jitter = knobs.get("jitter", 0)  # answers of varied length: delay × (1 ± jitter)
                if jitter:
                    delay *= 1 - jitter + 2 * jitter * next(SPREAD)
                if delay:
                    gevent.sleep(delay)
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
                )
    except (OSError, ValueError):
        pass
    finally:
        sock.close()


def stream(sock, chunks: int, gap: float, prefill: float = 0.0) -> None:
    if prefill:
        gevent.sleep(prefill)
    sock.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    start = time.monotonic()
    for i in range(chunks):
        wait = start + i * gap - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)
        # the send time rides in the content, which every OpenAI-aware proxy keeps
        event = CHUNK % (b'"role":"assistant",' if i == 0 else b"", time.monotonic())
        sock.sendall(b"%x\r\n%s\r\n" % (len(event), event))
    sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(LAST), LAST))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slots", type=int, default=0, help="streams served at once; 0: any")
    args = parser.parse_args()
    global SLOTS
    if args.slots > 0:
        SLOTS = Semaphore(args.slots)
    server = StreamServer(("127.0.0.1", args.port), handle, backlog=4096)
    server.serve_forever()


if __name__ == "__main__":
    main()
