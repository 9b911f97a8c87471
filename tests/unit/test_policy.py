import pytest

from llmux.engine.policy import FifoPolicy, Snapshot, Stay, SwitchCosts, SwitchTo, WaitUntil


def snap(**kw):
    base = dict(now=100.0, active=None, awake_since=None, in_flight={}, queues={})
    base.update(kw)
    return Snapshot(**base)


@pytest.mark.parametrize(
    "snapshot, expected",
    [
        (snap(), Stay()),
        (snap(active="a", awake_since=0.0), Stay()),
        (snap(queues={"b": (99.0,)}), SwitchTo("b")),
        (snap(active="a", awake_since=0.0, queues={"b": (99.0,)}), SwitchTo("b")),
        # the oldest waiter wins, not the longest queue
        (snap(queues={"b": (98.0, 99.0, 99.5), "c": (97.0,)}), SwitchTo("c")),
        # waiters for the awake model are admitted, no switch
        (snap(active="a", awake_since=0.0, queues={"a": (90.0,), "b": (95.0,)}), Stay()),
        # failure backoff delays every switch
        (snap(queues={"b": (99.0,)}, backoff_until=101.5), WaitUntil(101.5)),
        # min_active_secs keeps a freshly woken model
        (
            snap(active="a", awake_since=99.0, min_active_secs=5, queues={"b": (99.5,)}),
            WaitUntil(104.0),
        ),
        (
            snap(active="a", awake_since=90.0, min_active_secs=5, queues={"b": (99.5,)}),
            SwitchTo("b"),
        ),
        # a cold start is not held by min_active_secs
        (snap(min_active_secs=5, queues={"b": (99.5,)}), SwitchTo("b")),
        # an empty queue entry counts as no waiter
        (snap(queues={"b": ()}), Stay()),
    ],
)
def test_fifo_decisions(snapshot, expected):
    assert FifoPolicy().decide(snapshot) == expected


def test_ema_first_sample_exact_then_alpha_point_three():
    costs = SwitchCosts()
    assert costs.get("a", "b") is None
    assert costs.observe("a", "b", 10.0) == 10.0
    assert costs.observe("a", "b", 20.0) == pytest.approx(0.3 * 20 + 0.7 * 10)
    assert costs.observe("a", "b", 0.0) == pytest.approx(0.7 * 13.0)
    # pairs are independent and directional; a cold start is from "idle"
    assert costs.get("b", "a") is None
    costs.observe(None, "a", 4.0)
    assert costs.snapshot()[("idle", "a")] == 4.0
