"""Decoding a request body sent with ``Content-Encoding``, within a size limit.

Usage::

    body = decode(raw, environ.get("HTTP_CONTENT_ENCODING", ""), limit=64 * 2**20)

Some clients (coding agents with large prompts) compress their request
bodies. llmux must read the body to find ``model``, and forwards it decoded,
without the header, since backends rarely accept compressed requests.
Codings follow RFC 9110 §8.4: a comma-separated list, in the order they were
applied, so they are undone from the last. ``gzip`` (and ``x-gzip``),
``deflate`` (the zlib format of RFC 1950, or the raw RFC 1951 stream some
clients send under that name), ``zstd`` (RFC 8878, through the ``zstandard``
package) and ``identity`` are understood.

Decoding never holds more than ``limit`` + 64 KiB of output: a small body that
inflates to gigabytes (a decompression bomb) is refused with
:class:`~llmux.errors.RequestTooLarge` as soon as its output passes the limit.
An unknown coding raises :class:`~llmux.errors.UnsupportedMediaType`; data that
is not what its coding says raises :class:`~llmux.errors.InvalidBody`.
"""

from __future__ import annotations

import io
import zlib

from ..errors import InvalidBody, RequestTooLarge, UnsupportedMediaType, clip

CODINGS = ("gzip", "deflate", "zstd", "identity")
PIECE = 64 * 1024


def decode(body: bytes, header: str, limit: int) -> bytes:
    """``body`` with every coding in ``header`` undone; at most ``limit`` bytes out."""
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    for coding in codings:
        if coding not in (*CODINGS, "x-gzip"):
            raise UnsupportedMediaType(
                f"Content-Encoding '{clip(coding, 32)}' is not supported; "
                f"send the body as is, or with {', '.join(CODINGS[:3])}"
            )
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, limit, zlib.MAX_WBITS | 16, "gzip", members=True)
        elif coding == "deflate":
            try:
                body = _inflate(body, limit, zlib.MAX_WBITS, "deflate")
            except InvalidBody:  # a raw deflate stream, as some clients send
                body = _inflate(body, limit, -zlib.MAX_WBITS, "deflate")
        elif coding == "zstd":
            body = _unzstd(body, limit)
    return body


def _inflate(data: bytes, limit: int, wbits: int, name: str, members: bool = False) -> bytes:
    """zlib-family decoding in bounded pieces; gzip (``members``) may hold several."""
    out = bytearray()
    while data:
        inflater = zlib.decompressobj(wbits)
        try:
            while data:
                out += inflater.decompress(data, PIECE)
                _check(len(out), limit)
                data = inflater.unconsumed_tail
            out += inflater.flush(PIECE)
            _check(len(out), limit)
        except zlib.error as exc:
            raise InvalidBody(f"request body is not valid {name}: {exc}") from None
        if not inflater.eof:
            raise InvalidBody(f"request body is not valid {name}: it ends too early")
        data = inflater.unused_data if members else b""  # the next gzip member
    return bytes(out)


def _unzstd(data: bytes, limit: int) -> bytes:
    import zstandard

    out = bytearray()
    try:
        decompressor = zstandard.ZstdDecompressor()
        with decompressor.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            while piece := reader.read(PIECE):
                out += piece
                _check(len(out), limit)
    except zstandard.ZstdError as exc:
        raise InvalidBody(f"request body is not valid zstd: {exc}") from None
    return bytes(out)


def _check(size: int, limit: int) -> None:
    if size > limit:
        raise RequestTooLarge(f"request body exceeds {limit} bytes once decoded")
