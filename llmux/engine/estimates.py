"""How long until a model could serve: the estimates behind ``Retry-After``,
loading progress and ``estimated_wait_secs``.

Pure functions of what the switcher knows (its lock held by the caller): the
running switch, the failure backoff and the measured switch costs (a mapping
(from, to) -> average seconds, :data:`IDLE` as the from of a cold start; see
:class:`~llmux.engine.policy.SwitchCosts`). All times are monotonic seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

IDLE = "idle"  # the "from" of a cold start

Costs = Mapping[tuple[str, str], float]


@dataclass(frozen=True)
class RunningSwitch:
    """The switch in the switching slot: from ``source`` (None: nothing awake) to
    ``target``, begun at ``started``; ``wake_started`` once its wake hook runs;
    ``aborting`` once the policy asked to stop its wake, ``stop`` the event (a
    :class:`threading.Event`) that ends its wake hook's process group."""

    source: str | None
    target: str
    started: float
    wake_started: float | None = None
    aborting: bool = False  # its wake is being stopped: nobody waits for it any more
    stop: Any = field(default=None, compare=False, repr=False)


def switch_cost(
    costs: Costs, start: str | None, to: str, seeds: Mapping[str, float] | None = None
) -> float | None:
    """The average switch from ``start`` to ``to``, else the mean of the switches
    measured into ``to``, else ``seeds[to]`` (the model's ``wake_estimate_secs``),
    else the mean of all switches; None before any was measured or declared."""
    cost = costs.get((start or IDLE, to))
    if cost is not None:
        return cost
    into = [secs for (_, b), secs in costs.items() if b == to]
    if not into and seeds and to in seeds:
        return seeds[to]
    into = into or list(costs.values())
    return sum(into) / len(into) if into else None


def switch_left(
    running: RunningSwitch,
    now: float,
    costs: Costs,
    fraction: float | None,
    seeds: Mapping[str, float] | None = None,
) -> float | None:
    """Seconds ``running`` still needs: from the fraction its wake hook printed
    (``LLMUX_PROGRESS``; None or 0: none yet) once it printed some, else from the
    switch's average; None when neither is known."""
    if running.wake_started is not None and fraction is not None and fraction > 0:
        spent = now - running.wake_started
        return spent * (1 - fraction) / fraction
    cost = switch_cost(costs, running.source, running.target, seeds)
    return None if cost is None else max(0.0, cost - (now - running.started))


def eta(
    model: str,
    now: float,
    *,
    active: str | None,
    serving: bool,
    running: RunningSwitch | None,
    backoff_until: float,
    costs: Costs,
    fraction: float | None,
    resident_until: float = 0.0,
    seeds: Mapping[str, float] | None = None,
) -> float | None:
    """Seconds until ``model`` could serve a request that arrives now; None: unknown.

    0 when it is the ``active`` model and ``serving`` (awake, not draining); the
    rest of its switch when ``running`` brings it (``fraction``: that switch's
    wake progress); otherwise the rest of the running switch (or of the failure
    backoff, or of the active model's ``resident_until``, its ``min_active_secs``)
    plus a switch from where that leaves to ``model`` (``seeds``: see
    :func:`switch_cost`). Queues of other models that the policy may serve first
    are not counted.
    """
    if serving and active == model:
        return 0.0
    if running is not None and running.target == model:
        return switch_left(running, now, costs, fraction, seeds)
    start, wait = active, max(0.0, backoff_until - now, resident_until - now)
    if running is not None:
        left = switch_left(running, now, costs, fraction, seeds)
        if left is None:
            return None
        start, wait = running.target, max(wait, left)
    cost = switch_cost(costs, start, model, seeds)
    return None if cost is None else wait + cost


def whole_secs(seconds: float | None) -> int:
    """Whole seconds for a ``Retry-After`` (RFC 9110 §10.2.3): rounded up, at least 1."""
    return max(1, math.ceil(seconds)) if seconds is not None else 1


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)
