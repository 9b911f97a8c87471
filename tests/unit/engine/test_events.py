"""Events are values, delivered after the switcher's lock is released, in order,
in the context of the request they are about; an observer that raises fails nothing."""

from __future__ import annotations

import contextvars
import logging

from llmux.engine.events import EVENTS, Observer, SwitchFinished
from llmux.errors import ModelUnavailable
from tests.support.engine import Harness

request_id = contextvars.ContextVar("request_id", default="-")


class LockWatcher(Observer):
    """Notes, for every event, whether the switcher's lock was held when it came."""

    def __init__(self):
        self.switcher = None
        self.seen: list[tuple[str, bool]] = []

    def emit(self, event):
        self.seen.append((event.kind, self.switcher._lock.locked()))


class Exploding(Observer):
    def emit(self, event):
        raise RuntimeError(f"observer broke on {event.kind}")


class ContextNoter(Observer):
    def __init__(self):
        self.ids: list[tuple[str, str]] = []

    def request_left_queue(self, model, reason, waited):
        self.ids.append((reason, request_id.get()))


def test_every_event_is_delivered_with_the_lock_released():
    watcher = LockWatcher()
    h = Harness(observers=[watcher])
    watcher.switcher = h.sw
    r = h.request("a")
    h.finish("a", "wake")
    h.release(r)
    b = h.request("b")
    h.finish("a", "sleep")
    h.finish("b", "wake")
    assert b.admitted
    kinds = {kind for kind, _ in watcher.seen}
    assert {"request_queued", "state_changed", "switch_finished", "hook_finished"} <= kinds
    assert not [kind for kind, locked in watcher.seen if locked]


def test_events_arrive_in_the_order_they_happened():
    h = Harness()
    r = h.request("a")
    h.finish("a", "wake")
    states = [f for k, f in h.events.events if k == "state_changed"]
    assert states == [("a", "waking"), ("a", "awake")]
    kinds = [k for k, _ in h.events.events]
    assert (
        kinds.index("switch_started")
        < kinds.index("hook_finished")
        < kinds.index("switch_finished")
    )
    assert kinds.index("switch_finished") < kinds.index("request_admitted")
    h.release(r)


def test_an_observer_that_raises_is_logged_and_fails_no_switch(caplog):
    h = Harness(observers=[Exploding()])
    with caplog.at_level(logging.ERROR, logger="llmux.switcher"):
        r = h.request("a")
        h.finish("a", "wake")
    assert r.admitted and h.state("a") == "awake"
    assert h.events.of("switch_finished"), "the other observers still get every event"
    assert any("Exploding failed on switch_finished" in rec.getMessage() for rec in caplog.records)


def test_what_happens_to_a_queued_request_is_reported_in_its_context():
    noter = ContextNoter()
    h = Harness(observers=[noter])
    token = request_id.set("req-1")
    try:
        r = h.request("a")  # queued in req-1's context
    finally:
        request_id.reset(token)
    h.finish("a", "wake", rc=1)
    h.finish("a", "sleep")  # the wake failed: the waiter fails, reported from the procedure
    assert isinstance(r.error, ModelUnavailable)
    assert noter.ids == [("failed", "req-1")]


def test_events_are_frozen_values_with_one_kind_each():
    kinds = [cls.kind for cls in EVENTS]
    assert len(kinds) == len(set(kinds)) and all(kinds)
    event = SwitchFinished("a", "b", True, 1.5)
    try:
        event.ok = False
    except AttributeError:
        pass
    else:
        raise AssertionError("an event could be changed after it was emitted")
    assert event.values() == ["a", "b", True, 1.5, "", None, None]


def test_the_switcher_survives_its_own_observer_raising(caplog):
    h = Harness()
    h.sw.observer = Exploding()  # not behind Observers: the switcher's own catch
    with caplog.at_level(logging.ERROR, logger="llmux.switcher"):
        r = h.request("a")
        h.finish("a", "wake")
    assert r.admitted and h.state("a") == "awake" and not h.switching
    assert any("observer failed on switch_finished" in rec.getMessage() for rec in caplog.records)
