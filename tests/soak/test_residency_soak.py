"""A time-boxed soak of residency on a fake GPU (LLMUX_SOAK_SECS / 3 per case, default 15).

Four models on a fake 24 GiB GPU (llmux.demo.fake_gpu, which fails a wake as CUDA
does when full; with a probe it gives a stopped backend's memory back only 0.3 s
after the backend exited):
a 10 GiB, b 8 GiB pinned, c 12 GiB never awake with a, d 6 GiB. Concurrent clients
ask for random models. Two cases: sizes declared as they are, and sizes declared
20 % too small with a probe. Invariants at the end: no wake ran out of memory (none
failed, none retried), every request answered 200, b never put to sleep for room, a
and c never up together (from the hook log), the books balanced, and with the probe
every model's measured size within 5 % of the truth once it woke 3 times.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
import requests

from tests.e2e.test_residency import PROBE, gpu_models, out_of_memory_wakes

pytestmark = pytest.mark.soak
SECONDS = float(os.environ.get("LLMUX_SOAK_SECS", "45")) / 3
GiB = 1024**3
TRUE = {"a": 10, "b": 8, "c": 12, "d": 6}  # GiB


def up_together(events, first: str, second: str) -> list[float]:
    """Times at which ``first`` and ``second`` were both up (wake start to sleep end)."""
    up: set[str] = set()
    clashes = []
    for at, phase, kind, model, _ in events:
        if kind == "wake" and phase == "start":
            up.add(model)
            if {first, second} <= up:
                clashes.append(at)
        elif kind == "sleep" and phase == "end":
            up.discard(model)
    return clashes


@pytest.mark.parametrize("declared", ["true", "20% too small, with a probe"])
def test_residency_soak(llmux_factory, declared):
    probe = declared != "true"
    sizes = {m: (round(t / 1.2, 2) if probe else t, t) for m, t in TRUE.items()}
    # memory comes back as the sleep hook ends, or, with a probe, 0.3 s after the
    # backend exited (llmux waits for it then)
    entries = gpu_models("24GiB", release_ms=300 if probe else 0, **sizes)
    entries["b"]["pin"] = True
    entries["c"]["exclusive_with"] = ["a"]
    server = llmux_factory(
        entries,
        memory={"budget": "24GiB", **({"probe": PROBE} if probe else {})},
        policy={"request_timeout_secs": 30, "failure_backoff_secs": 0.2},
    )
    statuses: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + SECONDS

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            model = rng.choices("abcd", weights=(4, 3, 2, 1))[0]
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            try:
                r = requests.post(server.url + "/v1/chat/completions", json=body, timeout=60)
                status = r.status_code
            except requests.RequestException:
                status = 0
            with lock:
                statuses.append(status)
            time.sleep(rng.uniform(0, 0.3))  # think time, so idle models exist

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 120)
        assert not t.is_alive(), "a client never finished"

    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert not out_of_memory_wakes(server)
    assert not [r for r in server.log_records() if r.get("event") == "wake_retried"]
    status = server.status()
    evicted = [r for r in server.log_records() if r.get("event") == "model_evicted"]
    assert evicted, "nothing was ever put to sleep to make room: the soak tested nothing"
    assert all(r["model"] != "b" for r in evicted), "the pinned model was evicted"
    assert up_together(server.events(), "a", "c") == []
    for name, m in status["models"].items():
        assert m["in_flight"] == 0 and m["queued"] == 0, (name, m)
    wakes = {m: len(server.hook_runs("wake", m)) for m in TRUE}
    print(f"residency soak ({declared}): {len(statuses)} requests, wakes {wakes}, "
          f"{len(evicted)} evictions")  # fmt: skip
    if probe:
        for model, true in TRUE.items():
            measured = status["memory"]["models"][model]["measured"]
            if wakes[model] >= 3:
                assert abs(measured - true * GiB) <= 0.05 * true * GiB, (model, measured)
