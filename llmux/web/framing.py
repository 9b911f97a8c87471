"""Where a chunked HTTP/1.1 body ends, without decoding it (RFC 9112 §7.1).

Usage::

    scanner = ChunkScanner()
    for data in reads:                       # the bytes after the response headers
        framed, payload = scanner.feed(data)   # ValueError: malformed framing
        send(framed)                         # still chunked, exactly as the backend sent it
        if scanner.done:
            break

llmux relays a chunked backend body to a client that also gets it chunked, so
the backend's framing can pass through as it is: decoding every chunk and
framing it again costs CPU per chunk and changes nothing. What llmux must know
is where the body ends (so the backend connection can be pooled again, and so a
body cut short is never finished for the client) and the payload's length (for
the access log). :meth:`ChunkScanner.feed` passes on everything before the
last chunk; the WSGI server writes its own ``0\\r\\n\\r\\n``, and trailer fields,
which gunicorn never sends either, are dropped.
"""

from __future__ import annotations

__all__ = ["MAX_LINE", "MAX_SIZE_DIGITS", "ChunkScanner"]

# The longest chunk-size line (with extensions) or trailer line accepted: far above
# what servers send, and small beside the 64 KiB reads, so a write to the client
# stays near 64 KiB (llmux.web.inbound.prepare_client_socket's deadline is per write).
MAX_LINE = 4096
# More hex digits than a 64-bit size needs are refused, as h11 (httpx's parser) does.
MAX_SIZE_DIGITS = 16
_HEX = frozenset(b"0123456789abcdefABCDEF")
_CRLF = b"\r\n"


class ChunkScanner:
    """Follows a chunked body's framing across reads of any size.

    ``feed(data)`` returns ``(framed, payload)``: the bytes of ``data`` to pass on
    (a prefix of the body as sent, its last chunk and trailer excluded, plus a
    chunk-size line held back from an earlier read) and how many payload bytes
    they carry. ``done`` turns true once the whole body, trailer included, was
    fed; ``extra`` is true if bytes followed it (the connection is then not
    reusable). Raises ``ValueError`` on a chunk-size line that is not hex (or
    longer than :data:`MAX_SIZE_DIGITS` digits), a line that does not end in CRLF
    or is longer than :data:`MAX_LINE`, or chunk data not followed by CRLF: what
    passes on must be framing any client parses, and http.client, which llmux
    used to decode with, let such bytes by. Chunk data is passed on as it
    arrives, not held until its chunk is complete: a cut body reaches the client
    as a cut.
    """

    __slots__ = ("done", "extra", "_left", "_line", "_trailer")

    def __init__(self) -> None:
        self.done = False
        self.extra = False
        self._left = 0  # bytes of the current chunk still to pass: data, then its CRLF
        self._line = b""  # an unfinished line from earlier reads
        self._trailer = False  # past the last chunk: reading trailer lines

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """See the class docstring: ``(framed, payload)`` for this read."""
        if self.done:
            self.extra = self.extra or bool(data)
            return b"", 0
        left = self._left
        n = len(data)
        if left >= n:  # the common case: the middle of a chunk
            _check_crlf(data, 0, n, left)
            self._left = left - n
            return data, _payload(n, left)
        # what passes is always one run of the stream: a line held back from the
        # last read, then a prefix of this one (the last chunk comes at the end)
        held = b""
        out_end = 0
        payload = 0
        i = 0
        while i < n:
            if left:
                take = min(left, n - i)
                payload += _payload(take, left)
                _check_crlf(data, i, take, left)
                left -= take
                i += take
                out_end = i
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self._line += data[i:]
                if len(self._line) > MAX_LINE:
                    raise ValueError("a chunk-size or trailer line is too long")
                break
            start, line = self._line, data[i : j + 1]
            if start:
                line = start + line
                self._line = b""
            i = j + 1
            if len(line) > MAX_LINE:
                raise ValueError("a chunk-size or trailer line is too long")
            if not line.endswith(_CRLF):
                raise ValueError(f"a line does not end in CRLF: {line[:40]!r}")
            if self._trailer:
                if line == _CRLF:
                    self.done = True
                    self.extra = i < n
                    break
                continue
            size = _chunk_size(line)
            if size == 0:
                self._trailer = True
                continue
            if start:
                held = start
            out_end = i
            left = size + 2  # the data, then the CRLF that ends it
        self._left = left
        if held:
            return held + data[:out_end], payload
        return (data if out_end == n else data[:out_end]), payload


def _payload(take: int, left: int) -> int:
    """Payload bytes among ``take`` bytes passed when ``left`` (data + CRLF) remained."""
    return max(0, min(take, left - 2))


def _check_crlf(data: bytes, i: int, take: int, left: int) -> None:
    """Raise ValueError unless the bytes of ``data[i:i+take]`` that end a chunk (its
    last two, when ``left`` counted data + CRLF) are the CRLF they must be."""
    in_crlf = take - max(left - 2, 0)  # how many of these bytes are the CRLF's
    if in_crlf > 0:
        done = 2 - min(left, 2)  # CRLF bytes passed in earlier reads
        if data[i + take - in_crlf : i + take] != _CRLF[done : done + in_crlf]:
            raise ValueError("chunk data is not followed by CRLF")


def _chunk_size(line: bytes) -> int:
    """The size in a ``chunk-size [ chunk-ext ] CRLF`` line (RFC 9112 §7.1.1)."""
    digits = line.split(b";", 1)[0].strip(b" \t\r\n")
    if not digits or not _HEX.issuperset(digits) or len(digits) > MAX_SIZE_DIGITS:
        raise ValueError(f"not a chunk-size line: {line[:40]!r}")
    return int(digits, 16)
