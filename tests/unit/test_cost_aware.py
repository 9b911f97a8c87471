"""``cost_aware`` decisions from tables, the way FIFO's are tested (tests/unit/test_policy.py).

Costs in these tables: every switch between a and b (and c) measured at 10 s, so the
bound in force is max(max_wait_secs=60, 2 x (10 + 10)) = 60 s, stale waiters are
those older than one switch, 10 s, and a quantum is 1 x 10 = 10 s.
"""

import pytest

from llmux.engine.cost_aware import CostAwarePolicy, urgency_weight
from llmux.engine.estimates import RunningSwitch
from llmux.engine.policy import Snapshot, Stay, SwitchTo, WaitUntil

COSTS = {(x, y): 10.0 for x in "abc" for y in "abc" if x != y}


def snap(queues=None, *, active="a", state="awake", in_flight=1, **kw):
    """``queues``: model -> arrival times, or (arrival, weight) pairs."""
    queues = queues or {}
    arrivals, weights = {}, {}
    for model, queue in queues.items():
        pairs = [q if isinstance(q, tuple) else (q, 1.0) for q in queue]
        arrivals[model] = tuple(t for t, _ in pairs)
        weights[model] = (len(pairs), sum(w for _, w in pairs), sum(w * t for t, w in pairs))
    base = dict(
        now=100.0,
        active=active,
        awake_since=70.0 if active else None,
        in_flight={active: in_flight} if active else {},
        queues=arrivals,
        queue_weights=weights,
        costs=COSTS,
        states={active: state} if active else {},
        came_from="b",
        service_secs={"a": 1.0, "b": 1.0, "c": 1.0},
    )
    base.update(kw)
    return Snapshot(**base)


TO_B = RunningSwitch("a", "b", 95.0)  # a switch a -> b, begun at 95


def policy(**kw):
    return CostAwarePolicy(max_wait_secs=60, **kw)


@pytest.mark.parametrize(
    "snapshot, expected",
    [
        # nobody waits: stay (and never sleep a model only because it is idle)
        (snap(), Stay()),
        (snap(in_flight=0), Stay()),
        # its own waiters are admitted directly: exhaustive service
        (snap({"a": (99.0,)}), Stay()),
        # b waits 1 s while a is busy: a stays until b's waiter is stale (99 + 10)
        (snap({"b": (99.0,)}), WaitUntil(109.0)),
        # ... or until a's quantum is over, whichever is later (woken at 95: 95 + 10)
        (snap({"b": (80.0,)}, awake_since=95.0), WaitUntil(105.0)),
        # quantum served and a stale waiter elsewhere: leave
        (snap({"b": (80.0,)}), SwitchTo("b")),
        # a is idle: switch at once, stale or not, quantum or not
        (snap({"b": (99.9,)}, in_flight=0, awake_since=99.0), SwitchTo("b")),
        # ... but min_active_secs still holds an idle model
        (
            snap({"b": (99.9,)}, in_flight=0, awake_since=99.0, min_active_secs=5),
            WaitUntil(104.0),
        ),
        # the hard bound cuts the quantum short: b's oldest (45 s) + a switch (10 s) >= 60 s
        (snap({"b": (45.0,)}, awake_since=99.0), SwitchTo("b")),
        # ... and the wait is until that deadline when it comes before staleness
        (snap({"b": (99.0,)}, awake_since=99.0, min_active_secs=100), WaitUntil(149.0)),
        # failure backoff delays every switch
        (snap({"b": (80.0,)}, backoff_until=101.5), WaitUntil(101.5)),
        # nothing awake: the best index, at once
        (snap({"b": (99.0,)}, active=None), SwitchTo("b")),
        (snap({"b": (99.0,)}, active=None, backoff_until=103.0), WaitUntil(103.0)),
        # gated closing: a commit while a drains goes on to the switch's target ...
        (snap({"b": (99.9,)}, state="draining", awake_since=99.0, running=TO_B), SwitchTo("b")),
        # ... even when a's own arrivals queue meanwhile ...
        (snap({"a": (99.0,), "b": (99.9,)}, state="draining", running=TO_B), SwitchTo("b")),
        # ... and is abandoned only when nobody waits for another model
        (snap({"a": (99.0,)}, state="draining", running=TO_B), Stay()),
        # ... or goes to another whose bound is due first (c: 40 + 60 - 10 <= 100)
        (snap({"b": (99.9,), "c": (40.0,)}, state="draining", running=TO_B), SwitchTo("c")),
        # once a sleeps, never back to a while b waits, however long a's queue is ...
        (snap({"a": (90.0,) * 50, "b": (99.9,)}, active=None, running=TO_B), SwitchTo("b")),
        # ... but its own waiters bring it back when nobody else waits
        (snap({"a": (90.0,)}, active=None, running=TO_B), SwitchTo("a")),
    ],
)
def test_cost_aware_decisions(snapshot, expected):
    assert policy().decide(snapshot) == expected


@pytest.mark.parametrize(
    "queues, settings, expected",
    [
        # index: aged work per second of switch + clearing. b: 1 x (1 + 30/10) / (10 + 1)
        # = 0.36; c: 10 x (1 + 20/10) / (10 + 10) = 1.5
        ({"b": (70.0,), "c": (80.0,) * 10}, {}, "c"),
        # a model's weight multiplies its work: b x 10 = 3.6
        ({"b": (70.0,), "c": (80.0,) * 10}, {"weights": {"b": 10}}, "b"),
        # concurrency shortens the clearing: c clears 10 in 1 s, 30 / 11 = 2.7 > b's 2
        ({"b": (70.0,) * 10, "c": (80.0,) * 10}, {"concurrency": {"c": 10}}, "c"),
        # a request's priority weight (u=0 -> 4) counts like more requests
        ({"b": ((75.0, urgency_weight(0)),), "c": (80.0, 80.0)}, {}, "b"),
        ({"b": ((75.0, urgency_weight(7)),), "c": (80.0, 80.0)}, {}, "c"),
        # aging: a u=5 request (weight 0.4) that waited 40 s beats a fresh u=3 one ...
        ({"b": ((60.0, urgency_weight(5)),), "c": (99.9,)}, {}, "b"),
        # ... but not when it waited 10 s
        ({"b": ((90.0, urgency_weight(5)),), "c": (99.9,)}, {}, "c"),
        # the bound ignores priority: an overdue u=7 request goes before a fresh u=0 one
        ({"b": ((41.0, urgency_weight(7)),), "c": ((85.0, urgency_weight(0)),)}, {}, "b"),
        # earliest deadline first among overdue models, whatever the index says
        ({"b": (49.0,), "c": (50.0,) * 20}, {}, "b"),
    ],
)
def test_the_next_model(queues, settings, expected):
    assert policy(**settings).decide(snap(queues)) == SwitchTo(expected)


def test_the_bound_in_force_is_raised_to_twice_the_round_trip_never_by_load():
    p = policy()
    assert p.bound(snap({"b": (99.0,)}), "b") == 60.0
    slow = {("a", "b"): 40.0, ("b", "a"): 25.0}
    assert p.bound(snap(costs=slow), "b") == 130.0  # 2 x (40 + 25)
    # load does not move it: a thousand waiters, the same bound
    assert p.bound(snap({"b": (99.0,) * 1000}, costs=slow), "b") == 130.0
    # a cold start: twice the cold start's cost
    assert p.bound(snap(active=None, costs={("idle", "b"): 45.0}), "b") == 90.0
    # nothing measured: the seed (wake_estimate_secs) stands in
    seeded = CostAwarePolicy(max_wait_secs=10, wake_estimates={"b": 20.0, "a": 5.0})
    assert seeded.bound(snap(costs={}), "b") == 50.0  # 2 x (20 + 5)


def test_quantum_is_the_factor_times_the_switch_that_woke_it():
    s = snap({"b": (90.0,)}, awake_since=95.0, costs={("b", "a"): 4.0, ("a", "b"): 4.0})
    # quantum 3 x 4 = 12 s from 95; b is stale at 90 + 4 = 94 (one switch)
    assert policy(quantum_factor=3).decide(s) == WaitUntil(107.0)
    assert policy(quantum_factor=2).decide(s) == WaitUntil(103.0)
    assert policy(quantum_factor=1).decide(s) == SwitchTo("b")


def test_aborts_a_wake_only_when_nobody_waits_for_it_and_someone_else_does():
    p = policy()
    assert p.aborts_wake(snap({"c": (99.0,)}), "b")
    assert not p.aborts_wake(snap({"b": (99.0,), "c": (99.0,)}), "b")
    assert not p.aborts_wake(snap(), "b")  # nobody else waits: it may as well wake


def test_estimate_waits_out_the_quantum_or_the_bound():
    p = policy()
    # a woke at 95, quantum to 105; a request for b arriving now is stale at 110
    assert p.estimate(snap(awake_since=95.0), "b") == pytest.approx(10.0 + 10.0)
    # idle a: just the switch
    assert p.estimate(snap(in_flight=0), "b") == pytest.approx(10.0)
    # the awake model itself: now
    assert p.estimate(snap(), "a") == 0.0


@pytest.mark.parametrize("u, weight", [(0, 4.0), (3, 1.0), (6, 0.25)])
def test_urgency_weights(u, weight):
    assert urgency_weight(u) == pytest.approx(weight)


def test_urgency_outside_rfc_9218_is_refused():
    with pytest.raises(ValueError):
        urgency_weight(8)


@pytest.mark.parametrize(
    "header, urgency",
    [
        (None, 3),
        ("u=0", 0),
        ("u=7, i", 7),
        ("i, u=5", 5),
        ("u=8", 3),  # out of range: the default (RFC 9218 §4)
        ("u=-1", 3),
        ("u=2.5", 3),  # not an integer
        ("u=?1", 3),  # a boolean is not an urgency
        ("u=1, u=6", 6),  # the last of a duplicated key (RFC 8941 §4.2.2)
        ("u=x=", 3),  # not a structured field at all
        ("u=1;foo=bar", 1),  # parameters are ignored
    ],
)
def test_priority_header_urgency(header, urgency):
    from llmux.web.inbound import urgency as urgency_of

    environ = {} if header is None else {"HTTP_PRIORITY": header}
    assert urgency_of(environ) == urgency
