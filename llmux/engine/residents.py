"""Which models are up, and what the policy sees when several may be.

:class:`Residents` is the :class:`~llmux.engine.switcher.Switcher`'s half for it.
The switcher keeps ``_up``: the models whose backends are up (awake, or being
drained or put to sleep), in the order they woke. Under a memory budget
(:mod:`~llmux.engine.residency`) several may be; without one, at most one.

A policy reasons about one server (one model ``active``, the one a switch would
leave). With several models up, the snapshot it gets is a projection:

- while a switch that puts models to sleep runs, ``active`` is the lead of the
  models it was to put to sleep when it began (or was last turned), while up;
- else, if some waiting model fits beside the models up (no one need sleep),
  ``active`` is None and the policy sees only those models' queues: waking one
  of them preempts nobody;
- else ``active`` is the *lead* of the models the oldest waiter's model would
  put to sleep: the first of them with work (in flight or queued), else the
  first. Its residency and quantum are what the policy weighs.

Without a budget the projection is exactly the one model up, so the policies
decide as they did when one model was all llmux knew.

With a ``memory.probe`` (``hooks.probe_memory``), a switch also measures
("measure, don't estimate": Ollama's new memory management, PR #11090; LocalAI#6068):
after putting models to sleep it waits, at most :data:`MEMORY_BACK_SECS`, until 80 %
of what they held is free again (Ollama's ``waitForVRAMRecovery``); it reads the
device before and after each wake and keeps what the wake took
(:class:`~llmux.engine.residency.MeasuredSizes`).
A wake that fails as out of memory (:func:`~llmux.engine.residency.looks_like_oom`)
is retried once after one more idle model is put to sleep.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from ..errors import ModelUnavailable
from . import events as ev
from .effects import Call, Pause, Procedure
from .policy import Snapshot
from .residency import OVER_DECLARED, Room, format_bytes, order_key, plan, weight_key
from .states import AWAKE, DRAINING, FAILED, SLEEPING
from .waiters import QueuesView, QueueWeights

log = logging.getLogger("llmux.switcher")

MEMORY_BACK_SECS = 5.0  # the longest wait for a sleep's memory to come back
MEMORY_BACK_SHARE = 0.8  # ... and the share of it that must come back
MEMORY_POLL_SECS = 0.25
EVICTIONS_KEPT = 20  # the latest evictions the status shows


class Residents:
    """Mixed into :class:`~llmux.engine.switcher.Switcher`; reads its state under its lock."""

    def _size(self, model: str) -> int:
        """Bytes ``model`` holds awake: the larger of declared and measured; before its
        first measured wake, its declared size times the largest measured/declared
        ratio of the models measured so far (when above 1): sizes declared alike tend
        to be off alike, and an out-of-memory wake costs more than an early eviction."""
        declared = self.budget.declared(model)
        if self.budget.single:
            return declared
        measured = self.measured.get(model)
        if measured is None:
            return int(declared * self.measured.ratio(self.budget.declared))
        return max(declared, measured)

    def _room(self, target: str, exact: bool = True) -> Room:
        """What to put to sleep for ``target`` to fit, given the models up now (lock held).
        ``exact=False``: the greedy choice only (the same ``fits``, and no victims
        exactly when none are needed; cheaper than trying every set).

        Sizes are :meth:`_size`'s. When by those ``target`` could not fit even with every
        candidate asleep, but by declared sizes it could, it may still be tried with
        every candidate asleep (``fits`` True): a measured size is evidence, not a
        verdict (one taken while another process held memory would otherwise lock a
        model out for good), and a wake that then meets a full GPU is retried once.
        """
        models = self._models
        busy = {n for n in self._up if models[n].in_flight or models[n].waiters}
        rule, now = self.budget.eviction, self.clock()
        last_used = {n: models[n].last_used for n in self._up}
        order = order_key(rule, last_used, self._wake_cost, now)
        weight = weight_key(rule, last_used, self._wake_cost, now) if exact else None
        room = plan(
            self.budget, target, self._up, busy=busy, size=self._size, order=order, weight=weight
        )
        if room.fits or self.budget.single:
            return room
        # only whether it fits by declared sizes: the greedy choice says as much
        declared = plan(self.budget, target, self._up, busy=busy, order=order)
        return Room(room.victims, True) if declared.fits else room

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
        running = self._running
        if self.budget.single:
            if running is not None:
                return (running.source if running.source in self._up else None), None
            return next(iter(self._up), None), None
        if running is not None and running.source in self._up:
            return running.source, None  # a switch that puts models to sleep: as always
        waiting = [m for m in self._models.values() if m.waiters and m.name not in self._up]
        if running is not None:
            # a wake with nothing (left) to put to sleep: its commits see the models that
            # fit now, its own target always among them, as the decision that started it
            # could; seeing others would turn it to a model that does not fit, and
            # dropping its target would abandon it, and both start again, for ever
            target = running.target
            return None, {m.name: m for m in waiting if m.name == target or self._fits_now(m.name)}
        if not waiting:
            return next(reversed(self._up), None) if self._up else None, None
        fitting = {m.name: m for m in waiting if self._fits_now(m.name)}
        if fitting:
            return None, fitting
        oldest = min(waiting, key=lambda m: m.waiters[0].since)
        return self._lead_of(self._room(oldest.name).victims), None

    def _fits_now(self, model: str) -> bool:
        """Whether ``model`` fits beside the models up, none put to sleep (lock held).
        A model whose last wake failed does not count: retried first whenever it fits,
        it could keep an older waiter that needs room from its turn for ever; it takes
        its turn in arrival order like any model that needs room."""
        if self._models[model].state == FAILED:
            return False
        room = self._room(model, exact=False)
        return room.fits and not room.victims

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
        """Waiting models that cannot fit even by declared sizes with every unpinned
        model asleep (a reload shrank the budget under pinned models), with their rooms
        (lock held); a measured size alone never refuses a model (:meth:`_room`)."""
        if self.budget.single:
            return []
        out = []
        for m in self._models.values():
            if m.waiters and m.name not in self._up:
                room = self._room(m.name, exact=False)
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
        """Seconds to wake ``model`` again after putting it to sleep, for its eviction
        score: the average of its wakes from llmux's own sleep (no out-of-memory retry),
        else its ``wake_estimate_secs``, else the average of all its wakes, else 1.

        Why in that order: a first wake may be a cold start (a vLLM server loading its
        weights: minutes, where a wake from sleep mode takes seconds), and a cost that
        large would keep the model awake through every eviction, so that it never
        shows what waking it from sleep really costs."""
        cost = self.rewake_costs.get(None, model)
        if cost is None:
            cost = getattr(self.policy, "wake_estimates", {}).get(model)
        if cost is None:
            cost = self.wake_costs.get(None, model)
        return 1.0 if cost is None else cost

    # --- measuring, with a probe (procedure steps: the lock is not held between them) ---

    def _probe(self) -> Procedure:
        """The device's memory in use (bytes) from the probe; None without one or on failure."""
        probe = getattr(self.hooks, "probe_memory", None)
        with self._locked:
            single = self.budget.single
        if probe is None or single:
            return None
        used = yield Call(probe)
        with self._locked:
            self._memory_used = used  # None after a failure: no stale reading is kept
            if used is not None:
                self._emit(ev.MemoryProbed(used))
        return used

    def _memory_back(self, before: int | None, freed: int) -> Procedure:
        """After sleeps that freed ``freed`` bytes (declared) from ``before``: the device's
        use once :data:`MEMORY_BACK_SHARE` of it is back, or after :data:`MEMORY_BACK_SECS`."""
        used = yield from self._probe()
        if before is None or used is None or freed <= 0:
            return used
        deadline = self.clock() + MEMORY_BACK_SECS
        while before - used < MEMORY_BACK_SHARE * freed:
            if self.clock() >= deadline:
                log.warning(
                    "memory not back %gs after models were put to sleep (%s of %s); waking anyway",
                    MEMORY_BACK_SECS,
                    format_bytes(max(before - used, 0)),
                    format_bytes(freed),
                    extra={"event": "memory_not_back", "freed_bytes": max(before - used, 0)},
                )
                break
            yield Pause(MEMORY_POLL_SECS)
            used = yield from self._probe()
            if used is None:
                return None
        return used

    def _measured_wake(self, model: str, before: int | None) -> Procedure:
        """Read the device after ``model`` woke; keep what the wake took (lock not held)."""
        if before is None:
            return
        after = yield from self._probe()
        if after is None:
            return
        with self._locked:
            # what it held asleep was in use before the wake already; a cold start held none
            held = self.budget.asleep(model) if self._models[model].holds_asleep else 0
            took = max(after - before, 0) + held
            declared = self.budget.declared(model)
            measured = self.measured.observe(model, took)
            self._emit(ev.MemoryMeasured(model, took, declared, measured))

    def _freed_by(self, victims: Sequence[str]) -> int:
        """Bytes putting ``victims`` to sleep should give back: what their wakes were
        measured to take where known (waiting for the larger declared size of a model
        that takes less would wait out the whole bound), else their declared size."""
        held = [self.measured.get(v) or self.budget.declared(v) for v in victims]
        return sum(max(h - self.budget.asleep(v), 0) for h, v in zip(held, victims, strict=True))

    # --- evictions ---

    def _evicted(self, victim: str, target: str, reason: str | None = None) -> None:
        """``victim`` was put to sleep to make room for ``target`` (lock held)."""
        if reason is None:
            reason = "exclusive" if self.budget.exclusive(victim, target) else "room"
        self.evictions.append(
            {"model": victim, "for": target, "reason": reason, "at": self.clock()}
        )
        self._emit(ev.ModelEvicted(victim, target, reason))

    def _retry_after_oom(self, target: str) -> Procedure:
        """Put one more idle, unpinned model to sleep so that a wake of ``target`` that
        failed as out of memory can be tried again: ``(model put to sleep, the device's
        use after it, or None)``, or ``(None, None)`` when there is none, it would not
        go to sleep, or there is no budget (one model awake: nothing else to evict)."""
        with self._locked:
            if self.budget.single:
                return None, None
            idle = [
                n
                for n in self._up
                if n != target
                and self._models[n].state == AWAKE
                and not self._models[n].in_flight
                and not self._models[n].waiters
                and not self.budget.pinned(n)
            ]
            if not idle:
                log.warning(
                    "waking %s ran out of memory and no idle, unpinned model can make room: "
                    "the wake fails (is memory.budget above what the device has free?)",
                    target,
                    extra={"event": "wake_not_retried", "model": target},
                )
                return None, None
            last_used = {n: self._models[n].last_used for n in idle}
            order = order_key(self.budget.eviction, last_used, self._wake_cost, self.clock())
            victim = min(idle, key=order)
            m = self._models[victim]
            self._set_state(m, DRAINING)
            self._set_state(m, SLEEPING)
            before = self._memory_used
        result, still_alive = yield from self._sleep_hook(victim)
        with self._locked:
            if not result.ok and still_alive:
                self._set_state(m, AWAKE)
                self._admit_all(m)
                return None, None
            self._evicted(victim, target, "out_of_memory")
            self._went_to_sleep(m)
            freed = self._freed_by([victim])
        used = yield from self._memory_back(before, freed)
        return victim, used

    def _memory_status(self) -> dict | None:
        """The memory budget as the status shows it (bytes), None without one (lock held):
        ``{"budget", "headroom", "eviction", "used_declared", "used_measured",
        "models": {name: {"declared", "measured", "asleep", "pin", "exclusive_with",
        "over_declared"}}, "evictions": [{"model", "for", "reason", "secs_ago"}]}``."""
        budget = self.budget
        if budget.single:
            return None
        now = self.clock()
        used = sum(self._size(n) for n in self._up)
        used += sum(budget.asleep(n) for n in budget.models if n not in self._up)
        models = {}
        for name in self._models:
            declared, measured = budget.declared(name), self.measured.get(name)
            spec = budget.models.get(name)
            models[name] = {
                "declared": declared,
                "measured": measured,
                "asleep": budget.asleep(name),
                "pin": budget.pinned(name),
                "exclusive_with": sorted(spec.exclusive_with) if spec else [],
                "over_declared": measured is not None and measured > OVER_DECLARED * declared,
            }
        return {
            "budget": budget.budget,
            "headroom": budget.headroom,
            "eviction": budget.eviction,
            "used_declared": used,
            "used_measured": self._memory_used,
            "models": models,
            "evictions": [
                {k: v for k, v in e.items() if k != "at"} | {"secs_ago": round(now - e["at"], 1)}
                for e in reversed(self.evictions)
            ],
        }
