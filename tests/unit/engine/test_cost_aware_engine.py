"""``cost_aware`` driving the real switcher, step by step (tests/support/engine.py).

Every switch between two models is measured at 10 s before each scenario, so the
bound in force is max(60, 2 x 20) = 60 s, a waiter is stale after one switch, 10 s,
and the quantum of a model woken from another is 1 x 10 = 10 s.
"""

from __future__ import annotations

from llmux.engine.cost_aware import CostAwarePolicy, urgency_weight
from llmux.engine.policy import FifoPolicy
from tests.support.engine import Harness, Request


class Loaded(CostAwarePolicy):
    """Decides as under heavy load (rho >= 0.5: the full quantum and staleness, the
    index): these scenarios have too few requests for the measured load to be heavy."""

    def load(self, snap):
        return 1.0


def harness(models=("a", "b", "c"), policy=None, **settings) -> Harness:
    h = Harness(models, policy=policy or Loaded(max_wait_secs=60), **settings)
    for x in models:
        h.sw.costs.observe(None, x, 10.0)
        for y in models:
            if x != y:
                h.sw.costs.observe(x, y, 10.0)
    return h


def up(h: Harness, model: str):
    """``model`` awake, with one request of it in flight (returned)."""
    r = h.request(model)
    while not r.admitted:
        model_, kind = h.hooks_pending()[0]
        h.finish(model_, kind)
    return r


def test_the_awake_model_is_served_exhaustively_then_closed_gated():
    h = harness()
    busy = up(h, "a")
    h.advance(30)  # a's quantum (its cold start, 1 x 10 s) is over
    b = h.request("b")
    assert b.queued and not h.switching
    more = [h.request("a") for _ in range(3)]  # a has work: its arrivals go straight in
    assert all(r.admitted for r in more)
    h.advance(9.9)
    assert not h.switching  # b's waiter is not stale yet
    h.advance(0.2)
    assert h.switching and h.state("a") == "draining"
    late = h.request("a")  # closing is gated: it waits for a's next visit
    assert late.queued
    h.release(busy, *more)
    h.finish("a", "sleep")
    h.finish("b", "wake")
    assert b.admitted and late.queued
    h.release(b)  # b is idle and a waits: back to a at once
    h.finish("b", "sleep")
    h.finish("a", "wake")
    assert late.admitted
    assert [e[:2] for e in h.events.of("switch_finished")] == [
        (None, "a"),
        ("a", "b"),
        ("b", "a"),
    ]


def test_the_bound_holds_against_a_model_that_never_runs_out_of_work():
    # a quantum of 100 switches would keep a for 1,000 s; the bound cuts it at 60 s
    h = harness(policy=Loaded(max_wait_secs=60, quantum_factor=100))
    held = up(h, "a")
    b = h.request("b")
    for _ in range(49):
        h.advance(1)
        new = h.request("a")  # a always has a request in flight
        h.release(held)
        held = new
        assert held.admitted
    assert not h.switching  # 49 s: the deadline is 60 - 10 = 50 s
    h.advance(1.1)
    assert h.switching
    h.release(held)
    h.finish("a", "sleep")
    h.advance(9)  # the switch took its 10 s
    h.finish("b", "wake")
    assert b.admitted and b.ticket.waited <= 60.0 + 10.0


def test_an_urgent_request_goes_first_and_a_patient_one_is_not_starved():
    h = harness()
    held = up(h, "a")
    h.advance(30)
    patient = h.request("b", weight=urgency_weight(7))
    urgent = h.request("c", weight=urgency_weight(0))
    h.advance(10)
    assert h.switching
    h.release(held)
    h.finish("a", "sleep")
    assert h.hooks_pending() == [("c", "wake")]
    h.finish("c", "wake")
    assert urgent.admitted and patient.queued
    h.release(urgent)
    h.finish("c", "sleep")
    h.finish("b", "wake")
    assert patient.admitted


def test_a_wake_nobody_waits_for_is_stopped_when_another_model_waits():
    h = harness()
    b = h.request("b")
    assert h.hooks_pending() == [("b", "wake")]
    c = h.request("c")
    assert h.cancel(b)  # b's client leaves while b wakes, and c waits
    assert h.state("b") == "sleeping"
    assert h.hooks_pending() == [("b", "sleep")]
    h.finish("b", "sleep")
    assert h.state("b") == "asleep"
    h.finish("c", "wake")
    assert c.admitted
    assert h.events.of("switch_abandoned")[0][:3] == (None, "b", "nobody waits for it any more")
    assert h.calls.count(("b", "alive")) == 0  # never polled: it was never taken as up
    assert "b" not in h.up


def test_a_wake_left_by_its_waiters_is_stopped_when_another_request_arrives():
    h = harness()
    b = h.request("b")
    h.cancel(b)
    assert h.hooks_pending() == [("b", "wake")]  # nobody else waits: the wake goes on
    h.request("c")
    assert h.hooks_pending() == [("b", "sleep")]


def test_a_wake_that_is_still_wanted_is_not_stopped():
    h = harness()
    b1, b2 = h.request("b"), h.request("b")
    h.request("c")
    h.cancel(b1)
    assert h.hooks_pending() == [("b", "wake")]
    h.finish("b", "wake")
    assert b2.admitted


def test_fifo_never_stops_a_wake():
    h = harness(policy=FifoPolicy())
    b = h.request("b")
    h.request("c")
    h.cancel(b)
    assert h.hooks_pending() == [("b", "wake")]  # SPEC §5: it wakes and stays awake
    h.finish("b", "wake")
    assert h.state("b") == "awake" or h.switching


def test_under_light_load_the_busy_model_is_left_at_once_for_the_oldest_waiter():
    h = harness(policy=CostAwarePolicy(max_wait_secs=60))  # the load it measures: light
    held = up(h, "a")
    c = h.request("c")
    h.advance(1)
    b = h.request("b", weight=urgency_weight(0))
    assert h.switching  # no quantum, no staleness: a closes as FIFO would
    h.release(held)
    h.finish("a", "sleep")
    assert h.hooks_pending() == [("c", "wake")]  # the oldest waiter first, whatever b's urgency
    h.finish("c", "wake")
    assert c.admitted and b.queued


def test_a_wake_stopped_while_alive_is_polled_is_not_a_hook_failure():
    h = harness()
    h.alive_override["b"] = False  # the server loads slowly: alive keeps failing
    b = h.request("b")
    h.finish("b", "wake")
    assert h.state("b") == "waking" and h.calls[-1] == ("b", "alive")
    h.request("c")
    h.cancel(b)
    h.advance(1.0)  # the next probe comes: the polling stops there
    assert h.hooks_pending() == [("b", "sleep")]
    polled = [r for m, r in h.events.of("hook_finished") if m == "b"]
    assert [(r.hook, r.ok, r.aborted) for r in polled] == [
        ("wake", True, False),
        ("alive", False, True),
    ]


def test_a_stop_is_withdrawn_when_a_new_waiter_comes_before_the_wake_ends():
    h = harness()
    h.alive_override["b"] = False  # the wake hook returned; the server is still loading
    b = h.request("b")
    h.finish("b", "wake")
    h.request("c")
    h.cancel(b)  # nobody waits for b: its wake is to stop at the next probe
    again = h.request("b")  # ... but someone does again, before that probe
    h.alive_override["b"] = True
    h.advance(1.0)
    assert again.admitted and h.state("b") == "awake"
    assert not h.events.of("switch_abandoned")


def test_a_preload_nobody_waits_for_is_stopped_before_it_starts_when_others_wait():
    h = harness()
    b = Request("b")

    def prepare():  # a request comes while start-up probes what is awake
        b.waiter = h.sw.enter("b")
        h.requests.append(b)
        return None

    h.sw.start(prepare, preload="a")
    h.settle()
    woke = [r for m, r in h.events.of("hook_finished") if m == "a"]
    assert [(r.hook, r.aborted) for r in woke] == [("wake", True)]  # stopped as it began
    assert h.hooks_pending() == [("a", "sleep")]
    h.finish("a", "sleep")
    h.finish("b", "wake")
    assert b.admitted
    assert h.events.of("switch_abandoned")[0][:3] == (None, "a", "nobody waits for it any more")
