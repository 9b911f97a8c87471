"""Loopback sockets for tests: free ports, and a server that speaks raw HTTP (faults included)."""

import socket
import threading
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_request(conn) -> bytes | None:
    """Read one HTTP/1.1 request (head and Content-Length body) from a socket; None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = conn.recv(65536)
        if not part:
            return None
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        part = conn.recv(65536)
        if not part:
            return None
        body += part
    return head


class RawServer:
    """A loopback TCP server speaking whatever the test writes: raw HTTP, faults included.

    ``serve(server, conn)`` handles each connection, in a thread of its own;
    the connection is closed when it returns. ``connections`` and
    ``requests`` (counted by :meth:`read_request`) say what arrived;
    ``eof_at`` the monotonic times at which the peer closed a connection that
    :meth:`wait_for_eof` was watching (what a backend sees as a cancel).
    """

    def __init__(self, serve):
        self.serve = serve
        self.connections = 0
        self.requests = 0
        self.eof_at: list[float] = []
        self._conns: list = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn) -> None:
        with conn:
            try:
                self.serve(self, conn)
            except OSError:  # close() closed it under the handler: the test is over
                pass

    def read_request(self, conn) -> bool:
        """Read one request from ``conn`` (counted); False if the peer closed first."""
        if read_request(conn) is None:
            return False
        self.requests += 1
        return True

    def wait_for_eof(self, conn, limit: float) -> None:
        """Block until the peer closes ``conn`` (recorded), or ``limit`` seconds pass."""
        conn.settimeout(limit)
        try:
            if conn.recv(1) == b"":
                self.eof_at.append(time.monotonic())
        except OSError:
            self.eof_at.append(time.monotonic())

    def close(self) -> None:
        self._sock.close()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass
