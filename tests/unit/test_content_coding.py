"""Decoding compressed request bodies within a limit."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
import zstandard

from llmux.errors import InvalidBody, RequestTooLarge, UnsupportedMediaType
from llmux.web.content_coding import decode

BODY = b'{"model": "a", "prompt": "' + b"abc" * 1000 + b'"}'


def test_every_coding_and_a_list_of_them():
    assert decode(gzip.compress(BODY), "gzip", 10**6) == BODY
    assert decode(gzip.compress(BODY), "x-gzip", 10**6) == BODY
    assert decode(zlib.compress(BODY), "deflate", 10**6) == BODY
    assert decode(zstandard.ZstdCompressor().compress(BODY), "zstd", 10**6) == BODY
    assert decode(BODY, "identity", 10**6) == BODY
    assert decode(gzip.compress(zlib.compress(BODY)), "deflate, GZIP", 10**6) == BODY


def test_several_gzip_members_are_one_body():
    assert decode(gzip.compress(BODY) + gzip.compress(b"!"), "gzip", 10**6) == BODY + b"!"


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_a_bomb_stops_at_the_limit_in_bounded_memory(coding):
    zeros = b"\0" * (100 * 2**20)
    if coding == "gzip":
        bomb = gzip.compress(zeros, compresslevel=1)
    else:
        bomb = zstandard.ZstdCompressor().compress(zeros)
    del zeros
    tracemalloc.start()
    try:
        with pytest.raises(RequestTooLarge):
            decode(bomb, coding, 2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"decoding held {peak / 2**20:.1f} MiB"


def test_refusals():
    with pytest.raises(UnsupportedMediaType):
        decode(BODY, "br", 10**6)
    with pytest.raises(InvalidBody):
        decode(b"plain text", "gzip", 10**6)
    with pytest.raises(InvalidBody):
        decode(gzip.compress(BODY)[:-12], "gzip", 10**6)
    with pytest.raises(InvalidBody):
        decode(b"not zstd", "zstd", 10**6)
