"""Commit points: before each irreversible step a switch asks the policy again, under the lock.

SPEC §5: a queued request that leaves never causes a switch. A drain can take
minutes; by its end the waiter the switch was for may be gone.
"""

from __future__ import annotations

import threading
import time

import pytest

from llmux.engine.switcher import ASLEEP, AWAKE, DRAINING, FAILED
from llmux.errors import ClientGone, ModelUnavailable, QueueTimeout

from .fakes import FakeHooks
from .test_switcher import join, make, spawn, wait_for


def awake(sw, model):
    sw.acquire(model, timeout=5).release()
    assert sw.state(model) == AWAKE


def last_result(sw):
    last = sw.status()["last_switch"]
    return last and last["result"]


def draining_for_a_waiter_who_leaves(sw):
    """a serves a request; a waiter for b arrives, and leaves (its client goes) when
    the test sets the returned event, before the drain ends."""
    awake(sw, "a")
    ticket = sw.acquire("a", timeout=5)
    leave = threading.Event()
    gone = spawn(sw.acquire, "b", timeout=10, cancelled=leave.is_set)
    wait_for(lambda: sw.status()["models"]["b"]["queued"] == 1)
    # the switch for b may start a moment after b queued: until a drains, a request
    # for a is admitted at once instead of queueing behind the drain
    wait_for(lambda: sw.state("a") == DRAINING)
    return ticket, gone, leave


def test_a_switch_whose_waiter_left_during_the_drain_is_abandoned():
    sw, hooks = make()
    awake(sw, "a")
    ticket = sw.acquire("a", timeout=5)  # a long request keeps a draining
    with pytest.raises(QueueTimeout):
        sw.acquire("b", timeout=0.1)
    ticket.release()
    wait_for(lambda: last_result(sw) == "abandoned")
    assert hooks.count("a", "sleep") == 0 and hooks.count("b", "wake") == 0
    assert sw.state("a") == AWAKE and sw.status()["active"] == "a"
    assert sw.status()["last_switch"]["to"] == "b"
    sw.acquire("a", timeout=1).release()  # served at once, no switch


def test_a_switch_goes_on_to_whoever_waits_now():
    sw, hooks = make()
    ticket, gone, leave = draining_for_a_waiter_who_leaves(sw)
    later = spawn(sw.acquire, "c", timeout=5)
    wait_for(lambda: sw.status()["models"]["c"]["queued"] == 1)
    leave.set()
    join(gone)
    assert isinstance(gone["error"], ClientGone)
    ticket.release()
    join(later)
    later["value"].release()
    assert hooks.count("b", "wake") == 0, "b was woken for nobody"
    assert hooks.calls.count(("a", "sleep")) == 1 and hooks.count("c", "wake") == 1
    assert sw.status()["active"] == "c" and last_result(sw) == "success"


def test_a_waiter_leaving_during_the_sleep_hook_means_no_wake():
    hooks = FakeHooks(sleep_secs=0.4)
    sw, _ = make(hooks)
    awake(sw, "a")
    box = spawn(sw.acquire, "b", timeout=0.2)
    join(box)
    assert isinstance(box["error"], QueueTimeout)
    wait_for(lambda: last_result(sw) == "abandoned")
    assert hooks.count("a", "sleep") == 1 and hooks.count("b", "wake") == 0
    assert sw.status()["active"] is None
    assert sw.state("a") == ASLEEP and sw.state("b") == ASLEEP
    started = time.monotonic()
    sw.acquire("b", timeout=5).release()  # the next request wakes b as usual
    assert time.monotonic() - started < 1 and hooks.count("b", "wake") == 1


def test_a_request_for_the_draining_model_keeps_it_awake_when_the_other_left():
    sw, hooks = make()
    ticket, gone, leave = draining_for_a_waiter_who_leaves(sw)
    again = spawn(sw.acquire, "a", timeout=5)  # queues: a is draining
    wait_for(lambda: sw.status()["models"]["a"]["queued"] == 1)
    leave.set()
    join(gone)
    ticket.release()
    join(again)
    again["value"].release()
    assert hooks.count("a", "sleep") == 0 and hooks.count("b", "wake") == 0
    assert last_result(sw) == "abandoned"


def boom():
    raise OSError(24, "Too many open files")


def test_a_switch_that_crashes_in_the_sleep_step_leaves_the_old_model_serving():
    sw, hooks = make()
    awake(sw, "a")
    hooks.override[("a", "sleep")] = boom
    box = spawn(sw.acquire, "b", timeout=5)
    join(box)
    assert isinstance(box["error"], ModelUnavailable)
    assert sw.state("a") == AWAKE and sw.status()["active"] == "a"
    assert not sw.status()["switching"]
    sw.acquire("a", timeout=1).release()  # served at once
    del hooks.override[("a", "sleep")]
    sw.acquire("b", timeout=5).release()  # and the next switch goes through
    assert sw.status()["active"] == "b" and not hooks.overlaps


def test_a_switch_that_crashes_in_the_wake_step_fails_the_target_and_recovers():
    sw, hooks = make(failure_backoff_secs=0.05)
    awake(sw, "a")
    hooks.override[("b", "wake")] = boom
    box = spawn(sw.acquire, "b", timeout=5)
    join(box)
    assert isinstance(box["error"], ModelUnavailable)
    assert sw.state("b") == FAILED and sw.status()["active"] is None
    assert hooks.calls[-1] == ("b", "sleep"), "the half-woken target is cleaned up"
    del hooks.override[("b", "wake")]
    sw.acquire("b", timeout=5).release()
    assert sw.state("b") == AWAKE
