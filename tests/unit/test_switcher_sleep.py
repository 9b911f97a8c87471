"""Putting a model to sleep with no switch behind it: by hand, for idleness, by a reload.

Runs under plain threads and, in tox's gevent env, under greenlets.
"""

from __future__ import annotations

import threading
import time

import pytest

from llmux.engine.switcher import ASLEEP, AWAKE, Switcher, SwitchSettings
from llmux.errors import ModelNotFound

from .fakes import FakeHooks
from .test_switcher import MODELS, join, spawn, wait_for


def make(idle=None, **settings):
    hooks = FakeHooks()
    return Switcher(MODELS, hooks, SwitchSettings(**settings), idle_sleep=idle), hooks


def test_sleep_drains_then_runs_the_sleep_hook():
    sw, hooks = make()
    ticket = sw.acquire("a", timeout=5)
    box = spawn(sw.sleep, "a", timeout=5)
    time.sleep(0.05)
    assert sw.state("a") == "draining" and hooks.count("a", "sleep") == 0
    ticket.release()
    join(box)
    assert box["value"] == ASLEEP and hooks.up == set()
    assert sw.status()["active"] is None


def test_a_request_arriving_while_it_sleeps_wakes_it_again():
    sw, hooks = make()
    hooks.sleep_secs = 0.1
    sw.acquire("a", timeout=5).release()
    box = spawn(sw.sleep, "a", timeout=5)
    wait_for(lambda: sw.state("a") == "sleeping")
    ticket = sw.acquire("a", timeout=5)  # queued, then served by a fresh wake
    join(box)
    assert box["value"] == ASLEEP
    assert sw.state("a") == AWAKE and hooks.count("a", "wake") == 2
    ticket.release()


def test_sleep_of_an_asleep_or_unknown_model():
    sw, hooks = make()
    assert sw.sleep("b") == ASLEEP and hooks.calls == []
    with pytest.raises(ModelNotFound):
        sw.sleep("zzz")


def test_a_failing_sleep_hook_with_the_model_alive_keeps_it_awake():
    sw, hooks = make()
    sw.acquire("a", timeout=5).release()
    hooks.override[("a", "sleep")] = lambda: 1
    assert sw.sleep("a") == AWAKE
    sw.acquire("a", timeout=1).release()  # still served
    hooks.override.clear()
    sw.acquire("b", timeout=5).release()  # and a switch still works
    assert hooks.overlaps == []


def test_idle_sleep_counts_from_the_end_of_the_last_request():
    sw, hooks = make(idle={"a": 0.3, "b": None, "c": 0.3})
    ticket = sw.acquire("a", timeout=5)
    time.sleep(0.5)  # in flight: never idle
    assert sw.state("a") == AWAKE
    ticket.release()
    released = time.monotonic()
    wait_for(lambda: sw.state("a") == ASLEEP, timeout=3)
    assert time.monotonic() - released >= 0.29
    sw.acquire("b", timeout=5).release()
    time.sleep(0.5)
    assert sw.state("b") == AWAKE  # no idle time for b
    sw.close()


def test_queued_requests_for_another_model_prevent_idle_sleep():
    sw, hooks = make(idle={"a": 0.2, "b": None, "c": None}, min_active_secs=0.6)
    sw.acquire("a", timeout=5).release()
    box = spawn(sw.acquire, "b", timeout=5)  # waits out a's residency
    join(box)
    assert box["value"].model == "b"
    box["value"].release()
    assert ("a", "sleep") in hooks.calls and hooks.overlaps == []
    sw.close()


def test_reconfigure_adds_and_removes_models():
    sw, hooks = make()
    sw.acquire("a", timeout=5).release()
    still_awake = sw.reconfigure({"b": None, "c": None, "d": 1.0})
    assert still_awake == ["a"]
    with pytest.raises(ModelNotFound):
        sw.acquire("a", timeout=1)
    assert sw.sleep("a", reason="reload") == ASLEEP
    assert "a" not in sw.status()["models"]
    sw.acquire("d", timeout=5).release()
    assert sw.status()["models"]["d"]["idle_sleep_secs"] == 1.0
    assert hooks.overlaps == []
    sw.close()


def test_a_removed_awake_model_is_forgotten_after_the_next_switch():
    sw, hooks = make()
    sw.acquire("a", timeout=5).release()
    sw.reconfigure({"b": None, "c": None})
    sw.acquire("b", timeout=5).release()  # the switch puts a to sleep with its hooks
    assert set(sw.status()["models"]) == {"b", "c"}
    assert hooks.count("a", "sleep") == 1


def test_preload_at_start():
    sw, hooks = make()
    sw.start(lambda: None, preload="c")
    wait_for(lambda: sw.state("c") == AWAKE)
    assert hooks.calls[0] == ("c", "wake")


def test_preload_is_skipped_when_a_model_is_already_awake():
    sw, hooks = make()
    hooks.up.add("a")
    sw.start(lambda: "a", preload="c")
    wait_for(lambda: not sw.status()["switching"])
    time.sleep(0.05)
    assert sw.status()["active"] == "a" and hooks.calls == []


def test_the_timer_outlives_a_policy_that_raises_once():
    from llmux.engine.policy import FifoPolicy

    class Flaky(FifoPolicy):
        failed = False

        def idle_due(self, snap):
            due = super().idle_due(snap)
            if (
                due is not None
                and not self.failed
                and threading.current_thread().name == ("llmux-timer")
            ):
                self.failed = True
                raise RuntimeError("a bad answer, once")
            return due

    policy = Flaky()
    hooks = FakeHooks()
    sw = Switcher(MODELS, hooks, SwitchSettings(), policy=policy, idle_sleep={"a": 0.05})
    sw.acquire("a", timeout=5).release()
    wait_for(lambda: sw.state("a") == ASLEEP, timeout=10)
    assert policy.failed, "the timer's pass really raised"
