"""Which model to serve next: a pure decision over a snapshot of the switcher.

Usage::

    policy = FifoPolicy()
    decision = policy.decide(snapshot)      # Stay() | SwitchTo("qwen") | WaitUntil(t)

The switcher builds a :class:`Snapshot` under its lock, asks the policy, and
carries the decision out; the policy never touches switcher state, so it can be
tested from tables and swapped without the switcher knowing which one runs.

:class:`SwitchCosts` keeps the exponential moving average of switch durations
per (from, to) pair that smarter policies (and the dashboard) use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

IDLE = "idle"  # the "from" of a cold start


@dataclass(frozen=True)
class Snapshot:
    now: float
    active: str | None  # the awake model, None when none is
    awake_since: float | None
    in_flight: Mapping[str, int]
    # per model, the enqueue times of its waiters, oldest first; models without waiters absent
    queues: Mapping[str, tuple[float, ...]]
    backoff_until: float = 0.0
    min_active_secs: float = 0.0
    costs: Mapping[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stay:
    """Nothing to do now."""


@dataclass(frozen=True)
class SwitchTo:
    model: str


@dataclass(frozen=True)
class WaitUntil:
    """A switch is wanted but may not start before ``when`` (monotonic seconds)."""

    when: float


Decision = Stay | SwitchTo | WaitUntil


class FifoPolicy:
    """Serve the model of the oldest waiter, as soon as backoff and residency allow."""

    name = "fifo"

    def decide(self, snap: Snapshot) -> Decision:
        waiting = {m: q for m, q in snap.queues.items() if q}
        if not waiting:
            return Stay()
        target = min(waiting, key=lambda m: waiting[m][0])
        if target == snap.active:
            return Stay()  # its waiters are admitted directly
        if snap.now < snap.backoff_until:
            return WaitUntil(snap.backoff_until)
        if snap.active is not None and snap.awake_since is not None:
            resident_until = snap.awake_since + snap.min_active_secs
            if snap.now < resident_until:
                return WaitUntil(resident_until)
        return SwitchTo(target)


POLICIES = {FifoPolicy.name: FifoPolicy}


def make_policy(name: str) -> FifoPolicy:
    """The policy ``policy.policy_type`` names; KeyError for an unknown one (the
    config's validator allows only names in :data:`POLICIES`)."""
    return POLICIES[name]()


class SwitchCosts:
    """Per-(from, to) exponential moving average of switch durations, in seconds.

    The first sample is taken as is; later ones move the average by ``alpha``.
    """

    def __init__(self, alpha: float = 0.3):
        self.alpha = alpha
        self._ema: dict[tuple[str, str], float] = {}

    def observe(self, from_model: str | None, to_model: str, seconds: float) -> float:
        key = (from_model or IDLE, to_model)
        old = self._ema.get(key)
        new = seconds if old is None else self.alpha * seconds + (1 - self.alpha) * old
        self._ema[key] = new
        return new

    def get(self, from_model: str | None, to_model: str) -> float | None:
        return self._ema.get((from_model or IDLE, to_model))

    def snapshot(self) -> dict[tuple[str, str], float]:
        return dict(self._ema)
