"""No wedge: nothing a client, a backend or a hook does leaves a slot held (issue: no wedge).

Each test drives one class of fault end to end through a real llmux (gunicorn,
gevent worker), real hooks and, where the fault lives in the backend, a real
socket backend in this process (:class:`RawBackend`), then shows the model's
in-flight count back at 0 and the next switch going through.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from tests.support import RawServer, free_port, wait_for

from .conftest import model_entry
from .test_errors import assert_error
from .test_telemetry import scrape, value

pytestmark = pytest.mark.e2e


def send_chat(sock, **body) -> None:
    """Write a chat completion request on a raw socket, as a client would."""
    data = json.dumps({"model": "a", **body}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )


def raw_entry(port: int) -> dict:
    """A model whose backend the test runs itself: its hooks have nothing to do."""
    return {"port": port, "wake": "true", "sleep": "true", "alive": "true"}


@pytest.fixture
def raw_backend():
    """A backend in this process: ``respond(backend, conn)`` answers each connection's
    first request, however a real backend never would."""
    started = []

    def start(respond):
        backend = RawServer(
            lambda server, conn: server.read_request(conn) and respond(server, conn)
        )
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.close()


def finished(server, model) -> list[dict]:
    return [
        r
        for r in server.log_records()
        if r.get("event") == "request_finished" and r.get("model") == model
    ]


def in_flight(server, model) -> int:
    return server.status()["models"][model]["in_flight"]


# --- 1. releasing never depends on a generator running ---


@pytest.mark.parametrize(
    "answer, named",
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"X-Debug: a\x01b\r\nContent-Length: 2\r\n\r\n{}",
            "X-Debug",
        ),
        # http.client hands on any 1xx but 100 as if it were the answer
        (
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            "103",
        ),
    ],
    ids=["control-character-in-a-header", "interim-status"],
)
def test_an_answer_gunicorn_could_not_pass_on_is_a_502_and_frees_the_slot(
    llmux_factory, raw_backend, answer, named
):
    backend = raw_backend(lambda backend, conn: conn.sendall(answer))
    server = llmux_factory({"raw": raw_entry(backend.port), "a": model_entry(free_port())})
    r = server.chat("raw")
    error = assert_error(r, 502, "bad_gateway")
    assert named in error["message"]
    assert in_flight(server, "raw") == 0
    assert [(x["status"], x["outcome"]) for x in finished(server, "raw")] == [(502, "error")]
    m = scrape(server)
    assert value(m, "llmux_requests_total", model="raw", status="502") == 1
    started = time.monotonic()
    assert server.chat("a").status_code == 200  # the switch away from raw is not held
    assert time.monotonic() - started < 5
    assert server.status()["active"] == "a"


# --- 2. writes to a client have a deadline ---


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "one-body"])
def test_a_client_that_stops_reading_is_cut_at_the_client_timeout(llmux_factory, stream):
    server = llmux_factory(
        # 2,000,000 tokens: far more than the socket buffers on both sides hold
        model_env={"FAKE_ARGS": "--tokens 2000000"},
        proxy={"client_timeout": 1},
    )
    assert server.chat("a", max_tokens=1).status_code == 200
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", server.port))
    try:
        send_chat(client, stream=stream)
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
        # ... and then reads nothing more, with its connection open
        wait_for(lambda: finished(server, "a")[1:], timeout=20)
        assert in_flight(server, "a") == 0
        outcomes = [(x["status"], x["outcome"]) for x in finished(server, "a")]
        assert outcomes[-1] == (200, "client_stalled")
        m = scrape(server)
        assert value(m, "llmux_request_outcomes_total", model="a", outcome="client_stalled") == 1
        # an expected event: one INFO line from gunicorn, not an ERROR with a traceback
        assert not [r for r in server.log_records() if r["level"] in ("ERROR", "CRITICAL")]
        assert "client_timeout" in {r.get("event") for r in server.log_records()}
        started = time.monotonic()
        assert server.chat("b").status_code == 200
        assert time.monotonic() - started < 5
    finally:
        client.close()


# --- 3. the client is watched from admission to the last byte ---


def test_a_client_leaving_before_the_response_headers_cancels_the_backend(
    llmux_factory, raw_backend
):
    def respond(backend, conn):
        backend.wait_for_eof(conn, limit=20)  # computing a long answer; headers never come

    backend = raw_backend(respond)
    server = llmux_factory({"raw": raw_entry(backend.port), "a": model_entry(free_port())})
    client = socket.create_connection(("127.0.0.1", server.port))
    send_chat(client, model="raw")
    wait_for(lambda: backend.requests == 1, timeout=10)
    client.close()
    left = time.monotonic()
    wait_for(lambda: backend.eof_at, timeout=5)
    assert backend.eof_at[0] - left < 2.5, "the backend kept working for nobody"
    wait_for(lambda: in_flight(server, "raw") == 0, timeout=5)
    assert [(x["status"], x["outcome"]) for x in finished(server, "raw")] == [
        (499, "client_closed")
    ]
    started = time.monotonic()
    assert server.chat("a").status_code == 200
    assert time.monotonic() - started < 5


SSE_UNTIL_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    b"data: first\n\n"
)


def test_a_client_leaving_a_stream_that_ends_with_the_connection_cancels_it(
    llmux_factory, raw_backend
):
    """http.client drops the connection's socket for such answers; the cut must not need it."""

    def respond(backend, conn):
        conn.sendall(SSE_UNTIL_CLOSE)
        backend.wait_for_eof(conn, limit=20)  # then silence, until llmux hangs up

    backend = raw_backend(respond)
    server = llmux_factory({"raw": raw_entry(backend.port), "a": model_entry(free_port())})
    client = socket.create_connection(("127.0.0.1", server.port))
    send_chat(client, model="raw", stream=True)
    client.settimeout(10)
    received = b""
    while b"data: first" not in received:
        received += client.recv(4096)
    client.close()
    left = time.monotonic()
    wait_for(lambda: backend.eof_at, timeout=5)
    assert backend.eof_at[0] - left < 2.5, "the backend kept streaming to nobody"
    wait_for(lambda: in_flight(server, "raw") == 0, timeout=5)
    assert finished(server, "raw")[-1]["outcome"] == "client_closed"


def test_a_stalled_stream_that_ends_with_the_connection_is_cut_at_the_idle_timeout(
    llmux_factory, raw_backend
):
    def respond(backend, conn):
        conn.sendall(SSE_UNTIL_CLOSE)
        backend.wait_for_eof(conn, limit=30)

    backend = raw_backend(respond)
    server = llmux_factory(
        {"raw": raw_entry(backend.port), "a": model_entry(free_port())},
        proxy={"idle_timeout": 1, "header_timeout": 20},
    )
    started = time.monotonic()
    r = server.post(body={"model": "raw", "stream": True}, stream=True)
    with pytest.raises(Exception):  # noqa: B017 - a cut stream, whatever the client calls it
        r.content  # noqa: B018
    assert time.monotonic() - started < 5, "cut at the header timeout, not the idle timeout"
    wait_for(lambda: in_flight(server, "raw") == 0, timeout=5)
    assert finished(server, "raw")[-1]["outcome"] == "upstream_aborted"


def test_an_answer_with_a_length_is_relayed_with_it_and_a_short_one_is_cut(
    llmux_factory, raw_backend
):
    """A backend's Content-Length reaches the client (no chunk framing added); a body
    that ends before it is cut for the client too, never padded or re-framed as whole."""
    whole = b'{"ok": true}'

    def respond(backend, conn):
        body = whole[:5] if backend.requests > 1 else whole  # the second answer is short
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(whole)}\r\n\r\n".encode()
            + body
        )
        conn.close()

    backend = raw_backend(respond)
    server = llmux_factory({"raw": raw_entry(backend.port), "a": model_entry(free_port())})
    r = server.post(body={"model": "raw"})
    assert r.status_code == 200 and r.content == whole
    assert r.headers["Content-Length"] == str(len(whole))
    assert "Transfer-Encoding" not in r.headers
    r = server.post(body={"model": "raw"}, stream=True)
    assert r.headers["Content-Length"] == str(len(whole))
    with pytest.raises(Exception):  # noqa: B017 - a cut body, whatever the client calls it
        r.content  # noqa: B018
    wait_for(lambda: in_flight(server, "raw") == 0, timeout=5)
    assert finished(server, "raw")[-1]["outcome"] == "upstream_aborted"


# --- 4. a hook's background processes keep their output pipes ---


def pipes_of(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
                count += 1
        except OSError:
            pass
    return count


def test_a_server_started_by_a_wake_hook_without_redirection_keeps_running(llmux_factory):
    server = llmux_factory()
    worker = server.worker_pid()
    baseline = pipes_of(worker)
    # the backend inherits the hook's stdout and stderr and logs every request
    # there; it dies of SIGPIPE if llmux closes them when the hook's shell exits
    server.fault(
        "wake",
        "a",
        '"$LLMUX_PYTHON" -m llmux.demo.fake_backend --port "$LLMUX_PORT" --model a --chatty &\n'
        'echo $! > "$pidfile"',
    )
    for _ in range(3):
        r = server.chat("a")
        assert r.status_code == 200, r.text
    pid = server.backend_pids()[0]
    assert os.path.exists(f"/proc/{pid}")
    assert pipes_of(worker) == baseline + 2  # one pipe pair, read by the keeper
    server.fault("wake", "a", None)
    assert server.chat("b").status_code == 200  # a put to sleep: its pipes closed
    wait_for(lambda: pipes_of(worker) == baseline, timeout=5)


# --- 5. every irreversible step is decided on the state as it is then ---


def test_a_switch_whose_waiter_left_is_abandoned_before_any_hook(llmux_factory):
    server = llmux_factory(
        model_env={"FAKE_ARGS": "--tokens-per-sec 10 --tokens 40"},
        policy={"request_timeout_secs": 0.5},
    )
    assert server.chat("a", max_tokens=1).status_code == 200
    box = {}
    stream = threading.Thread(target=lambda: box.update(r=server.chat("a", stream=True)))
    stream.start()
    wait_for(lambda: in_flight(server, "a") == 1, timeout=5)
    assert_error(server.chat("b"), 504, "queue_timeout", param="model")
    # a is still draining for nobody; a new request for it ends that drain at once
    started = time.monotonic()
    assert server.chat("a", max_tokens=1).status_code == 200
    assert time.monotonic() - started < 1 and stream.is_alive()
    assert any(x.get("event") == "switch_abandoned" for x in server.log_records())
    stream.join(10)
    assert box["r"].status_code == 200 and "[DONE]" in box["r"].text
    assert server.hook_runs() == [("wake", "a")], "a slept or b woke for nobody"
    status = server.status()
    assert status["active"] == "a" and status["models"]["a"]["state"] == "awake"
    assert status["last_switch"]["result"] == "abandoned"
    m = scrape(server)
    assert value(m, "llmux_switch_total", **{"from": "a", "to": "b", "result": "abandoned"}) == 1
    started = time.monotonic()
    assert server.chat("a", max_tokens=1).status_code == 200
    assert time.monotonic() - started < 1


# --- every blocking read of a client has a deadline too ---


def test_slowly_sent_headers_are_cut_at_the_keepalive_timeout(llmux):
    """gunicorn reads a request's head under its keep-alive timeout (5 s), first request too."""
    client = socket.create_connection(("127.0.0.1", llmux.port))
    client.settimeout(1)
    started = time.monotonic()
    try:
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        closed = False
        while time.monotonic() - started < 20 and not closed:
            try:
                client.sendall(b"X-Slow: 1\r\n")
                closed = client.recv(1) == b""
            except TimeoutError:
                pass  # nothing from llmux yet: keep dribbling
            except OSError:
                closed = True
        took = time.monotonic() - started
        assert closed and took < 9, f"a dribbled request head held the connection {took:.1f}s"
    finally:
        client.close()
    assert llmux.chat("a").status_code == 200
