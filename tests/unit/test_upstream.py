"""The upstream client against a raw-socket server that misbehaves on purpose."""

from __future__ import annotations

import http.client
import socket

import pytest
import requests
import urllib3

from llmux.config import ProxyConfig
from llmux.errors import BadGateway
from llmux.web.upstream import Upstream, _failure
from tests.support import RawServer

OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Keep-Alive: timeout=5, max=100\r\n\r\n{}"
)


def racing_server(answer=True) -> RawServer:
    """Answers the first request on each connection; then reads the next one and hangs up.

    That is what a server closing an idle keep-alive connection looks like when
    the close races the client's next request (llama-server after a stream).
    ``answer`` False: hang up without answering even the first request.
    """

    def serve(server, conn):
        if server.read_request(conn) and answer:
            conn.sendall(OK)
            server.read_request(conn)  # then close without a word

    return RawServer(serve)


@pytest.fixture
def upstream():
    u = Upstream(ProxyConfig(connect_timeout=2, header_timeout=2, idle_timeout=2))
    yield u
    u.close()


def send(upstream, port):
    reply = upstream.send("POST", port, "/v1/chat/completions", "", [], b"{}", model="m")
    body = b"".join(reply.chunks())
    reply.close()
    return reply.status, body


def test_a_reused_connection_the_server_dropped_is_retried_once_on_a_new_one(upstream):
    server = racing_server()
    try:
        assert send(upstream, server.port) == (200, b"{}")
        assert send(upstream, server.port) == (200, b"{}")  # first try hit the dead connection
        assert server.connections == 2
        assert server.requests == 3  # the dropped one was never answered, so never processed
    finally:
        server.close()


def test_a_fresh_connection_closed_without_an_answer_is_not_retried(upstream):
    server = racing_server(answer=False)
    try:
        with pytest.raises(BadGateway) as err:
            send(upstream, server.port)
        assert err.value.status == 502
        assert server.requests == 1 and server.connections == 1  # sent once, not again
    finally:
        server.close()


def test_a_refused_connection_is_reported_as_unreachable(upstream):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(BadGateway) as err:
            send(upstream, port)
    assert type(err.value).__name__ == "BackendUnreachable"
    assert "refused" in err.value.message and str(port) not in err.value.message


@pytest.mark.parametrize(
    "error, reason, stale",
    [
        (
            http.client.RemoteDisconnected("Remote end closed"),
            "closed the connection without a response",
            True,
        ),
        (ConnectionResetError(104, "reset"), "connection reset", True),
        (BrokenPipeError(32, "pipe"), "broken pipe", True),
        (ConnectionRefusedError(111, "refused"), "connection refused", False),
        (TimeoutError("timed out"), "timed out", False),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), "timed out", False),
        (ValueError("odd"), "ValueError", False),
    ],
)
def test_transport_failures_are_named_by_the_type_of_their_innermost_cause(error, reason, stale):
    # as requests hands them over: wrapped by urllib3, then by requests
    wrapped = urllib3.exceptions.ProtocolError("Connection aborted.", error)
    outer = requests.exceptions.ConnectionError(wrapped)
    cause, name, is_stale = _failure(outer)
    assert cause is error and name == reason and is_stale is stale
