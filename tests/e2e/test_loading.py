"""Loading progress, queue headers and Retry-After (client-surface issue, items 6 and 7).

Through a real llmux (gunicorn, gevent worker) and real hooks. The wake hook of
``b`` prints ``LLMUX_PROGRESS`` lines and then waits for a gate file the test
creates, so the test sees the request while it waits, without sleeping.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import anthropic
import openai
import pytest
import requests

from tests.support import install_node_client, run_node_client, wait_for

from .test_errors import assert_error

pytestmark = pytest.mark.e2e

GATED_WAKE = """echo LLMUX_PROGRESS 0.25
i=0
while [ ! -f "$dir/gate" ] && [ $i -lt 600 ]; do i=$((i + 1)); sleep 0.025; done
echo LLMUX_PROGRESS 0.9"""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gated(llmux_factory):
    """llmux with stream_loading on, ``a`` awake, and ``b``'s next wake held at a gate."""
    llmux = llmux_factory(stream_loading=True)
    assert llmux.chat("a").status_code == 200
    llmux.fault("wake", "b", GATED_WAKE)
    yield llmux
    open_gate(llmux)


def open_gate(llmux) -> None:
    (llmux.dir / "gate").touch()


def in_thread(fn, *args, **kw) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as exc:  # the test thread asserts on it
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def sse_lines(response) -> list[str]:
    return [line for line in response.iter_lines(decode_unicode=True) if line]


def comments(lines) -> list[dict]:
    return [json.loads(line[len(": llmux ") :]) for line in lines if line.startswith(": llmux ")]


def queued_for(llmux, model) -> list[dict]:
    return llmux.status()["models"][model]["queue"]


def test_a_waiting_stream_gets_progress_and_then_the_real_stream(gated):
    llmux = gated
    client = openai.OpenAI(base_url=llmux.url + "/v1", api_key="unused", max_retries=0)
    raw = requests.post(
        llmux.url + "/v1/chat/completions",
        json={"model": "b", "stream": True, "messages": HI},
        stream=True,
        timeout=30,
    )
    # the headers came at once, before b is awake
    assert raw.status_code == 200 and raw.headers["Content-Type"].startswith("text/event-stream")
    assert raw.headers["X-Llmux-Model-State"] == "asleep"
    thread, box = in_thread(
        lambda: "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model="b", messages=HI, stream=True)
            if c.choices
        )
    )
    wait_for(lambda: len(queued_for(llmux, "b")) == 2)
    wait_for(lambda: llmux.status()["models"]["b"]["hook_progress"] == 0.25)
    model = llmux.status()["models"]["b"]
    assert [q["position"] for q in model["queue"]] == [1, 2]
    assert model["estimated_wait_secs"] is not None and model["estimated_wait_secs"] >= 0
    lines, read = [], raw.iter_lines(decode_unicode=True)
    for line in read:  # until a comment shows the hook's 0.25
        lines.append(line)
        if '"hook_progress":0.25' in line:
            break
    open_gate(llmux)
    lines = [line for line in [*lines, *read] if line]
    thread.join(30)
    # the openai SDK parsed the same stream as a stream that never waited
    assert "error" not in box, box.get("error")
    unwaited = client.chat.completions.create(model="b", messages=HI, stream=True)
    assert box["value"] == "".join(c.choices[0].delta.content or "" for c in unwaited if c.choices)
    assert box["value"].strip()
    progress = comments(lines)
    first, admitted = progress[0], progress[-1]
    assert first["model"] == "b" and first["position"] == 1 and first["queued"] >= 1
    assert any(p.get("state") == "waking" and p.get("hook_progress") == 0.25 for p in progress)
    assert any(isinstance(p.get("eta_secs"), int | float) for p in progress[:-1]), progress
    assert admitted["admitted"] is True and admitted["queue_wait_ms"] > 0
    real = [line for line in lines if not line.startswith(":")]
    assert real[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in real)
    admitted_line = ": llmux " + json.dumps(admitted, separators=(",", ":"))
    assert lines.index(real[0]) > lines.index(admitted_line)


def test_a_waiting_stream_asks_the_backend_for_no_compression(gated):
    llmux = gated
    body = {"model": "b", "stream": True, "messages": HI, "fake": {"echo_headers": True}}
    raw = requests.post(
        llmux.url + "/v1/chat/completions",
        json=body,
        headers={"Accept-Encoding": "gzip"},  # its response headers are out: no coding later
        stream=True,
        timeout=30,
    )
    wait_for(lambda: len(queued_for(llmux, "b")) == 1)
    open_gate(llmux)
    chunks = [json.loads(x[6:]) for x in sse_lines(raw) if x.startswith("data: {")]
    assert chunks[0]["x_headers"].get("Accept-Encoding", "identity") == "identity"
    # a request admitted at once keeps the header: the backend's answer goes out as it is
    direct = llmux.post(body={**body, "stream": False}, headers={"Accept-Encoding": "gzip"})
    assert direct.json()["x_headers"]["Accept-Encoding"] == "gzip"


def test_without_stream_loading_nothing_comes_early(llmux_factory):
    llmux = llmux_factory()
    assert llmux.chat("a").status_code == 200
    llmux.fault("wake", "b", GATED_WAKE)
    thread, box = in_thread(llmux.stream, "b")
    wait_for(lambda: llmux.status()["models"]["b"]["hook_progress"] == 0.25)
    assert "value" not in box, "headers came before b was awake"
    open_gate(llmux)
    thread.join(30)
    lines = sse_lines(box["value"])
    assert not any(line.startswith(":") for line in lines)
    assert box["value"].headers["X-Llmux-Model-State"] == "asleep"


def test_only_endpoints_that_stream_get_early_headers(gated):
    llmux = gated
    thread, box = in_thread(
        llmux.post, "/v1/embeddings", body={"model": "b", "stream": True, "input": "x"}
    )
    wait_for(lambda: llmux.status()["models"]["b"]["hook_progress"] == 0.25)
    assert "value" not in box, "early headers for an endpoint that answers JSON"
    open_gate(llmux)
    thread.join(30)
    assert box["value"].status_code == 200
    assert box["value"].headers["Content-Type"] == "application/json"
    assert box["value"].json()["data"][0]["object"] == "embedding"


def test_every_answer_carries_the_queue_wait_and_the_state_at_arrival(llmux_factory):
    llmux = llmux_factory(model_env={"HOOK_WAKE_SECS": 0.3})
    r = llmux.chat("a")
    assert r.headers["X-Llmux-Model-State"] == "asleep"
    assert int(r.headers["X-Llmux-Queue-Wait-Ms"]) >= 300
    r = llmux.chat("a")
    assert r.headers["X-Llmux-Model-State"] == "awake"
    assert r.headers["X-Llmux-Queue-Wait-Ms"] == "0"
    llmux.fault("wake", "b", "exit 3")
    r = llmux.chat("b")
    assert_error(r, 503, "model_unavailable", param="model")
    assert r.headers["X-Llmux-Model-State"] == "asleep"
    assert int(r.headers["X-Llmux-Queue-Wait-Ms"]) > 0  # a's sleep, b's wake


def test_a_switch_that_fails_after_the_headers_ends_the_stream_with_an_error_event(gated):
    llmux = gated
    llmux.fault("wake", "b", "echo 'CUDA out of memory' >&2; exit 3")
    client = openai.OpenAI(base_url=llmux.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError) as raised:
        for _ in client.chat.completions.create(model="b", messages=HI, stream=True):
            pass
    assert "CUDA out of memory" in raised.value.message
    assert raised.value.body["code"] == "model_unavailable"
    open_gate(llmux)  # a is awake again; b stays in backoff for 0.2 s
    wait_for(lambda: llmux.status()["models"]["b"]["state"] == "failed")
    raw = requests.post(
        llmux.url + "/v1/chat/completions",
        json={"model": "b", "stream": True, "messages": HI},
        stream=True,
        timeout=30,
    )
    lines = sse_lines(raw)
    assert lines[-1].startswith("data: {") and "[DONE]" not in "".join(lines)
    assert json.loads(lines[-1][6:])["error"]["code"] == "model_unavailable"

    def failed():
        done = [r for r in llmux.log_records() if r.get("event") == "request_finished"]
        return [(r["status"], r["outcome"], r.get("code")) for r in done if r["model"] == "b"]

    wait_for(lambda: failed() == [(503, "error", "model_unavailable")] * 2)


def test_the_anthropic_sdk_sees_an_error_event_after_early_headers(gated):
    llmux = gated
    llmux.fault("wake", "b", "exit 3")
    client = anthropic.Anthropic(base_url=llmux.url, api_key="unused", max_retries=0)
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(model="b", max_tokens=5, messages=HI) as stream,
    ):
        for _ in stream:
            pass
    assert "exit code 3" in str(raised.value)


def test_a_backend_error_after_early_headers_is_passed_on_as_the_error_event(gated):
    llmux = gated
    client = openai.OpenAI(base_url=llmux.url + "/v1", api_key="unused", max_retries=0)
    thread, box = in_thread(
        lambda: list(
            client.chat.completions.create(
                model="b", messages=HI, stream=True, extra_body={"fake": {"status": 400}}
            )
        )
    )
    wait_for(lambda: len(queued_for(llmux, "b")) == 1)
    open_gate(llmux)
    thread.join(30)
    assert isinstance(box.get("error"), openai.APIError), box
    assert box["error"].message == "fake failure"  # the backend's own message


def test_a_client_that_leaves_while_waiting_leaves_the_queue(gated):
    llmux = gated
    raw = requests.post(
        llmux.url + "/v1/chat/completions",
        json={"model": "b", "stream": True, "messages": HI},
        stream=True,
        timeout=30,
    )
    first = next(raw.iter_lines())
    assert first.startswith(b": llmux ")
    wait_for(lambda: len(queued_for(llmux, "b")) == 1)
    raw.close()
    wait_for(lambda: queued_for(llmux, "b") == [], timeout=10)

    def outcome():
        done = [r for r in llmux.log_records() if r.get("event") == "request_finished"]
        return [(r["status"], r["outcome"]) for r in done if r["model"] == "b"]

    wait_for(lambda: outcome() == [(499, "client_closed")], timeout=10)
    open_gate(llmux)
    assert llmux.status()["models"]["b"]["in_flight"] == 0


def test_retry_after_is_the_estimated_wait(llmux_factory):
    llmux = llmux_factory(policy={"max_queue_depth": 1})
    assert llmux.chat("a").status_code == 200
    llmux.fault("wake", "b", "sleep 2")
    assert llmux.chat("b").status_code == 200  # measures a -> b: about 2 s
    assert llmux.chat("a").status_code == 200
    cost = next(
        c["ema_secs"] for c in llmux.status()["switch_costs"] if (c["from"], c["to"]) == ("a", "b")
    )
    assert cost >= 2
    llmux.fault("wake", "b", GATED_WAKE.replace("0.25", "0"))
    thread, box = in_thread(llmux.chat, "b")
    wait_for(lambda: len(queued_for(llmux, "b")) == 1)
    estimate = llmux.status()["models"]["b"]["estimated_wait_secs"]
    r = llmux.chat("b")
    assert_error(r, 429, "queue_full", param="model")
    assert 1 <= int(r.headers["Retry-After"]) <= math.ceil(estimate) + 1
    assert int(r.headers["Retry-After"]) >= math.ceil(cost) - 1 - 1  # less what has passed
    open_gate(llmux)
    thread.join(30)
    assert box["value"].status_code == 200


@pytest.fixture(scope="module")
def node_openai(tmp_path_factory):
    """A directory with the official openai package for Node installed."""
    directory = tmp_path_factory.mktemp("node")
    install_node_client(directory, Path(__file__).with_name("loading_client.mjs"))
    return directory


def node_stream(directory, llmux, model) -> dict:
    return run_node_client(directory, 60, BASE_URL=llmux.url + "/v1", MODEL=model)


def test_the_node_openai_client_reads_a_waiting_stream_and_its_error(gated, node_openai):
    llmux = gated
    thread, box = in_thread(node_stream, node_openai, llmux, "b")
    wait_for(lambda: len(queued_for(llmux, "b")) == 1, timeout=30)
    open_gate(llmux)
    thread.join(60)
    assert "error" not in box["value"], box["value"]
    assert box["value"]["content"] == node_stream(node_openai, llmux, "b")["content"] != ""
    llmux.fault("wake", "c", "echo 'no GPU left' >&2; exit 3")
    failed = node_stream(node_openai, llmux, "c")
    assert failed["content"] == "" and failed["error"] == "APIError", failed
    assert "no GPU left" in failed["message"]
