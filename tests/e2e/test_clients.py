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


# --- multipart forms ---

AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8  # any bytes will do


def test_the_openai_sdk_transcribes_through_llmux(llmux, tmp_path):
    from openai import OpenAI

    path = tmp_path / "a.wav"
    path.write_bytes(AUDIO)
    client = OpenAI(base_url=llmux.url + "/v1", api_key="unused", max_retries=0)
    with path.open("rb") as fh:
        text = client.audio.transcriptions.create(model="b", file=fh)
    assert text.text == "the quick brown fox"
    assert llmux.hook_runs("wake") == [("wake", "b")]


def test_curl_form_is_routed_by_its_model_field_and_forwarded_byte_for_byte(llmux, tmp_path):
    import subprocess

    (tmp_path / "a.wav").write_bytes(AUDIO)
    trace = tmp_path / "sent.bin"
    r = subprocess.run(
        [
            "curl", "-sS", "-m", "30", "--trace", str(trace),
            "-F", "model=c", "-F", f"file=@{tmp_path / 'a.wav'}",
            llmux.url + "/v1/audio/translations",
        ],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    answer = json.loads(r.stdout)
    assert answer["x_served_by"] == "c" and answer["text"] == "the quick brown fox"
    # the body the backend hashed is the one curl sent
    sent = _curl_request_body(trace.read_text())
    assert answer["x_body_sha256"] == hashlib.sha256(sent).hexdigest()


def _curl_request_body(trace: str) -> bytes:
    """The request body from ``curl --trace`` (its "=> Send data" hex dumps)."""
    body, sending = bytearray(), False
    for line in trace.splitlines():
        if line.startswith("=> Send data"):
            sending = True
        elif line.startswith(("<=", "=>", "==")):
            sending = False
        elif sending and ":" in line:
            hexpart = line.split(":", 1)[1][:49]
            body += bytes.fromhex(hexpart.replace(" ", ""))
    return bytes(body)


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"file": ("a.wav", AUDIO)}, "invalid_model"),
        ({"model": (None, "a"), "extra": (None, "x"), "model ": (None, "b")}, None),
    ],
    ids=["no-model", "extra-fields"],
)
def test_form_edge_cases(llmux, fields, code):
    r = requests.post(llmux.url + "/v1/audio/transcriptions", files=fields, timeout=30)
    if code is None:
        assert r.status_code == 200 and r.json()["x_served_by"] == "a"
    else:
        assert_error(r, 400, code, param="model")


def test_two_model_fields_are_refused(llmux):
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\na\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\nb\r\n--XX--\r\n'
    )
    r = requests.post(
        llmux.url + "/v1/audio/transcriptions",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=XX"},
        timeout=30,
    )
    assert_error(r, 400, "invalid_body")
    assert llmux.hook_runs() == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port of localhost is another site's page
    ],
    ids=["origin", "null-origin", "cross-site", "same-site"],
)
def test_a_browser_form_from_another_site_switches_nothing(llmux, headers):
    r = requests.post(
        llmux.url + "/v1/audio/transcriptions",
        files={"model": (None, "b"), "file": ("a.wav", AUDIO)},
        headers=headers,
        timeout=30,
    )
    assert_error(r, 403, "forbidden")
    assert llmux.hook_runs() == []


def test_a_same_origin_page_may_post(llmux):
    r = requests.post(
        llmux.url + "/v1/chat/completions",
        json={"model": "a", "messages": []},
        headers={"Origin": llmux.url, "Sec-Fetch-Site": "same-origin"},
        timeout=30,
    )
    assert r.status_code == 200
