"""The switcher's estimates: what Retry-After, loading progress and /llmux/status say."""

from __future__ import annotations

import threading

import pytest

from llmux.engine.policy import SwitchCosts
from llmux.engine.switcher import Switcher, SwitchSettings
from llmux.errors import QueueFull

from .fakes import FakeHooks
from .test_switcher import join, spawn, wait_for


class GatedHooks(FakeHooks):
    """b's wake holds until ``gate`` is set; ``fraction`` is what it says it reached."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.fraction = None
        self.override[("b", "wake")] = self._gated_wake

    def _gated_wake(self):
        assert self.gate.wait(10)
        with self.lock:
            self.up.add("b")
        return 0

    def progress(self, model):
        return self.fraction if model == "b" else None


def make(costs: dict, **settings):
    known = SwitchCosts()
    for (a, b), secs in costs.items():
        known.observe(a, b, secs)
    hooks = GatedHooks()
    sw = Switcher(["a", "b", "c"], hooks, SwitchSettings(**settings), costs=known)
    sw.acquire("a", timeout=5).release()
    return sw, hooks


def models(sw):
    return sw.status()["models"]


def test_no_estimate_before_any_switch_was_measured():
    sw = Switcher(["a", "b"], FakeHooks())
    assert models(sw)["b"]["estimated_wait_secs"] is None
    sw.acquire("a", timeout=5).release()
    assert models(sw)["a"]["estimated_wait_secs"] == 0.0


def test_estimates_without_and_during_a_switch():
    sw, hooks = make({("a", "b"): 100.0, ("b", "c"): 40.0})
    assert models(sw)["b"]["estimated_wait_secs"] == 100.0
    # a -> c was never measured: the mean of the switches into c
    assert models(sw)["c"]["estimated_wait_secs"] == 40.0
    waiting = spawn(sw.acquire, "b", timeout=10)
    wait_for(lambda: models(sw)["b"]["state"] == "waking")
    now = models(sw)
    assert 99.0 <= now["b"]["estimated_wait_secs"] <= 100.0  # the rest of its switch
    assert 139.0 <= now["c"]["estimated_wait_secs"] <= 140.0  # that, then b -> c
    assert now["a"]["estimated_wait_secs"] >= 99.0  # asleep now: back after b
    hooks.fraction = 0.25  # the hook's own word wins over the average
    assert models(sw)["b"]["hook_progress"] == 0.25
    assert models(sw)["b"]["estimated_wait_secs"] < 5.0  # 3x the time it took for 25 %
    hooks.gate.set()
    join(waiting)
    waiting["value"].release()
    assert models(sw)["b"]["estimated_wait_secs"] == 0.0


def test_queue_positions_are_by_arrival_across_models():
    sw, hooks = make({("a", "b"): 100.0})
    places = []
    first = spawn(sw.acquire, "b", timeout=10, queued=places.append)
    wait_for(lambda: len(places) == 1)
    second = spawn(sw.acquire, "c", timeout=10, queued=places.append)
    wait_for(lambda: len(places) == 2)
    third = spawn(sw.acquire, "b", timeout=10, queued=places.append)
    wait_for(lambda: len(places) == 3)
    by_model = {n: [q["position"] for q in m["queue"]] for n, m in models(sw).items()}
    assert by_model == {"a": [], "b": [1, 3], "c": [2]}
    mine = sw.progress(places[0])
    assert (mine["model"], mine["position"], mine["queued"]) == ("b", 1, 3)
    assert 99.0 <= mine["eta_secs"] <= 100.0
    assert sw.progress(places[1])["position"] == 2
    hooks.gate.set()
    for box in (first, third, second):  # b's two first, or c's switch waits for their drain
        join(box)
        box["value"].release()
    assert sw.progress(places[0])["position"] is None  # admitted: no longer queued


def test_queue_full_says_when_to_come_back():
    sw, hooks = make({("a", "b"): 7.2}, max_queue_depth=1)
    first = spawn(sw.acquire, "b", timeout=10)
    wait_for(lambda: models(sw)["b"]["queued"] == 1)
    with pytest.raises(QueueFull) as full:
        sw.acquire("b", timeout=1)
    assert full.value.retry_after in (7, 8)  # ceil(7.2 less what has passed)
    hooks.gate.set()
    join(first)
    first["value"].release()
