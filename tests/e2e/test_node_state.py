"""What a router reads from an llmux node: ``GET /llmux/state``, the ``llmux`` key of
``/v1/models`` entries, the response headers of routed answers, and the same numbers as
metrics."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from tests.support import wait_for

from .test_telemetry import scrape, value

pytestmark = pytest.mark.e2e

KEY = "router-key-1"


def state(server, key=KEY) -> requests.Response:
    return requests.get(
        server.url + "/llmux/state", headers={"Authorization": f"Bearer {key}"}, timeout=5
    )


def test_state_follows_a_switch_and_matches_models_and_metrics(llmux_factory):
    server = llmux_factory(
        models=("a", "b"), api_keys=[KEY], admin={"token": "admin-secret"}, node_name="gpu-node-1"
    )
    # open like /v1/models, api_keys or not; no admin token needed
    r = requests.get(server.url + "/llmux/state", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["node"] == "gpu-node-1" and abs(body["time"] - time.time()) < 60
    assert body["models"]["a"] == {
        "state": "asleep",
        "in_flight": 0,
        "queued": 0,
        "oldest_wait_secs": 0.0,
        "estimated_wait_secs": None,
    }

    chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    first = server.post(body=chat, headers=headers)
    assert first.status_code == 200
    assert first.headers["X-Llmux-Model-State"] == "asleep"  # its state at admission
    assert int(first.headers["X-Llmux-Queue-Wait-Ms"]) > 0  # it waited for a's wake
    again = server.post(body=chat, headers=headers)
    assert again.headers["X-Llmux-Model-State"] == "awake"
    assert again.headers["X-Llmux-Queue-Wait-Ms"] == "0"
    models = state(server).json()["models"]
    assert models["a"]["state"] == "awake" and models["a"]["estimated_wait_secs"] == 0.0
    assert models["b"]["state"] == "asleep"

    # b's wake takes 3 s: while a request waits for it, the node says so
    server.fault("wake", "b", "sleep 3")
    waiting = threading.Thread(
        target=lambda: server.post(body={**chat, "model": "b"}, headers=headers), daemon=True
    )
    waiting.start()
    try:
        wait_for(lambda: state(server).json()["models"]["b"]["state"] == "waking", 10)
        wait_for(lambda: state(server).json()["models"]["b"]["oldest_wait_secs"] >= 0.5, 10)
        b = state(server).json()["models"]["b"]
        assert b["queued"] == 1 and b["oldest_wait_secs"] < 3.5
        # the same numbers on /v1/models, under one extra key, OpenAI fields untouched
        listed = requests.get(server.url + "/v1/models", headers=headers, timeout=5).json()
        entry = next(m for m in listed["data"] if m["id"] == "b")
        assert {k: entry[k] for k in ("id", "object", "created", "owned_by")} == {
            "id": "b",
            "object": "model",
            "created": 0,
            "owned_by": "llmux",
        }
        assert entry["llmux"]["node"] == "gpu-node-1"
        assert entry["llmux"]["state"] == "waking" and entry["llmux"]["queued"] == 1
        # and as metrics
        m = scrape(server)
        assert value(m, "llmux_request_queue_oldest_wait_seconds", model="b") >= 0.5
        assert value(m, "llmux_request_queue_depth", model="b") == 1
        assert value(m, "llmux_model_estimated_wait_seconds", model="a") > 0  # b's wake first
    finally:
        waiting.join(timeout=30)
    assert not waiting.is_alive()
    models = state(server).json()["models"]
    assert models["b"] == {
        "state": "awake",
        "in_flight": 0,
        "queued": 0,
        "oldest_wait_secs": 0.0,
        "estimated_wait_secs": 0.0,
    }
    assert models["a"]["state"] == "asleep" and models["a"]["estimated_wait_secs"] > 0
    m = scrape(server)
    assert value(m, "llmux_model_estimated_wait_seconds", model="b") == 0.0
    assert value(m, "llmux_request_queue_oldest_wait_seconds", model="b") == 0.0


def test_the_node_name_defaults_to_host_and_port(llmux):
    r = requests.get(llmux.url + "/llmux/state", timeout=5)
    assert r.status_code == 200  # no api_keys: open, like /v1/models
    assert r.json()["node"] == f"{socket.gethostname()}:{llmux.port}"


def test_vllm_named_series_for_the_endpoint_picker_behind_a_setting(llmux_factory):
    server = llmux_factory(models=("a", "b"), metrics={"vllm_names": True})
    assert server.chat("a").status_code == 200
    text = requests.get(server.url + "/metrics", timeout=5).text
    assert "vllm:num_requests_waiting 0.0" in text
    assert "vllm:num_requests_running 0.0" in text
    assert "vllm:kv_cache_usage_perc 1.0" in text
    assert 'running_lora_adapters="a",waiting_lora_adapters=""' in text
    off = llmux_factory(models=("a",))
    assert "vllm:" not in requests.get(off.url + "/metrics", timeout=5).text
