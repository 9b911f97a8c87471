"""What the engine says about itself: estimates, a queued request's progress, status.

:class:`Reports` is the :class:`~llmux.engine.switcher.Switcher`'s half for it.
Estimates come from the policy (:meth:`~llmux.engine.policy.Policy.estimate`).
"""

from __future__ import annotations

from . import estimates
from .states import ASLEEP, AWAKE, WAKING
from .waiters import Waiter, ahead_of, holds, positions


class Reports:
    """Mixed into :class:`~llmux.engine.switcher.Switcher`; reads its state under its lock."""

    def _eta(self, model: str, now: float, snap=None) -> float | None:
        """The policy's estimate (:meth:`~llmux.engine.policy.Policy.estimate`) of the
        seconds until ``model`` could serve; None for an unknown model or estimate.
        ``snap``: a snapshot taken at ``now`` under the same lock hold, to reuse."""
        if model not in self._models:
            return None
        return self.policy.estimate(self._view_for(snap or self._snapshot(now), model), model)

    def _wake_fraction(self) -> float | None:
        """The fraction the running switch's wake hook printed, if it runs and printed."""
        running = self._running
        progress = getattr(self.hooks, "progress", None)
        if running is None or running.wake_started is None or progress is None:
            return None
        return progress(running.target)

    def _retry_after(self, model: str) -> int:
        """Whole seconds for a ``Retry-After``: the estimate, at least 1."""
        return estimates.whole_secs(self._eta(model, self.clock()))

    def _retry_after_switch(self) -> int:
        """``Retry-After`` for what waits on the running switch itself."""
        running = self._running
        left = None
        if running is not None:
            fraction = self._wake_fraction()
            left = estimates.switch_left(running, self.clock(), self.costs.view(), fraction)
        return estimates.whole_secs(left)

    def progress(self, waiter: Waiter) -> dict:
        """Where a queued request stands, for loading progress.

        ``{"model", "state", "position", "queued", "eta_secs", "hook_progress"}``:
        its place among all ``queued`` requests (None once admitted or gone),
        the model's estimated wait in seconds (None: unknown, see :meth:`_eta`),
        and the fraction the model's wake hook printed (None if none).
        """
        with self._locked:
            m = self._models.get(waiter.model)
            queues = [q.waiters for q in self._models.values()]
            queued = m is not None and holds(m.waiters, waiter)
            return {
                "model": waiter.model,
                "state": str(m.state) if m is not None else str(ASLEEP),
                "position": ahead_of(queues, waiter) + 1 if queued else None,
                "queued": sum(len(q) for q in queues),
                "eta_secs": estimates.rounded(self._eta(waiter.model, self.clock())),
                "hook_progress": self._hook_progress(waiter.model),
            }

    def _hook_progress(self, model: str) -> float | None:
        m = self._models.get(model)
        progress = getattr(self.hooks, "progress", None)
        if m is None or m.state != WAKING or progress is None:
            return None
        return progress(model)

    def status(self) -> dict:
        """Everything the admin API shows about models, queues and switches.

        Per model, besides its state and counters: ``estimated_wait_secs`` (see
        :meth:`_eta`; what ``Retry-After`` says), ``wait_bound_secs`` (the policy's
        starvation bound in force, None without one) and ``queue``, its waiting
        requests as ``{"position", "waited_secs"}`` (position among all models'
        queued requests, by arrival). ``estimated_load``: the load the policy
        estimates (cost_aware; None for FIFO).
        """
        with self._locked:
            now = self.clock()
            places = positions(m.waiters for m in self._models.values())
            snap = self._snapshot(now)  # one for every model's estimate
            load = getattr(self.policy, "load", None)
            return {
                "policy": self.policy.name,
                "estimated_load": None if load is None else round(load(snap), 3),
                "active": next(reversed(self._up), None),  # the model that woke last
                "awake": list(self._up),
                "switching": self._switching,
                "models": {
                    n: {
                        "state": str(m.state),
                        "in_flight": m.in_flight,
                        "queued": len(m.waiters),
                        "oldest_wait_secs": (now - m.waiters[0].since) if m.waiters else 0.0,
                        "idle_secs": (now - m.last_used)
                        if m.state == AWAKE and not m.in_flight
                        else None,
                        "idle_sleep_secs": m.idle_sleep_secs,
                        "estimated_wait_secs": estimates.rounded(self._eta(n, now, snap)),
                        "wait_bound_secs": estimates.rounded(
                            self.policy.bound(self._view_for(snap, n), n)
                        ),
                        "hook_progress": self._hook_progress(n),
                        "queue": [
                            {"position": places[w], "waited_secs": now - w.since} for w in m.waiters
                        ],
                    }
                    for n, m in self._models.items()
                },
                "memory": self._memory_status(),
                "last_switch": self.last_switch,
                "switch_costs": [
                    {"from": a, "to": b, "ema_secs": secs}
                    for (a, b), secs in sorted(self.costs.snapshot().items())
                ],
            }

    def models_state(self) -> dict[str, dict]:
        """Per model, what a router polls: ``state``, ``in_flight``, ``queued``,
        ``oldest_wait_secs`` (the longest a queued request has waited, 0 with none) and
        ``estimated_wait_secs`` (the policy's seconds until it could serve a request
        arriving now: 0 when awake, the rest of its wake, else drain plus switch; None
        when nothing is known); under a memory budget also ``memory``: ``{"declared",
        "measured"}`` bytes (measured None until a probe measured a wake). One lock
        hold, O(models): cheap to poll every second."""
        with self._locked:
            now = self.clock()
            snap = self._snapshot(now)
            states = {
                n: {
                    "state": str(m.state),
                    "in_flight": m.in_flight,
                    "queued": len(m.waiters),
                    "oldest_wait_secs": round(now - m.waiters[0].since, 3) if m.waiters else 0.0,
                    "estimated_wait_secs": estimates.rounded(self._eta(n, now, snap)),
                }
                for n, m in self._models.items()
                if not m.removed
            }
            if not self.budget.single:
                for n, entry in states.items():
                    entry["memory"] = {
                        "declared": self.budget.declared(n),
                        "measured": self.measured.get(n),
                    }
            return states

    def memory(self) -> dict | None:
        """The memory budget and what it holds (``status()["memory"]``); None without one."""
        with self._locked:
            return self._memory_status()

    def bounds(self) -> dict[str, float | None]:
        """Model -> the policy's starvation bound in force now (seconds; None: none)."""
        with self._locked:
            snap = self._snapshot(self.clock())
            return {n: self.policy.bound(self._view_for(snap, n), n) for n in self._models}

    def state(self, model: str) -> str:
        with self._locked:
            m = self._models.get(model)
            return str(m.state) if m is not None else str(ASLEEP)
