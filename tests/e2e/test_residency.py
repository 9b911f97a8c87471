"""Several models awake at once under a memory budget: real gunicorn, real hooks, fake
backends that take their memory from a fake GPU (llmux.demo.fake_gpu), which fails a
wake the way CUDA does when it is full, and a probe that reads it."""

from __future__ import annotations

import json
import sys

import pytest
import requests

from llmux.demo import fake_gpu
from tests.support import free_port, wait_for

from .conftest import model_entry

GiB = 1024**3
PROBE = f"{sys.executable} -m llmux.demo.fake_gpu used --ledger gpu.json"


def gpu_models(capacity: str, release_ms: int = 0, **sizes) -> dict:
    """Model entries whose wakes reserve their true size (GiB) on the fake GPU, which
    gives a stopped backend's memory back ``release_ms`` after it exits; each size given
    as ``(declared GiB, true GiB)`` or one number for both."""
    entries = {}
    for name, size in sizes.items():
        declared, true = size if isinstance(size, tuple) else (size, size)
        entry = model_entry(
            free_port(),
            FAKE_GPU_LEDGER="gpu.json",
            FAKE_GPU_BYTES=f"{true}GiB",
            FAKE_GPU_CAPACITY=capacity,
            FAKE_GPU_RELEASE_MS=release_ms,
        )
        entries[name] = {**entry, "memory": f"{declared}GiB"}
    return entries


def ledger(server) -> dict:
    return fake_gpu.read(str(server.dir / "gpu.json"))


def out_of_memory_wakes(server) -> list[dict]:
    return [
        r
        for r in server.log_records()
        if r.get("event") == "hook_failed" and "out of memory" in json.dumps(r).lower()
    ]


def test_models_that_fit_stay_awake_together_and_an_idle_one_makes_room(llmux_factory):
    server = llmux_factory(
        gpu_models("24GiB", a=10, b=12, c=6),
        memory={"budget": "24GiB", "probe": PROBE},
    )
    assert server.chat("a") and server.chat("b")
    status = server.status()
    assert sorted(status["awake"]) == ["a", "b"] and ("sleep", "a") not in server.hook_runs()
    assert ledger(server)["used"] == 22 * GiB
    models = {m["id"]: m for m in requests.get(server.url + "/v1/models", timeout=5).json()["data"]}
    assert models["a"]["state"] == models["b"]["state"] == "awake"
    assert models["a"]["llmux"]["memory"] == {"declared": 10 * GiB, "measured": 10 * GiB}

    assert server.chat("c")  # 10 + 12 + 6 > 24: one of a and b, both idle, sleeps
    status = server.status()
    evicted = status["memory"]["evictions"][0]
    assert evicted["for"] == "c" and evicted["reason"] == "room"
    assert sorted(status["awake"]) == sorted({"a", "b", "c"} - {evicted["model"]})
    assert ledger(server)["used"] <= 24 * GiB and not out_of_memory_wakes(server)
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert "llmux_memory_budget_bytes 2.5769803776e+10" in metrics
    assert f'llmux_model_evictions_total{{model="{evicted["model"]}",reason="room"}} 1.0' in metrics
    assert 'llmux_model_memory_bytes{model="c",source="measured"} 6.442450944e+09' in metrics


def test_sizes_declared_too_small_are_measured_and_no_wake_runs_out_of_memory(llmux_factory):
    """Every size is declared 20 % too small. a's first wake shows it; from then on,
    fitting counts every model at its measured size, or at the declared one times the
    ratio seen, so b, which really fits only without a, never meets a full GPU."""
    server = llmux_factory(
        gpu_models("22GiB", a=(10, 12), b=(10, 12), c=(5, 6)),
        memory={"budget": "22GiB", "probe": PROBE},
    )
    for model in ("a", "b", "c", "a", "b", "c", "a", "b"):
        assert server.chat(model)
        assert ledger(server)["used"] <= 22 * GiB
    assert not out_of_memory_wakes(server)
    memory = server.status()["memory"]
    for model, true in (("a", 12), ("b", 12), ("c", 6)):
        assert abs(memory["models"][model]["measured"] - true * GiB) <= 0.05 * true * GiB
        assert memory["models"][model]["over_declared"] is True
    warned = [r for r in server.log_records() if r.get("event") == "memory_over_declared"]
    assert {r["model"] for r in warned} == {"a", "b", "c"}


@pytest.mark.parametrize("probe", [True, False])
def test_a_wake_waits_for_the_memory_a_sleep_gives_back(llmux_factory, probe):
    """The fake GPU gives a stopped backend's memory back 1.5 s after it exits, as a
    driver does. With a probe llmux waits for it and b wakes at once; without one,
    b's wake fails as out of memory and, with nothing else to put to sleep, fails."""
    server = llmux_factory(
        gpu_models("20GiB", release_ms=1500, a=12, b=12),
        memory={"budget": "20GiB", **({"probe": PROBE} if probe else {})},
        policy={"failure_backoff_secs": 0.2},
    )
    assert server.chat("a")
    r = server.post(body={"model": "b", "messages": [{"role": "user", "content": "hi"}]})
    if probe:
        assert r.status_code == 200, r.text
        assert not out_of_memory_wakes(server)
        assert server.status()["memory"]["evictions"][0]["model"] == "a"
    else:
        assert r.status_code == 503 and "out of memory" in r.json()["error"]["message"].lower()
        wait_for(lambda: ledger(server)["used"] == 0, 10)
        assert server.chat("b")  # once the memory is back, the next request wakes it


def test_a_restart_keeps_every_model_left_awake_that_fits(llmux_factory):
    from .conftest import Llmux
    from .test_process_life import _config_of, awake_backends

    server = llmux_factory(gpu_models("24GiB", a=10, b=12, c=6), memory={"budget": "24GiB"})
    assert server.chat("a") and server.chat("b")
    server.terminate()
    assert awake_backends(server) == {"a", "b"}
    again = Llmux(server.dir, _config_of(server), (), None)
    try:
        wait_for(lambda: sorted(again.status()["awake"]) == ["a", "b"], 20)  # start-up
        assert again.chat("a") and again.chat("b")
        assert server.hook_runs("wake") == [("wake", "a"), ("wake", "b")], "woken twice"
        found = [r for r in again.log_records() if r.get("event") == "reconciled"]
        assert found and sorted(found[-1]["models"]) == ["a", "b"]
    finally:
        again.cleanup()
