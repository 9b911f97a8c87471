"""Which models are up, and what the policy sees when several may be.

:class:`Residents` is the :class:`~llmux.engine.switcher.Switcher`'s half for it.
The switcher keeps ``_up``: the models whose backends are up (awake, or being
drained or put to sleep), in the order they woke. Under a memory budget
(:mod:`~llmux.engine.residency`) several may be; without one, at most one.

A policy reasons about one server (one model ``active``, the one a switch would
leave). With several models up, the snapshot it gets is a projection:

- while a switch runs, ``active`` is the model it leaves, if still up;
- else, if some waiting model fits beside the models up (no one need sleep),
  ``active`` is None and the policy sees only those models' queues: waking one
  of them preempts nobody;
- else ``active`` is the *lead* of the models the oldest waiter's model would
  put to sleep: the first of them with work (in flight or queued), else the
  first. Its residency and quantum are what the policy weighs.

Without a budget the projection is exactly the one model up, so the policies
decide as they did when one model was all llmux knew.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..errors import ModelUnavailable
from .policy import Snapshot
from .residency import Room, format_bytes, order_key, plan
from .waiters import QueuesView, QueueWeights


class Residents:
    """Mixed into :class:`~llmux.engine.switcher.Switcher`; reads its state under its lock."""

    def _size(self, model: str) -> int:
        """Bytes ``model`` holds awake: the larger of declared and measured."""
        declared = self.budget.declared(model)
        measured = self._measured.get(model) if self._measured else None
        return declared if measured is None else max(declared, measured)

    def _room(self, target: str) -> Room:
        """What to put to sleep for ``target`` to fit, given the models up now (lock held)."""
        models = self._models
        busy = {n for n in self._up if models[n].in_flight or models[n].waiters}
        last_used = {n: models[n].last_used for n in self._up}
        return plan(
            self.budget,
            target,
            self._up,
            busy=busy,
            size=self._size,
            order=order_key(self.budget.eviction, self.gdsf, last_used),
        )

    def _lead_of(self, victims: Sequence[str]) -> str | None:
        """Of the models a switch would put to sleep, the one the policy weighs: the
        first with work, else the first; None when none."""
        for name in victims:
            m = self._models[name]
            if m.in_flight or m.waiters:
                return name
        return victims[0] if victims else None

    def _policy_view(self) -> tuple[str | None, dict | None]:
        """``(active, queues)`` for the policy's snapshot (see the module docstring):
        ``queues`` the models whose queues it sees, None for all (lock held)."""
        if self._running is not None:
            source = self._running.source
            return (source if source in self._up else None), None
        if self.budget.single:
            return next(iter(self._up), None), None
        waiting = [m for m in self._models.values() if m.waiters and m.name not in self._up]
        if not waiting:
            return next(reversed(self._up), None) if self._up else None, None
        fitting = {}
        oldest = min(waiting, key=lambda m: m.waiters[0].since)
        for m in waiting:
            room = self._room(m.name)
            if room.fits and not room.victims:
                fitting[m.name] = m
        if fitting:
            return None, fitting
        return self._lead_of(self._room(oldest.name).victims), None

    def _view_for(self, snap: Snapshot, model: str) -> Snapshot:
        """``snap`` as the policy should see it when asked about ``model`` alone (its
        estimate, its bound): ``active`` the model its wake would leave (lock held)."""
        if self.budget.single or self._running is not None:
            return snap
        if model in self._up:
            lead = model
        elif model in self._models:
            lead = self._lead_of(self._room(model).victims)
        else:
            return snap
        if lead == snap.active:
            return snap
        m = self._models.get(lead) if lead is not None else None
        return dataclasses.replace(
            snap,
            active=lead,
            awake_since=m.awake_since if m else None,
            came_from=m.came_from if m else None,
        )

    def _views(self) -> tuple[str | None, QueuesView, QueueWeights]:
        """The projected ``active`` and queue views for :meth:`_snapshot` (lock held)."""
        active, queues = self._policy_view()
        source = self._models if queues is None else queues
        return active, QueuesView(source), QueueWeights(source)

    def _unfit(self) -> list[tuple[str, Room]]:
        """Waiting models that cannot fit even with every unpinned model asleep (a
        measured size grew past the budget), with their rooms (lock held)."""
        if self.budget.single:
            return []
        out = []
        for m in self._models.values():
            if m.waiters and m.name not in self._up:
                room = self._room(m.name)
                if not room.fits:
                    out.append((m.name, room))
        return out

    def _fail_unfit(self, m, room: Room) -> None:
        """Fail the waiters of ``m``, which cannot fit now (lock held)."""
        error = ModelUnavailable(
            f"model '{m.name}' does not fit in the memory budget: "
            f"{format_bytes(room.short)} short with every unpinned model asleep"
        )
        self._fail_waiters(m, error, "failed")

    def _wake_cost(self, model: str) -> float:
        """Seconds to wake ``model`` again, for its eviction score: its measured wakes,
        else its ``wake_estimate_secs``, else 1."""
        cost = self.wake_costs.get(None, model)
        if cost is None:
            cost = getattr(self.policy, "wake_estimates", {}).get(model)
        return 1.0 if cost is None else cost

    def _hit(self, name: str, count: int) -> None:
        """``count`` requests for the awake ``name`` were admitted: its score grows."""
        if not self.budget.single:
            self.gdsf.hit(name, self._wake_cost(name), self._size(name), count)
