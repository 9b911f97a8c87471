"""What real clients send: compressed request bodies and Anthropic keys (client-surface issue).

Through a real llmux (gunicorn, gevent worker) and real hooks, with the real
``anthropic`` SDK where the client is one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib

import anthropic
import psutil
import pytest
import requests
import zstandard

from .test_errors import assert_error

pytestmark = pytest.mark.e2e

BODY = json.dumps(
    {"model": "a", "messages": [{"role": "user", "content": "hé " * 2000}], "max_tokens": 3}
).encode()


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    "coding, packed",
    [
        ("gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),
        ("deflate", raw_deflate(BODY)),
        ("zstd", zstandard.ZstdCompressor().compress(BODY)),
        ("deflate, gzip", gzip.compress(zlib.compress(BODY))),
    ],
    ids=["gzip", "deflate-zlib", "deflate-raw", "zstd", "deflate-then-gzip"],
)
def test_a_compressed_body_is_routed_and_forwarded_decoded(llmux, coding, packed):
    r = llmux.session.post(
        llmux.url + "/v1/chat/completions",
        data=packed,
        headers={
            "Content-Type": "application/json",
            "Content-Encoding": coding,
            "Accept-Encoding": "identity",
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["x_served_by"] == "a"
    assert answer["x_body_sha256"] == hashlib.sha256(BODY).hexdigest(), "not the decoded body"


def test_a_decompression_bomb_is_a_413_in_bounded_memory(llmux_factory):
    server = llmux_factory(proxy={"max_body_bytes": 1024 * 1024})
    worker = psutil.Process(server.worker_pid())
    assert server.chat("a").status_code == 200
    before = worker.memory_info().rss
    # 200 KB on the wire, 200 MiB once inflated
    bomb = gzip.compress(b'{"model": "a", "x": "' + b"0" * (200 * 2**20) + b'"}')
    r = server.session.post(
        server.url + "/v1/chat/completions",
        data=bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert_error(r, 413, "request_too_large")
    grown = (worker.memory_info().rss - before) / 2**20
    assert grown < 20, f"the worker grew {grown:.0f} MiB decoding a bomb"
    assert server.chat("a").status_code == 200


@pytest.mark.parametrize(
    "coding, data, status, code",
    [
        ("br", BODY, 415, "unsupported_media_type"),
        ("gzip", b"not gzip at all", 400, "invalid_body"),
        ("gzip", gzip.compress(BODY)[:-12], 400, "invalid_body"),
    ],
    ids=["unknown-coding", "not-gzip", "truncated-gzip"],
)
def test_a_body_that_cannot_be_decoded_is_refused_before_any_switch(
    llmux, coding, data, status, code
):
    r = llmux.session.post(
        llmux.url + "/v1/chat/completions",
        data=data,
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
        timeout=30,
    )
    assert_error(r, status, code)
    assert llmux.hook_runs() == []


def test_the_anthropic_sdk_authenticates_with_x_api_key(llmux_factory):
    server = llmux_factory(api_keys=["sk-one"])
    client = anthropic.Anthropic(base_url=server.url, api_key="sk-one", max_retries=0)
    message = client.messages.create(
        model="a", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "the quick brown"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="sk-bad", max_retries=0).messages.create(
            model="a", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
        )
    # neither key header reaches the backend
    r = requests.post(
        server.url + "/v1/messages",
        json={"model": "a", "max_tokens": 1, "messages": [], "fake": {"echo_headers": True}},
        headers={"x-api-key": "sk-one", "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    seen = {k.lower() for k in r.json()["x_headers"]}
    assert "x-api-key" not in seen and "authorization" not in seen
    assert "anthropic-version" in seen
