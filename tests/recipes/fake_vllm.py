"""A stand-in for a vLLM server in sleep mode, for testing the hook recipes.

Usage::

    python -m tests.recipes.fake_vllm --port 8000 --log calls.jsonl

It speaks the dev-mode endpoints the vLLM recipe uses (``/sleep?level=``,
``/wake_up[?tags=]``, ``/collective_rpc``, ``/reset_prefix_cache``,
``/is_sleeping``, ``/health``, ``/metrics``) and a chat endpoint whose answer
takes ``{"delay": seconds}``. Every call is appended to the log as one JSON
line, with what vLLM would get wrong: sleeping with requests in flight,
inference while asleep, or serving level-2 weights that were never reloaded.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TAGS = ("weights", "kv_cache")


class Engine:
    def __init__(self, log_path: str | None):
        self.lock = threading.Lock()
        self.asleep: set[str] = set()
        self.weights_valid = True  # False after a level-2 sleep until reload_weights
        self.running = 0
        self.log_path = log_path

    def log(self, **record) -> None:
        if self.log_path:
            with self.lock, open(self.log_path, "a") as fh:
                fh.write(json.dumps({"t": time.time(), **record}) + "\n")


class Handler(BaseHTTPRequestHandler):
    engine: Engine

    def log_message(self, *args):  # quiet
        pass

    def _answer(self, status: int, body: dict | str = "") -> None:
        data = body if isinstance(body, str) else json.dumps(body)
        raw = data.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if data else "text/plain")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        e, path = self.engine, urlsplit(self.path).path
        if path == "/health":
            return self._answer(200)
        if path == "/is_sleeping":
            return self._answer(200, {"is_sleeping": bool(e.asleep)})
        if path == "/metrics":
            text = (
                f'vllm:num_requests_running{{engine="0",model_name="fake"}} {float(e.running)}\n'
                'vllm:num_requests_waiting{engine="0",model_name="fake"} 0.0\n'
            )
            return self._answer(200, text)
        return self._answer(404, {"error": path})

    def do_POST(self):
        e = self.engine
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        e.log(method="POST", path=url.path, query=url.query, running=e.running,
              asleep=sorted(e.asleep))  # fmt: skip
        if url.path == "/sleep":
            level = int(query.get("level", ["1"])[0])
            with e.lock:
                if e.running:
                    e.log(violation="slept with requests in flight")
                e.asleep = set(TAGS)
                e.weights_valid = level == 1
            return self._answer(200)
        if url.path == "/wake_up":
            with e.lock:
                e.asleep -= set(query.get("tags", TAGS))
            return self._answer(200)
        if url.path == "/collective_rpc":
            if json.loads(body or b"{}").get("method") == "reload_weights":
                if "weights" in e.asleep:
                    e.log(violation="reload_weights while the weights sleep")
                e.weights_valid = True
            return self._answer(200, {"results": [None]})
        if url.path == "/reset_prefix_cache":
            return self._answer(200)
        if url.path in ("/v1/chat/completions", "/v1/completions"):
            if e.asleep:
                e.log(violation="inference while asleep")
                return self._answer(500, {"error": "engine is sleeping"})
            if not e.weights_valid:
                e.log(violation="inference on weights never reloaded")
            with e.lock:
                e.running += 1
            try:
                time.sleep(float(json.loads(body or b"{}").get("delay", 0)))
            finally:
                with e.lock:
                    e.running -= 1
            return self._answer(200, {"choices": [{"text": "ok", "index": 0}]})
        return self._answer(404, {"error": url.path})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log")
    parser.add_argument("--asleep", action="store_true", help="start asleep (level 1)")
    args = parser.parse_args()
    Handler.engine = Engine(args.log)
    if args.asleep:
        Handler.engine.asleep = set(TAGS)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
