"""The policy decides every "what next": admission, idle sleep, the estimate, and
what it sees in its snapshot (service times, switch costs, the running switch)."""

from __future__ import annotations

from llmux.engine.policy import FifoPolicy
from tests.support.engine import Harness


class HoldTheDoor(FifoPolicy):
    """Admits nothing while ``closed``; otherwise FIFO."""

    closed = False

    def admits(self, snap, model):
        return not self.closed and super().admits(snap, model)


class NeverIdle(FifoPolicy):
    def idle_due(self, snap):
        return None


class Pessimist(FifoPolicy):
    def estimate(self, snap, model):
        return 42.0


class Seer(FifoPolicy):
    """Notes what each decision saw (a snapshot is valid during the call only)."""

    def __init__(self):
        self.seen = []

    def decide(self, snap):
        self.seen.append(
            {
                "service_secs": dict(snap.service_secs),
                "costs": dict(snap.costs),
                "states": dict(snap.states),
                "awake_since": snap.awake_since,
                "queues": {m: list(q) for m, q in snap.queues.items()},
                "in_flight": dict(snap.in_flight),
            }
        )
        return super().decide(snap)


def test_the_policy_decides_admission_to_the_awake_model():
    policy = HoldTheDoor()
    h = Harness(policy=policy)
    r = h.request("a")
    h.finish("a", "wake")
    assert r.admitted
    policy.closed = True
    held_back = h.request("a")
    assert held_back.queued and h.hooks_pending() == [], "queued, and no switch for it"
    policy.closed = False
    h.release(r)  # the engine asks again when something changes
    assert held_back.admitted


def test_the_policy_decides_idle_sleep():
    h = Harness(idle={"a": 5.0}, policy=NeverIdle())
    r = h.request("a")
    h.finish("a", "wake")
    h.release(r)
    h.advance(3600)
    assert h.state("a") == "awake" and h.hooks_pending() == []


def test_the_policy_gives_the_estimate_behind_retry_after():
    h = Harness(policy=Pessimist(), max_queue_depth=1)
    h.request("a")
    assert h.status()["models"]["b"]["estimated_wait_secs"] == 42.0
    try:
        h.request("a")
    except Exception as exc:  # QueueFull
        assert exc.retry_after == 42
    else:
        raise AssertionError("the queue was full")


def test_the_snapshot_carries_service_times_costs_and_arrivals():
    seer = Seer()
    h = Harness(policy=seer)
    r = h.request("a")
    h.advance(4.0)
    h.finish("a", "wake")
    h.advance(3.0)
    h.release(r)  # held its ticket 3 s
    waiting = h.request("b")
    # the decision that started the switch
    seen = [s for s in seer.seen if s["states"]["a"] == "awake"][-1]
    assert seen["service_secs"]["a"] == 3.0
    assert seen["costs"][("idle", "a")] >= 4.0
    assert seen["awake_since"] is not None
    assert seen["queues"] == {"b": [h.clock.now]}
    assert seen["in_flight"] == {"a": 0, "b": 0, "c": 0}
    h.finish("a", "sleep")
    h.finish("b", "wake")
    assert waiting.admitted
