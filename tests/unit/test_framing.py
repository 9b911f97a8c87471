"""ChunkScanner: a chunked body passes unchanged up to its last chunk, read in any pieces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmux.web.framing import MAX_LINE, ChunkScanner


def chunked(chunks: list[bytes], ext: bytes = b"", trailer: bytes = b"") -> tuple[bytes, bytes]:
    """(the whole body as sent, the part before its last chunk)."""
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks)
    return body + b"0\r\n" + trailer + b"\r\n", body


def scan(pieces: list[bytes]) -> tuple[bytes, int, ChunkScanner]:
    scanner, out, payload = ChunkScanner(), [], 0
    for piece in pieces:
        framed, n = scanner.feed(piece)
        out.append(framed)
        payload += n
    return b"".join(out), payload, scanner


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    ext=st.sampled_from([b"", b";name=value", b" ;a"]),
    trailer=st.sampled_from([b"", b"X-Checksum: 1\r\n", b"A: 1\r\nB: 2\r\n"]),
)
def test_any_split_passes_the_body_before_its_last_chunk_and_counts_its_payload(
    chunks, cuts, ext, trailer
):
    body, before_last = chunked(chunks, ext, trailer)
    framed, payload, scanner = scan(split(body, cuts))
    assert framed == before_last
    assert payload == sum(len(c) for c in chunks)
    assert scanner.done and not scanner.extra


def test_one_read_per_chunk_passes_the_read_itself():
    scanner = ChunkScanner()
    read = b"1a\r\n" + b"x" * 26 + b"\r\n"
    framed, payload = scanner.feed(read)
    assert framed is read and payload == 26 and not scanner.done


def test_a_body_cut_short_is_never_done_and_its_data_is_passed_as_it_came():
    body, _ = chunked([b"hello world"])
    framed, payload, scanner = scan([body[:9]])  # "b\r\nhello "
    assert framed == b"b\r\nhello " and payload == 6
    assert not scanner.done


def test_a_size_line_split_across_reads_is_held_back_then_passed_whole():
    scanner = ChunkScanner()
    assert scanner.feed(b"1") == (b"", 0)
    assert scanner.feed(b"0\r") == (b"", 0)
    assert scanner.feed(b"\n" + b"y" * 16 + b"\r\n") == (b"10\r\n" + b"y" * 16 + b"\r\n", 16)


def test_bytes_after_the_end_are_noticed():
    body, _ = chunked([b"ok"])
    _, _, scanner = scan([body + b"HTTP/1.1 200 OK\r\n"])
    assert scanner.done and scanner.extra


@pytest.mark.parametrize(
    "line", [b"zz\r\n", b"\r\n", b"-1\r\n", b"0x10\r\n", b"+5\r\n", b"0" * 17 + b"5\r\n"]
)
def test_a_size_line_that_is_not_hex_is_refused(line):
    with pytest.raises(ValueError, match="chunk-size"):
        ChunkScanner().feed(line)


@pytest.mark.parametrize(
    "pieces",
    [
        [b"5\nhello\r\n"],  # a bare LF ends the size line
        [b"5\r\nhelloXY0\r\n\r\n"],  # no CRLF after the data
        [b"5\r\nhello\r", b"X"],  # half of it, then the wrong byte
        [b"5\r\nhel", b"lo\n\r"],
    ],
)
def test_framing_a_client_could_not_parse_is_refused(pieces):
    scanner = ChunkScanner()
    with pytest.raises(ValueError):
        for piece in pieces:
            scanner.feed(piece)


def test_an_endless_size_line_is_refused():
    scanner = ChunkScanner()
    with pytest.raises(ValueError, match="too long"):
        for _ in range(MAX_LINE // 1000 + 2):
            scanner.feed(b"0" * 1000)
