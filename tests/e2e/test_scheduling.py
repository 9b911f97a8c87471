"""``policy_type: cost_aware`` in a real llmux: exhaustive service, the bound, priorities,
and a wake stopped when nobody waits for it any more."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support import wait_for

pytestmark = pytest.mark.e2e


def cost_aware(**policy) -> dict:
    return {"policy_type": "cost_aware", "failure_backoff_secs": 0.2, **policy}


def keep_busy(server, model: str, until: threading.Event, hold_ms: int = 800):
    """Two clients that keep one request of ``model`` in flight at all times, until
    ``until`` is set; their answers' (sent at, queue wait ms) are collected in the
    returned list. The second value returned joins the clients."""
    seen: list[tuple[float, int]] = []

    def client(offset: float) -> None:
        time.sleep(offset)  # staggered, so a request is always in flight
        with requests.Session() as s:
            while not until.is_set():
                sent = time.monotonic()
                r = s.post(
                    server.url + "/v1/chat/completions",
                    json={"model": model, "messages": [], "fake": {"headers_delay_ms": hold_ms}},
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                seen.append((sent, int(r.headers["X-Llmux-Queue-Wait-Ms"])))

    threads = [
        threading.Thread(target=client, args=(offset,), daemon=True)
        for offset in (0.0, hold_ms / 2000)
    ]
    for t in threads:
        t.start()

    def join() -> None:
        until.set()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive()

    return seen, join


def heavy(server) -> None:
    """Wait until llmux estimates a heavy load (>= 0.5, the full quantum) and a is busy."""

    def loaded() -> bool:
        status = server.status()
        return status["estimated_load"] >= 0.5 and status["models"]["a"]["in_flight"] > 0

    wait_for(loaded, 20)


def test_the_awake_model_keeps_serving_until_the_bound_then_the_other_is_served(
    llmux_factory,
):
    # a quantum of 100 switches (a switch here takes 0.1-0.3 s, and a's visit starts
    # before b arrives): only the bound (2 s) ends a's visit; a is heavily loaded (two
    # clients, one request in flight each, concurrency 1 assumed)
    server = llmux_factory(
        models=("a", "b"), policy=cost_aware(max_wait_secs=2, quantum_factor=100)
    )
    assert server.chat("a").status_code == 200
    seen, join = keep_busy(server, "a", threading.Event())
    try:
        heavy(server)
        asked = time.monotonic()
        b = server.chat("b")
        waited = time.monotonic() - asked
    finally:
        join()
    assert b.status_code == 200
    status = server.status()
    assert status["policy"] == "cost_aware"
    bound = status["models"]["b"]["wait_bound_secs"]
    assert bound >= 2.0
    switch = status["last_switch"]["duration_secs"]
    # exhaustive: requests for a sent while b waited went straight in ...
    straight_in = [w for sent, w in seen if asked < sent < asked + waited - 1.0 and w == 0]
    assert straight_in, seen
    # ... and b was served within the bound plus one switch (its drain included)
    assert int(b.headers["X-Llmux-Queue-Wait-Ms"]) / 1000 <= bound + switch + 1.0
    assert waited > 1.0  # it did wait: a was not left at once


def test_a_wake_nobody_waits_for_is_stopped_and_the_waiting_model_served(llmux_factory):
    server = llmux_factory(models=("a", "b", "c"), policy=cost_aware())
    server.fault("wake", "b", "sleep 9")  # b takes 9 s to wake (its wake_timeout is 10 s)
    body = {"model": "b", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(requests.Timeout):
        server.post(body=body, timeout=1)  # its client gives up after 1 s
    wait_for(lambda: server.status()["models"]["b"]["queued"] == 0, 10)
    assert server.status()["models"]["b"]["state"] == "waking"  # nobody else waits yet
    asked = time.monotonic()
    c = server.chat("c")
    assert c.status_code == 200
    assert time.monotonic() - asked < 6  # not the rest of b's 9 s wake
    records = server.log_records()
    stopped = [r for r in records if r.get("event") == "hook_stopped"]
    assert [(r["model"], r["hook"]) for r in stopped] == [("b", "wake")]
    abandoned = [r for r in records if r.get("event") == "switch_abandoned"]
    assert [(r["to"], r["reason"]) for r in abandoned] == [("b", "nobody waits for it any more")]
    assert server.status()["models"]["b"]["state"] == "asleep"
    assert ("sleep", "b") in server.hook_runs()
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert 'llmux_switch_total{from="idle",result="abandoned",to="b"} 1.0' in metrics
    # the wake's `sleep 9` went with its process group (the fixture checks no survivor)


def ask(server, model: str, priority: str):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return server.post(body=body, headers={"Priority": priority})


def test_an_urgent_request_is_served_before_a_patient_one(llmux_factory):
    # a long quantum and bound: a's visit ends when a runs out of work, and then the
    # index (heavy load) picks the next model
    policy = cost_aware(max_wait_secs=60, quantum_factor=100)
    server = llmux_factory(models=("a", "b", "c"), policy=policy)
    assert server.chat("a").status_code == 200
    _, join = keep_busy(server, "a", threading.Event())
    try:
        heavy(server)
        with ThreadPoolExecutor(2) as pool:
            patient = pool.submit(ask, server, "b", "u=7")
            wait_for(lambda: server.status()["models"]["b"]["queued"] == 1, 10)
            urgent = pool.submit(ask, server, "c", "u=0, i")
            wait_for(lambda: server.status()["models"]["c"]["queued"] == 1, 10)
            assert not server.status()["switching"]  # a still has work
            join()  # a runs out of work
            assert urgent.result().status_code == 200
            assert patient.result().status_code == 200
    finally:
        join()
    wakes = [m for k, m in server.hook_runs(kind="wake") if m != "a"]
    assert wakes[:2] == ["c", "b"]
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert 'llmux_wait_bound_seconds{model="b"}' in metrics
