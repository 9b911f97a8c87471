"""Streaming through llmux: timing, raw bytes, cut streams and clients that leave."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import time

import psutil
import pytest
from openai import OpenAI

from tests.support import wait_for

pytestmark = pytest.mark.e2e


def test_openai_client_streams_chunks_as_the_backend_sends_them(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 20"})
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert client.chat.completions.create(model="a", messages=[]).choices[0].message.content
    stream = client.chat.completions.create(
        model="a", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=12
    )
    arrivals = []
    text = ""
    for chunk in stream:
        extra = chunk.model_extra or {}
        arrivals.append((time.time(), extra["x_sent_at"]))
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        assert chunk.object == "chat.completion.chunk" and extra["x_served_by"] == "a"
    assert len(arrivals) == 13 and text.startswith("the quick brown")
    delays = [got - sent for got, sent in arrivals]
    # the client may start reading a little late (first use of the SDK); once it
    # reads, every chunk must arrive right after the backend sent it
    assert sorted(delays)[len(delays) // 2] < 0.05, f"chunks were held back: {delays}"
    assert max(delays[len(delays) // 2 :]) < 0.1, f"chunks were held back: {delays}"
    # 20 tokens/s: the stream is spread over ~0.6 s, not delivered in one block at the end
    assert arrivals[-1][0] - arrivals[0][0] > 0.45


def test_sse_headers(llmux):
    r = llmux.chat("a", stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/event-stream"
    assert r.headers["X-Accel-Buffering"] == "no"
    assert r.headers.get("Transfer-Encoding") == "chunked"
    assert r.text.rstrip().endswith("data: [DONE]")


def test_gzip_bytes_pass_through_with_their_header(llmux):
    r = llmux.session.post(
        llmux.url + "/v1/chat/completions",
        json={"model": "a", "messages": [], "fake": {"gzip": True}},
        headers={"Accept-Encoding": "gzip"},
        stream=True,
    )
    assert r.headers["Content-Encoding"] == "gzip"
    raw = r.raw.read(decode_content=False)
    assert raw[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(raw))["x_served_by"] == "a"


def test_redirects_are_passed_back_not_followed(llmux):
    r = llmux.session.post(
        llmux.url + "/v1/chat/completions",
        json={"model": "a", "fake": {"redirect": "http://127.0.0.1:9/elsewhere"}},
        allow_redirects=False,
    )
    assert r.status_code == 302 and r.headers["Location"] == "http://127.0.0.1:9/elsewhere"


def test_backend_errors_pass_through_untouched(llmux):
    r = llmux.chat("a", fake={"status": 422})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "fake failure" and r.json()["x_served_by"] == "a"


def read_raw_stream(port, body: dict, *, limit_secs=10.0, version="1.1") -> bytes:
    """Everything the client gets on the socket, until llmux closes it."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=limit_secs)
    try:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/{version}\r\nHost: x\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data
    finally:
        sock.close()


def test_chunked_answers_pass_through_on_one_connection_each_way(llmux):
    """The backend's chunks reach the client framed as it sent them: each answer ends
    with a well-formed last chunk, the client's keep-alive connection and llmux's
    pooled backend connection are both reused, and gunicorn's access log counts the
    payload bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", llmux.port, timeout=10)
    body = json.dumps({"model": "a", "stream": True, "messages": []})
    bodies, local_ends = [], set()
    try:
        for _ in range(3):
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked"
            bodies.append(r.read())  # http.client refuses a malformed or unfinished body
            assert not r.will_close
            local_ends.add(conn.sock.getsockname())
    finally:
        conn.close()
    assert all(b.rstrip().endswith(b"data: [DONE]") for b in bodies)
    assert len(local_ends) == 1, "the client's keep-alive connection was not kept"
    assert len(worker_connections_to(llmux, llmux.port_of("a"))) == 1
    wait_for(lambda: len(_access_lines(llmux)) >= 3)
    assert [int(line.split()[-1]) for line in _access_lines(llmux)[-3:]] == [len(b) for b in bodies]


def _access_lines(server) -> list[str]:
    """The 'request line, status, bytes' of gunicorn's access log lines for streams."""
    messages = [r["message"] for r in server.log_records() if r["logger"] == "gunicorn.access"]
    return re.findall(r'"POST /v1/chat/completions HTTP/1.1" 200 \d+', "\n".join(messages))


def test_an_http_1_0_client_gets_the_stream_unframed_until_the_connection_closes(llmux):
    data = read_raw_stream(
        llmux.port, {"model": "a", "stream": True, "messages": []}, version="1.0"
    )
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
    assert body.startswith(b"data: ") and body.rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize("fault", [{"abort_after": 3}, {"exit_after": 3}])
def test_a_backend_failure_mid_stream_cuts_the_client_stream(llmux, fault):
    data = read_raw_stream(llmux.port, {"model": "a", "stream": True, "fake": fault})
    assert data.startswith(b"HTTP/1.1 200")
    assert b'"x_seq": 2' in data
    assert b"[DONE]" not in data, "llmux invented a clean end"
    assert not data.endswith(b"0\r\n\r\n"), "llmux sent the final chunk of a broken stream"
    llmux.fault("alive", "a", None)
    # and llmux is fine afterwards
    assert llmux.chat("b").status_code == 200


def worker_connections_to(server, port) -> list:
    master = psutil.Process(server.proc.pid)
    conns = []
    for worker in master.children():
        conns += [
            c
            for c in worker.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        ]
    return conns


def test_a_client_leaving_mid_stream_releases_its_ticket_and_the_upstream(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 10 --tokens 200"})
    backend_port = server.port_of("a")
    r = server.stream("a")
    lines = r.iter_lines()
    got = [next(lines) for _ in range(3)]
    assert got[0].startswith(b"data: ")
    assert worker_connections_to(server, backend_port)
    r.close()  # the client goes away; the stream had ~20 s left
    started = time.monotonic()
    # a switch needs a's in-flight count back at 0: it would wait ~20 s otherwise
    assert server.chat("b", max_tokens=1).status_code == 200
    assert time.monotonic() - started < 5
    wait_for(lambda: not worker_connections_to(server, backend_port), timeout=5)


def test_a_client_leaving_a_silent_stream_frees_it_at_once(llmux):
    """Nothing is written while the backend is silent; llmux still notices the hang-up."""
    r = llmux.stream("a", fake={"stall_after": 1})
    lines = r.iter_lines()
    assert next(lines).startswith(b"data: ")
    r.close()  # the backend stays silent for an hour
    started = time.monotonic()
    assert llmux.chat("b").status_code == 200  # a's drain did not wait for the stall
    assert time.monotonic() - started < 4
    finished = [x for x in llmux.log_records() if x.get("event") == "request_finished"]
    assert finished[0]["model"] == "a" and finished[0]["outcome"] == "client_closed"
