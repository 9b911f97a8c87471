"""A small OpenAI-compatible server for demos, tests and benchmarks.

Usage::

    llmux fake-backend --port 8001 --model llama --latency-ms 50 --tokens-per-sec 40

It answers ``/health``, ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``, (not streamed) ``/v1/messages``, and
``/v1/audio/transcriptions`` and ``/translations`` (a fixed text for any form),
streaming Server-Sent Events of real ``chat.completion.chunk`` objects one
token at a time, as each token is
"produced". Every answer says who served it (``x_served_by``, header
``X-Fake-Model``) and carries the SHA-256 of the request body it got
(``x_body_sha256``); every stream chunk carries its send time (``x_sent_at``).

Tests inject faults per request with a ``fake`` object in the body, e.g.
``{"fake": {"status": 500}}``; see :data:`KNOBS`. It runs on gevent's WSGI
server without monkey-patching: all waiting goes through ``gevent.sleep``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import signal
import sys
import time

import gevent
from gevent.pywsgi import WSGIServer
from werkzeug.formparser import parse_form_data

from . import fake_gpu

KNOBS = {
    "status": "answer with this HTTP status and an error body",
    "exit_before_headers": "kill the whole server process before answering",
    "headers_delay_ms": "wait this long before sending response headers",
    "abort_after": "stream: close the connection after N chunks, without an end",
    "exit_after": "stream: kill the whole server process after N chunks",
    "stall_after": "stream: stop sending (for an hour) after N chunks",
    "gzip": "gzip the (non-streamed) body and say so in Content-Encoding",
    "redirect": "answer 302 with this Location",
    "echo_headers": "include the request headers received in the body",
    "set_cookie": "send this Set-Cookie header",
    "fast": "produce tokens without delay, whatever --tokens-per-sec says",
    "bad_header": "send a header whose value holds a control character (no proxy may pass it)",
}
WORDS = "the quick brown fox jumps over the lazy dog while llmux keeps the gpu busy".split()


class FakeBackend:
    def __init__(
        self,
        model: str,
        latency_ms: float,
        tokens_per_sec: float,
        tokens: int,
        access_log=None,
        chatty: bool = False,
    ):
        self.access_log = access_log
        self.chatty = chatty
        self.model = model
        self.latency = latency_ms / 1000.0
        self.gap = 1.0 / tokens_per_sec if tokens_per_sec > 0 else 0.0
        self.tokens = tokens

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ["REQUEST_METHOD"]
        if self.chatty:  # a log line per request on stdout, as C servers write them
            print(f"{method} {path}", flush=True)
        if path == "/health":
            return self._json(start_response, 200, {"status": "ok"})
        if path == "/v1/models" and method == "GET":
            data = [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}]
            return self._json(start_response, 200, {"object": "list", "data": data})
        handlers = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completion,
            "/v1/embeddings": self._embeddings,
            "/v1/messages": self._messages,
        }
        if method == "POST" and path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
            raw = environ["wsgi.input"].read()
            result = {
                "text": "the quick brown fox",
                "x_served_by": self.model,
                "x_body_sha256": hashlib.sha256(raw).hexdigest(),
                **_form_report(raw, environ.get("CONTENT_TYPE", "")),
            }
            return self._json(start_response, 200, result)
        if method != "POST" or path not in handlers:
            return self._json(start_response, 404, {"error": {"message": f"no route {path}"}})
        raw = environ["wsgi.input"].read()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._json(start_response, 400, {"error": {"message": "bad json"}})
        fake = body.get("fake") or {}
        extra = {"x_served_by": self.model, "x_body_sha256": hashlib.sha256(raw).hexdigest()}
        if self.access_log is not None:
            record = {"t": time.time(), "path": path, "model": body.get("model"), **extra}
            self.access_log.write(json.dumps(record) + "\n")
            self.access_log.flush()
        if fake.get("exit_before_headers"):
            os._exit(3)
        if fake.get("echo_headers"):
            extra["x_headers"] = {
                k[5:].replace("_", "-").title(): v
                for k, v in environ.items()
                if k.startswith("HTTP_")
            }
        if fake.get("headers_delay_ms"):
            gevent.sleep(fake["headers_delay_ms"] / 1000.0)
        if "redirect" in fake:
            start_response("302 Found", [("Location", fake["redirect"]), ("Content-Length", "0")])
            return [b""]
        if "status" in fake:
            status = int(fake["status"])
            return self._json(
                start_response, status, {"error": {"message": "fake failure"}, **extra}
            )
        return handlers[path](start_response, body, fake, extra)

    # --- endpoints ---

    def _count(self, body) -> int:
        wanted = body.get("max_tokens") or body.get("max_completion_tokens")
        return int(wanted) if isinstance(wanted, int) and wanted > 0 else self.tokens

    def _chat(self, start_response, body, fake, extra):
        n = self._count(body)
        if body.get("stream"):
            return self._stream(start_response, n, fake, extra, chat=True)
        gevent.sleep(self.latency + self._gap(fake) * n)
        text = self._text(n)
        result = {
            "id": f"chatcmpl-fake-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
            **extra,
        }
        return self._json(start_response, 200, result, gzipped=bool(fake.get("gzip")), fake=fake)

    def _completion(self, start_response, body, fake, extra):
        n = self._count(body)
        if body.get("stream"):
            return self._stream(start_response, n, fake, extra, chat=False)
        gevent.sleep(self.latency + self._gap(fake) * n)
        result = {
            "id": f"cmpl-fake-{time.monotonic_ns()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "text": self._text(n), "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
            **extra,
        }
        return self._json(start_response, 200, result, gzipped=bool(fake.get("gzip")), fake=fake)

    def _messages(self, start_response, body, fake, extra):
        """Anthropic's Messages API, not streamed."""
        n = self._count(body)
        gevent.sleep(self.latency + self._gap(fake) * n)
        result = {
            "id": f"msg_fake{time.monotonic_ns()}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", self.model),
            "content": [{"type": "text", "text": self._text(n)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": n},
            **extra,
        }
        return self._json(start_response, 200, result, fake=fake)

    def _embeddings(self, start_response, body, fake, extra):
        gevent.sleep(self.latency)
        inputs = body.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [b / 255.0 for b in hashlib.sha256(str(x).encode()).digest()[:8]],
            }
            for i, x in enumerate(inputs)
        ]
        result = {
            "object": "list",
            "data": data,
            "model": body.get("model", self.model),
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            **extra,
        }
        return self._json(start_response, 200, result, fake=fake)

    def _stream(self, start_response, n, fake, extra, *, chat):
        headers = [
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("X-Fake-Model", self.model),
        ]
        if fake.get("set_cookie"):
            headers.append(("Set-Cookie", fake["set_cookie"]))
        if fake.get("bad_header"):
            headers.append(("X-Debug", "a\x01b"))
        start_response("200 OK", headers)
        return self._events(n, fake, extra, chat)

    def _events(self, n, fake, extra, chat):
        ident = f"{'chatcmpl' if chat else 'cmpl'}-fake-{time.monotonic_ns()}"
        gevent.sleep(self.latency)
        for i in range(n + 1):
            if i == fake.get("abort_after"):
                raise ConnectionAbortedError("fake: abort mid-stream")
            if i == fake.get("exit_after"):
                os._exit(3)
            if i == fake.get("stall_after"):
                gevent.sleep(3600)
            if i:
                gevent.sleep(self._gap(fake))
            last = i == n
            word = "" if last else WORDS[i % len(WORDS)] + " "
            if chat:
                delta = {} if last else {"content": word}
                if i == 0:
                    delta["role"] = "assistant"
                choice = {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": word, "finish_reason": "stop" if last else None}
                obj = "text_completion"
            chunk = {
                "id": ident,
                "object": obj,
                "created": int(time.time()),
                "model": self.model,
                "choices": [choice],
                "x_seq": i,
                "x_sent_at": time.time(),
                **extra,
            }
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    # --- helpers ---

    def _gap(self, fake) -> float:
        return 0.0 if fake.get("fast") else self.gap

    def _text(self, n: int) -> str:
        return "".join(WORDS[i % len(WORDS)] + " " for i in range(n)).strip()

    def _json(self, start_response, status, data, *, gzipped=False, fake=None):
        payload = json.dumps(data).encode()
        headers = [("Content-Type", "application/json"), ("X-Fake-Model", self.model)]
        if gzipped:
            payload = gzip.compress(payload)
            headers.append(("Content-Encoding", "gzip"))
        if fake and fake.get("set_cookie"):
            headers.append(("Set-Cookie", fake["set_cookie"]))
        if fake and fake.get("bad_header"):
            headers.append(("X-Debug", "a\x01b"))
        headers.append(("Content-Length", str(len(payload))))
        start_response(f"{status} {'OK' if status < 400 else 'Error'}", headers)
        return [payload]


def _form_report(raw: bytes, content_type: str) -> dict:
    """What a multipart form held: its fields' values and its files' SHA-256."""
    _, form, files = parse_form_data(
        {"wsgi.input": io.BytesIO(raw), "CONTENT_LENGTH": str(len(raw)),
         "CONTENT_TYPE": content_type, "REQUEST_METHOD": "POST"}
    )  # fmt: skip
    return {
        "x_form_fields": {k: form.getlist(k) for k in form},
        "x_files": {k: hashlib.sha256(f.read()).hexdigest() for k, f in files.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llmux fake-backend", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="before the first token")
    parser.add_argument("--tokens-per-sec", type=float, default=0.0, help="0: as fast as possible")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer by default")
    parser.add_argument(
        "--startup-ms", type=float, default=0.0, help="'load time' before listening"
    )
    parser.add_argument("--access-log", help="append one JSON line per inference request here")
    parser.add_argument(
        "--chatty",
        action="store_true",
        help="print a line per request to stdout, and die of SIGPIPE when stdout is gone "
        "(as llama-server and other C servers do)",
    )
    parser.add_argument(
        "--gpu-ledger",
        help="a fake GPU's ledger (llmux.demo.fake_gpu): claim the memory the wake hook "
        "reserved under this backend's port, freed once this process is gone",
    )
    args = parser.parse_args(argv)
    if args.gpu_ledger and not fake_gpu.claim(args.gpu_ledger, str(args.port), os.getpid()):
        print(f"no fake GPU memory reserved for port {args.port}", file=sys.stderr, flush=True)
        sys.exit(1)
    if args.chatty:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.startup_ms:
        time.sleep(args.startup_ms / 1000.0)
    access_log = open(args.access_log, "a") if args.access_log else None  # noqa: SIM115
    app = FakeBackend(
        args.model, args.latency_ms, args.tokens_per_sec, args.tokens, access_log, args.chatty
    )
    server = WSGIServer((args.host, args.port), app, log=None)
    print(f"fake backend for {args.model} on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
