"""The upstream client against a raw-socket server that misbehaves on purpose."""

from __future__ import annotations

import socket
import threading

import pytest

from llmux.config import ProxyConfig
from llmux.errors import BadGateway
from llmux.proxy import Upstream
from tests.helpers import read_request

OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Keep-Alive: timeout=5, max=100\r\n\r\n{}"
)


class Server:
    """Answers the first request on each connection; then reads the next one and hangs up.

    That is what a server closing an idle keep-alive connection looks like when
    the close races the client's next request (llama-server after a stream).
    ``answer`` False: hang up without answering even the first request.
    """

    def __init__(self, answer=True):
        self.answer = answer
        self.requests = 0
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _read_request(self, conn) -> bool:
        if read_request(conn) is None:
            return False
        self.requests += 1
        return True

    def _one(self, conn):
        with conn:
            if self._read_request(conn) and self.answer:
                conn.sendall(OK)
                self._read_request(conn)  # then close without a word

    def close(self):
        self.sock.close()


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
    server = Server()
    try:
        assert send(upstream, server.port) == (200, b"{}")
        assert send(upstream, server.port) == (200, b"{}")  # first try hit the dead connection
        assert server.connections == 2
        assert server.requests == 3  # the dropped one was never answered, so never processed
    finally:
        server.close()


def test_a_fresh_connection_closed_without_an_answer_is_not_retried(upstream):
    server = Server(answer=False)
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
