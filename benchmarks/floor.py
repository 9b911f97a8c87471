"""The floor of llmux's runtime shape: the smallest proxy gunicorn, gevent and requests allow.

Usage (the harness runs it)::

    BACKEND_PORT=18500 gunicorn -k gevent -w 1 -b 127.0.0.1:18600 benchmarks.floor:app

One WSGI function: read the body, forward it through ``requests``' transport
adapter, stream the answer back with ``raw.read1``, Nagle off, no access log.
No routing, checks, switcher, metrics or logs. Whatever this adds over
calling the backend directly, llmux cannot add less in the same runtime
shape; the benchmarks report it next to llmux to show how close llmux is.
"""

from __future__ import annotations

import os
import socket

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

ADAPTER = HTTPAdapter(pool_maxsize=1024)
URL = f"http://127.0.0.1:{os.environ.get('BACKEND_PORT', '0')}/v1/chat/completions"


def app(environ, start_response):
    environ["gunicorn.socket"].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = environ["wsgi.input"].read()
    prepared = requests.PreparedRequest()
    prepared.method, prepared.url, prepared.body = "POST", URL, body
    prepared.headers = CaseInsensitiveDict(
        {"Content-Type": "application/json", "Content-Length": str(len(body))}
    )
    prepared.hooks, prepared._cookies = {"response": []}, None
    response = ADAPTER.send(prepared, stream=True, timeout=(5, 900), proxies={})
    start_response(
        f"{response.status_code} OK", [("Content-Type", response.headers["Content-Type"])]
    )

    def relay():
        try:
            yield b""
            while chunk := response.raw.read1(65536, decode_content=False):
                yield chunk
        finally:
            response.close()

    return relay()
