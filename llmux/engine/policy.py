"""Every "what next" choice of the engine, as pure functions of a snapshot.

Usage::

    policy = FifoPolicy()               # or policies.make_policy(config.policy, models)
    policy.decide(snap)                 # Stay() | SwitchTo("qwen") | WaitUntil(t)
    policy.admits(snap, "qwen")         # may requests for the awake "qwen" go in now?
    policy.idle_due(snap)               # ("qwen", when) its idle sleep falls due, or None
    policy.estimate(snap, "qwen")       # seconds until "qwen" could serve a new request
    policy.keep_at_start(["a", "b"])    # which of the models found alive to keep
    policy.aborts_wake(snap, "qwen")    # stop its wake: nobody waits for it any more
    policy.bound(snap, "qwen")          # the longest a request of "qwen" may wait, or None

The switcher builds a :class:`Snapshot` under its lock, asks the policy, and
carries the answer out; a policy never touches switcher state, so it can be
tested from tables and swapped (:func:`~llmux.engine.policies.make_policy`) without the switcher
knowing which one runs. What is mechanism, not choice, stays in the switcher:
one switch at a time, a model's requests admitted in arrival order, the commit
points of a switch (which call :meth:`Policy.decide` again).

:class:`SwitchCosts` keeps the exponential moving average of switch durations
per (from, to) pair; :class:`ServiceTimes` that of request service times per model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from . import estimates
from .estimates import IDLE, RunningSwitch
from .states import AWAKE

__all__ = ["IDLE", "FifoPolicy", "Policy", "Snapshot", "ServiceTimes", "SwitchCosts"]


@dataclass(frozen=True)
class Snapshot:
    """What the switcher knows, at ``now`` (monotonic seconds).

    The mappings are keyed by model name. ``queues`` gives, per model with
    waiters, their arrival times, oldest first (a view: valid during the call
    only). ``costs`` are switch-cost averages per (from, to) pair, "idle" as the
    from of a cold start; ``service_secs`` the average time a request of the
    model held its ticket; ``running`` the switch in the slot, with
    ``wake_fraction`` its wake hook's printed progress. ``queue_weights`` gives,
    per model with waiters, ``(count, sum of priority weights, sum of weight x
    arrival)``, so aged work is O(1) per queue; ``came_from`` is the model the
    active one was switched from (``"idle"`` after a cold start); ``arrivals``
    each model's recent request rate.
    """

    now: float
    active: str | None  # the model awake or being drained, None when none is
    awake_since: float | None
    in_flight: Mapping[str, int]
    queues: Mapping[str, Sequence[float]]
    backoff_until: float = 0.0
    min_active_secs: float = 0.0
    costs: Mapping[tuple[str, str], float] = field(default_factory=dict)
    states: Mapping[str, str] = field(default_factory=dict)
    last_used: Mapping[str, float] = field(default_factory=dict)
    idle_sleep: Mapping[str, float | None] = field(default_factory=dict)
    service_secs: Mapping[str, float] = field(default_factory=dict)
    switching: bool = False
    running: RunningSwitch | None = None
    wake_fraction: float | None = None
    queue_weights: Mapping[str, tuple[int, float, float]] = field(default_factory=dict)
    came_from: str | None = None
    arrivals: ArrivalRates | None = None


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


class Policy(Protocol):
    """What a policy answers; every method is pure and quick (the lock is held)."""

    name: str

    def decide(self, snap: Snapshot) -> Decision:
        """Which model to switch to, and when."""

    def admits(self, snap: Snapshot, model: str) -> bool:
        """Whether requests for ``model``, awake, are admitted now (else they queue)."""

    def idle_due(self, snap: Snapshot) -> tuple[str, float] | None:
        """The model to put to sleep for being idle and when (monotonic seconds), or None."""

    def estimate(self, snap: Snapshot, model: str) -> float | None:
        """Seconds until ``model`` could serve a request arriving now; None: unknown."""

    def keep_at_start(self, alive: Sequence[str]) -> str | None:
        """Of the models found alive at start-up (most preferred first: the one recorded
        awake, half-started ones, the preload, config order), the one to keep."""

    def aborts_wake(self, snap: Snapshot, model: str) -> bool:
        """Whether to stop the running wake of ``model``, whose waiters have all left."""

    def bound(self, snap: Snapshot, model: str) -> float | None:
        """The longest a request of ``model`` should wait (seconds), or None: no bound."""


class FifoPolicy:
    """Serve the model of the oldest waiter, as soon as backoff and residency allow.

    Requests for an awake model are always admitted; an awake model sleeps after
    its ``idle_sleep_secs`` with nothing in flight and nobody waiting for any model. A
    wake runs to its end even when its waiters left (SPEC §5). ``wake_estimates``
    (model -> seconds) seed the estimates until a switch into the model was measured.
    """

    name = "fifo"
    wake_estimates: Mapping[str, float] = MappingProxyType({})  # until __init__ sets its own

    def __init__(self, *, wake_estimates: Mapping[str, float] | None = None):
        self.wake_estimates = dict(wake_estimates or {})

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

    def admits(self, snap: Snapshot, model: str) -> bool:
        return snap.states.get(model) == AWAKE

    def idle_due(self, snap: Snapshot) -> tuple[str, float] | None:
        if snap.switching or any(snap.queues.values()):
            return None
        due = None
        for model, state in snap.states.items():  # every awake model (one without a budget)
            idle = snap.idle_sleep.get(model)
            if state != AWAKE or not idle or snap.in_flight.get(model):
                continue
            when = snap.last_used[model] + idle
            if due is None or when < due[1]:
                due = (model, when)
        return due

    def estimate(self, snap: Snapshot, model: str) -> float | None:
        resident_until = 0.0
        if snap.active is not None and snap.active != model and snap.awake_since is not None:
            resident_until = snap.awake_since + snap.min_active_secs  # decide() waits it out
        return self._eta(snap, model, resident_until)

    def _eta(self, snap: Snapshot, model: str, resident_until: float) -> float | None:
        return estimates.eta(
            model,
            snap.now,
            active=snap.active,
            serving=snap.states.get(model) == AWAKE,
            running=snap.running,
            backoff_until=snap.backoff_until,
            costs=snap.costs,
            fraction=snap.wake_fraction,
            resident_until=resident_until,
            seeds=self.wake_estimates,
        )

    def keep_at_start(self, alive: Sequence[str]) -> str | None:
        return alive[0] if alive else None

    def aborts_wake(self, snap: Snapshot, model: str) -> bool:
        return False

    def bound(self, snap: Snapshot, model: str) -> float | None:
        return None


class SwitchCosts:
    """Per-(from, to) exponential moving average of switch durations, in seconds.

    The first sample is taken as is; later ones move the average by ``alpha``.
    """

    def __init__(self, alpha: float = 0.3):
        self.alpha = alpha
        self._ema: dict[tuple[str, str], float] = {}
        self._view = MappingProxyType(self._ema)

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

    def view(self) -> Mapping[tuple[str, str], float]:
        """The averages, read-only and live (no copy), for a :class:`Snapshot`."""
        return self._view


class ServiceTimes:
    """Per-model exponential moving average of how long a request held its ticket
    (admission to release: the backend's service time plus the client's reading),
    in seconds; first sample as is, later ones weighted by ``alpha``."""

    def __init__(self, alpha: float = 0.1):
        self.alpha = alpha
        self._ema: dict[str, float] = {}
        self._view = MappingProxyType(self._ema)

    def observe(self, model: str, seconds: float) -> None:
        old = self._ema.get(model)
        self._ema[model] = seconds if old is None else self.alpha * seconds + (1 - self.alpha) * old

    def view(self) -> Mapping[str, float]:
        """The averages, read-only and live, for a :class:`Snapshot`."""
        return self._view


class ArrivalRates:
    """Per-model request arrival rate (requests per second), exponentially decayed
    with time constant ``tau`` seconds: each arrival adds 1, the sum decays by
    ``exp(-dt/tau)``, and the rate is the sum over ``tau * (1 - exp(-T/tau))``,
    where T is how long arrivals have been counted (at least ``min_span``): a steady
    stream reads its true rate from its first seconds on, not after ``tau``, and a
    model that stops getting requests fades to 0."""

    def __init__(self, tau: float = 60.0, min_span: float = 1.0):
        self.tau = tau
        self.min_span = min_span
        self._since: float | None = None  # the first arrival counted, any model
        self._sums: dict[str, tuple[float, float]] = {}  # model -> (decayed count, at)

    def observe(self, model: str, now: float) -> None:
        if self._since is None:
            self._since = now
        self._sums[model] = (self._count(model, now) + 1.0, now)

    def _count(self, model: str, now: float) -> float:
        count, at = self._sums.get(model, (0.0, now))
        return count * math.exp(-max(now - at, 0.0) / self.tau)

    def rate(self, model: str, now: float) -> float:
        if self._since is None:
            return 0.0
        span = max(now - self._since, self.min_span)
        return self._count(model, now) / (self.tau * -math.expm1(-span / self.tau))
