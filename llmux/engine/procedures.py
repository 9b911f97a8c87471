"""The slow work of the switching slot: a switch, putting a model to sleep, start-up
and the re-check of a lost backend.

Each is a generator (a :data:`~llmux.engine.effects.Procedure`) that yields what
blocks (hooks, pauses, the drain) and does everything else in short steps under
the switcher's lock. Before every irreversible step a switch *commits*: under the
lock it asks the policy again, on the state as it is now, and goes on, turns
to another model, or gives up and lets the models it was leaving keep serving
(SPEC §5: a request that left never causes a switch).

A switch puts to sleep its *victims*: the model awake, or under a memory budget
the models :func:`~llmux.engine.residency.plan` chose (none when the target fits)::

    drain the victims together -> commit -> for each victim: [commit ->] sleep hook
    (alive check if it fails) -> wait for their memory (with a probe) -> commit
    -> wake hook (once more after one more eviction if out of memory)
    -> alive polling -> admit every waiter of the new model

:class:`Procedures` is the :class:`~llmux.engine.switcher.Switcher`'s half that
holds these; it uses the switcher's state and lock directly and has no state of
its own.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence

from ..errors import LlmuxError, ModelUnavailable, SwitchTimeout
from . import events as ev
from .effects import AwaitDrain, Call, Pause, Procedure, RunHook
from .estimates import RunningSwitch
from .hooks import HookResult
from .policy import SwitchTo, WaitUntil
from .residency import looks_like_oom
from .states import ASLEEP, AWAKE, DRAINING, FAILED, SLEEPING, WAKING

log = logging.getLogger("llmux.switcher")

ALIVE_FIRST_INTERVAL, ALIVE_MAX_INTERVAL = 0.05, 1.0
ABORTED = "stopped: nobody waits for it any more"  # what _wake returns for a stopped wake


class Procedures:
    """Mixed into :class:`~llmux.engine.switcher.Switcher`; see the module docstring."""

    # --- a switch ---

    def _switch(self, target: str, requested: bool = True) -> Procedure:
        """Drain, sleep, wake, each irreversible step committed under the lock first.

        ``requested`` is False for a preload, which no waiter asked for. The
        switching slot is held, and ``_running`` and ``_victims`` (the models to put
        to sleep for ``target`` to fit: the one awake, without a memory budget) are
        set (:meth:`_begin_switch`). The victims drain together, then sleep one by
        one: wakes and sleeps on one GPU never overlap (vllm#55827).
        """
        with self._locked:
            started = self._running.started
            source = self._running.source
            victims = self._victims
            self._emit(ev.SwitchStarted(source, target))
            phases: dict[str, float] = {}
            for name in victims:
                self._set_state(self._models[name], DRAINING)
        if victims:
            t0 = self.clock()
            deadline = self._drain_deadline(t0)
            with self._locked:
                in_flight = sum(self._models[n].in_flight for n in victims)
                self._emit(ev.DrainStarted(source, target, in_flight))
            while True:
                drained = True
                if self.settings.drain_before_switch:
                    for name in list(victims):  # they drain at once: wait for each in turn
                        drained = yield AwaitDrain(name, requested, deadline)
                        if not drained:
                            break
                phases["drain"] = self.clock() - t0
                if not drained:
                    with self._locked:
                        self._emit(ev.DrainFinished(source, target, phases["drain"], False))
                    error = SwitchTimeout(
                        f"model '{name}' did not finish its requests within "
                        f"{self.settings.drain_timeout_secs:g}s; switch to '{target}' abandoned",
                    )
                    self._abandon_switch(victims, target, started, error, "drain timed out")
                    return
                with self._locked:
                    target = self._commit(source, victims, target, started, requested, phases)
                    if target is None or not self._revise_victims(source, target, started, phases):
                        return
                    draining = [n for n in victims if self._models[n].in_flight]
                    if self.settings.drain_before_switch and draining:
                        continue  # it ended early, and a switch is wanted again: drain on
                    for name in victims:
                        self._set_state(self._models[name], SLEEPING)
                break
            with self._locked:
                self._emit(ev.DrainFinished(source, target, phases["drain"], True))
                freed = self._freed_by(victims)
            t0 = self.clock()
            before = yield from self._probe()
            first = True
            while victims:
                if not first and not self._sleep_on(source, victims, target, requested, phases):
                    return
                first = False
                if not (yield from self._put_to_sleep(victims, target, started)):
                    return
            before = yield from self._memory_back(before, freed)
            phases["sleep"] = self.clock() - t0
        else:
            before = yield from self._probe()
        with self._locked:
            target = self._commit(source, (), target, started, requested, phases)
            if target is None:
                return
            room = self._room(target)
            if room.victims or not room.fits:  # it turned to a model that needs more room
                self._abandoned(source, target, started, "it needs other models asleep", phases)
                return
            self._set_state(self._models[target], WAKING)
            t0 = self.clock()
            stop = threading.Event()
            self._running = dataclasses.replace(self._running, wake_started=t0, stop=stop)
            self._check_wake_wanted()  # a preload may have nobody waiting from the start
        failure = yield from self._wake(target, stop)
        retried = False
        if failure not in (None, ABORTED) and looks_like_oom(failure):
            evicted, used = yield from self._retry_after_oom(target)
            if evicted is not None:
                retried = True
                with self._locked:
                    self._emit(ev.WakeRetried(target, evicted, failure))
                before = used
                failure = yield from self._wake(target, stop)
        if failure is None:
            yield from self._measured_wake(target, before)
        phases["wake"] = self.clock() - t0
        if failure is ABORTED:
            yield from self._stop_wake(source, target, started, phases)
            return
        with self._locked:
            m = self._models[target]
            if failure is not None:
                self._set_state(m, FAILED)
                self._backoff_until = self.clock() + self.settings.failure_backoff_secs
                self._running = None  # the estimate is for the next attempt
                error = ModelUnavailable(
                    f"model '{target}' is unavailable: {failure}",
                    retry_after=self._retry_after(target),
                )
                self._fail_waiters(m, error, "failed")
                self._finish_switch(source, target, started, ok=False, error=failure, phases=phases)
                return
            self._set_state(m, AWAKE)
            m.awake_since = m.last_used = self.clock()
            m.came_from = source
            self._up[target] = None
            self.wake_costs.observe(None, target, phases["wake"])
            if m.holds_asleep and not retried:  # not a cold start: what an eviction costs
                self.rewake_costs.observe(None, target, phases["wake"])
            self._admit_all(m)
            self._finish_switch(source, target, started, ok=True, phases=phases)

    def _sleep_on(self, source, victims: list[str], target: str, requested, phases) -> bool:
        """Between two victims' sleep hooks, a commit: whether to go on putting the rest
        to sleep. Not when llmux shuts down or nobody waits for another model any more
        (or the policy prefers one of them): the rest serve again and the switch is
        abandoned (lock taken here)."""
        with self._locked:
            if not self._closed and (not requested or self._wanted(tuple(victims)) is not None):
                return True
            reason = "no request waits for it any more"
            if self._closed:
                reason = "llmux is shutting down"
            self._keep_serving(list(victims))
            self._abandoned(source, target, self._running.started, reason, phases)
            return False

    def _revise_victims(self, source, target: str, started: float, phases: dict) -> bool:
        """After a commit (lock held): the victims ``target`` needs now (a retarget or
        requests that came may change them); those no longer needed serve again, new
        ones drain. False (switch abandoned) if it cannot fit any more."""
        victims = self._victims
        room = self._room(target)
        if not room.fits:
            self._keep_serving(victims)
            self._abandoned(source, target, started, "it does not fit any more", phases)
            return False
        self._keep_serving([n for n in victims if n not in room.victims])
        for name in room.victims:
            if name not in victims:
                self._set_state(self._models[name], DRAINING)
        victims[:] = room.victims
        return True

    def _keep_serving(self, names) -> None:
        """Models a switch no longer puts to sleep are awake again (lock held)."""
        for name in list(names):
            m = self._models[name]
            self._set_state(m, AWAKE)
            self._admit_all(m)
        self._victims[:] = [n for n in self._victims if n not in names]

    def _stop_wake(self, source, target: str, started: float, phases: dict) -> Procedure:
        """The wake was stopped (nobody waits for ``target``): sleep hook, then decide again."""
        with self._locked:
            self._set_state(self._models[target], SLEEPING)
        t0 = self.clock()
        result, still_alive = yield from self._sleep_hook(target)
        phases["sleep"] = self.clock() - t0
        with self._locked:
            m = self._models[target]
            if result.ok or not still_alive:
                self._went_to_sleep(m)
            else:  # up, but nobody counts on it: a failed wake, so it is woken afresh
                self._set_state(m, FAILED)
                self._backoff_until = self.clock() + self.settings.failure_backoff_secs
            self._abandoned(source, target, started, "nobody waits for it any more", phases)

    def _begin_switch(self, target: str) -> None:
        """Take note of a switch about to start (lock held, switching slot taken): the
        models to put to sleep for ``target`` to fit, and the one the policy weighs."""
        self._victims = list(self._room(target).victims)
        self._running = RunningSwitch(self._lead_of(self._victims), target, self.clock())

    def _commit(
        self,
        source: str | None,
        awake: Sequence[str],
        target: str,
        started: float,
        requested: bool,
        phases: dict,
    ) -> str | None:
        """Before an irreversible step: the model to go on with, or None (lock held).

        The policy is asked again, on the state as it is now: a drain can take
        minutes, and waiters leave. If it still wants ``target``, go on; if it
        wants another model, go on towards that one (``switch_retargeted``);
        if it prefers one of ``awake``, the models the switch would put to sleep
        and could still keep (empty once they sleep; for FIFO, when nobody
        waits for another model any more), the switch is abandoned and ``awake``
        keep serving (``switch_abandoned``), and the slot is freed. ``source``
        is the model the switch began from, for the reports.
        """
        reason = None
        if self._closed:
            reason = "llmux is shutting down"
        elif requested:
            wanted = self._wanted(awake)
            if wanted is None:
                reason = "no request waits for it any more"
            elif wanted != target:
                self._emit(ev.SwitchRetargeted(source, target, wanted))
                target = wanted
                # the estimate of the rest: a switch from where we are now
                lead = source if source in awake else self._lead_of(awake)
                self._running = RunningSwitch(lead, wanted, self.clock())
        if reason is None:
            return target
        self._keep_serving(awake)
        self._abandoned(source, target, started, reason, phases)
        return None

    def _wanted(self, awake: Sequence[str]) -> str | None:
        """The model the policy would switch to now, or None if it prefers one of ``awake``.

        Lock held. Backoff and residency were settled when the switch began,
        so they are left out of this second opinion.
        """
        snap = dataclasses.replace(
            self._snapshot(self.clock()), backoff_until=0.0, min_active_secs=0.0
        )
        decision = self.policy.decide(snap)
        if isinstance(decision, SwitchTo) and decision.model not in awake:
            return decision.model
        if isinstance(decision, WaitUntil):  # cannot happen without backoff; go on
            return self._running.target
        return None

    def _drain_deadline(self, start: float) -> float | None:
        """When a drain begun at ``start`` times out (``drain_timeout_secs``); None: never."""
        timeout = self.settings.drain_timeout_secs
        return None if timeout is None else start + timeout

    def _drain_outcome(self, drain: AwaitDrain) -> bool | None:
        """True once ``drain.model`` has nothing in flight, False once past the deadline,
        None while neither (lock held).

        A requested drain also ends early (True, requests still in flight) when
        requests wait for the draining model itself and the policy now prefers
        it (the waiter the switch was for left): they need not wait for its
        longest stream. The caller's commit then abandons the switch, or, if a
        switch is wanted again by then, drains on.
        """
        m = self._models[drain.model]
        if m.in_flight <= 0:
            return True
        if drain.requested:
            # requests waiting for any model the switch puts to sleep may make it unwanted
            victims = tuple(n for n in self._victims if n in self._models) or (m.name,)
            waited = any(self._models[n].waiters for n in victims)
            if self._closed or (waited and self._wanted(victims) is None):
                return True
        if drain.deadline is not None and self.clock() >= drain.deadline:
            return False
        return None

    def _put_to_sleep(self, victims: list[str], target: str, started: float) -> Procedure:
        """Run ``sleep`` on the first of ``victims`` and take it off the list; False
        (switch abandoned, every victim left serving) if it stays alive."""
        m = self._models[victims[0]]
        result, still_alive = yield from self._sleep_hook(m.name)
        if not result.ok:
            with self._locked:
                self._emit(ev.SleepHookFailed(m.name, target, result.describe(), still_alive))
            if still_alive:
                error = ModelUnavailable(
                    f"model '{target}' is unavailable: could not put '{m.name}' to sleep "
                    f"({result.describe()})",
                )
                self._abandon_switch(victims, target, started, error, result.describe())
                return False
        with self._locked:
            victims.remove(m.name)
            if not self.budget.single:
                self._evicted(m.name, target)
            self._went_to_sleep(m)
        return True

    def _abandon_switch(
        self, victims: Sequence[str], target: str, started: float, error: LlmuxError, reason: str
    ) -> None:
        """The models the switch was to put to sleep keep serving; the target's waiters
        get ``error``, with the estimate of a new attempt as its ``retry_after``."""
        with self._locked:
            source = self._running.source if self._running is not None else None
            self._keep_serving(victims)
            self._running = None
            error.retry_after = self._retry_after(target)
            self._fail_waiters(self._models[target], error, "failed")
            self._finish_switch(source, target, started, ok=False, error=reason)

    def _wake(self, target: str, stop=None) -> Procedure:
        """Run ``wake`` (ended once ``stop`` is set) and poll ``alive`` (state already
        ``waking``); why it failed, None, or :data:`ABORTED` when it was stopped (the
        caller puts it to sleep)."""
        result = yield from self._hook(target, "wake", stop)
        if result.aborted or self._still_aborting(target):
            return ABORTED
        if result.ok:
            result = yield from self._wait_alive(target)
            if result.aborted:
                return ABORTED
            if result.ok:
                return None
            failure = (
                f"alive hook never passed within {self.hooks.ready_timeout(target):g}s "
                f"of the wake (last probe: {result.describe()})"
            )
        else:
            failure = result.describe()
        yield from self._hook(target, "sleep")  # clean up whatever half-started
        return failure

    def _wait_alive(self, model: str) -> Procedure:
        """Poll ``alive`` with a growing interval until it passes or ``ready_timeout`` ends.

        Failed probes are expected while a model loads; only the outcome of the
        whole polling is reported, with the time it took.
        """
        start = self.clock()
        deadline = start + self.hooks.ready_timeout(model)
        interval = ALIVE_FIRST_INTERVAL
        while True:
            result = yield RunHook(model, "alive")
            if result.ok or self.clock() >= deadline or self._still_aborting(model):
                break
            with self._locked:
                self._emit(ev.AliveProbeFailed(model, result))
            yield Pause(min(interval, max(deadline - self.clock(), 0)))
            interval = min(interval * 1.5, ALIVE_MAX_INTERVAL)
        # stopped with the wake: the last failed probe is llmux's doing, not the model's
        aborted = not result.ok and self._still_aborting(model)
        result = dataclasses.replace(result, duration=self.clock() - start, aborted=aborted)
        with self._locked:
            self._emit(ev.HookFinished(model, result))
        return result

    def _still_aborting(self, model: str) -> bool:
        """Whether the running switch's wake of ``model`` is to be stopped: it was asked
        (``_check_wake_wanted``) and, asked again now, the policy still wants it
        stopped. A new waiter since withdraws the request: the wake goes on."""
        with self._locked:
            running = self._running
            if running is None or not running.aborting:
                return False
            if self._wake_unwanted(model):
                return True
            self._running = dataclasses.replace(running, aborting=False)
            return False

    def _hook(self, model: str, kind: str, stop=None) -> Procedure:
        """Run one hook and report it; its :class:`HookResult`."""
        result = yield RunHook(model, kind, stop)
        with self._locked:
            self._emit(ev.HookFinished(model, result))
        return result

    def _sleep_hook(self, model: str) -> Procedure:
        """Run ``model``'s sleep hook (its state already ``sleeping``):
        ``(HookResult, still_alive)``, where still_alive asks ``alive`` if it failed."""
        result: HookResult = yield from self._hook(model, "sleep")
        if result.ok:
            return result, False
        alive = yield from self._hook(model, "alive")
        return result, alive.ok

    def _recover(self) -> Procedure:
        """Put every model crashed work was moving into a state it can leave.

        A model draining or being put to sleep may still be up: it is taken as
        awake (a later switch puts it to sleep again before waking another). A
        model being woken gets its sleep hook, best effort, and is ``failed``.
        A crashed switch fails its target's waiters.
        """
        with self._locked:
            running = self._running
            waking = [n for n, m in self._models.items() if m.state == WAKING]
        for name in waking:
            try:
                yield from self._hook(name, "sleep")
            except Exception:
                log.exception("cleanup of %s failed", name, extra={"event": "switch_crashed"})
        with self._locked:
            self._recover_states(running)

    def _recover_states(self, running) -> None:
        """The state half of :meth:`_recover`, with no hook (lock held): what a procedure
        killed mid-way can still do, since it may not yield any more."""
        for m in self._models.values():
            if m.state == DRAINING or (m.state == SLEEPING and m.name in self._up):
                self._set_state(m, AWAKE)
            elif m.state in (WAKING, SLEEPING):
                self._set_state(m, FAILED)
                self._backoff_until = self.clock() + self.settings.failure_backoff_secs
        if running is not None and running.target in self._models:
            error = ModelUnavailable(f"switch to model '{running.target}' failed unexpectedly")
            self._fail_waiters(self._models[running.target], error, "failed")
            self._finish_switch(
                running.source, running.target, running.started, ok=False, error="internal error"
            )

    # --- a model put to sleep with no switch behind it ---

    def _retire(self, model: str, reason: str) -> Procedure:
        """Drain and sleep the active ``model``; its state after.

        An idle sleep is committed under the lock before its sleep hook: if a
        request arrived since the idle time ran out, the model stays awake.
        """
        m = self._models[model]
        started = self.clock()
        error = ""
        abandoned = False
        try:
            with self._locked:
                self._set_state(m, DRAINING)
            drained = True
            if self.settings.drain_before_switch:
                drained = yield AwaitDrain(model, False, self._drain_deadline(started))
            if not drained:
                error = "drain timed out"
            else:
                with self._locked:
                    abandoned = reason == "idle" and bool(m.waiters or m.in_flight)
                    if not abandoned:
                        self._set_state(m, SLEEPING)
                if not abandoned:
                    result, still_alive = yield from self._sleep_hook(model)
                    if still_alive:
                        error = (
                            f"sleep hook failed and the model is still alive: {result.describe()}"
                        )
        except Exception:
            log.exception("putting %s to sleep crashed", model, extra={"event": "sleep_crashed"})
            error = "internal error"
        except GeneratorExit:  # the thread running it is being killed: the hook may have
            error = "interrupted"  # been cut off, so the model counts as still up
            raise
        finally:  # whatever happened, the slot is freed and the model is in a real state
            with self._locked:
                if error or abandoned or m.state == DRAINING:
                    self._set_state(m, AWAKE)
                    self._admit_all(m)
                else:
                    self._went_to_sleep(m)
                took = self.clock() - started
                if abandoned:
                    self._emit(ev.SleepAbandoned(model, reason, "a request arrived"))
                else:
                    self._emit(ev.ModelPutToSleep(model, reason, not error, took, error))
                self._free_slot()
        return m.state

    # --- outside knowledge: start-up and a backend that went away ---

    def _start_up(self, prepare, preload: str | None) -> Procedure:
        """Learn what is awake (``prepare()``: a model, a list of them, or None), then
        preload if nothing is."""
        awake = None
        try:
            awake = yield Call(prepare)
        except Exception:
            log.exception("start-up check failed", extra={"event": "startup_failed"})
        found = [awake] if isinstance(awake, str) else list(awake or [])
        with self._locked:
            for name in found:
                if name in self._models and name not in self._up:
                    m = self._models[name]
                    self._set_state(m, AWAKE)
                    m.awake_since = m.last_used = self.clock()
                    self._up[name] = None
            if found or preload not in self._models or self._closed:
                self._free_slot()
                return
            log.info("preloading %s", preload, extra={"event": "preload", "model": preload})
            self._begin_switch(preload)
        yield from self._switch(preload, requested=False)

    def _recheck(self, model: str) -> Procedure:
        """Ask ``alive`` of the active ``model``; if it fails, take it as asleep."""
        result = None
        try:
            result = yield from self._hook(model, "alive")
        finally:
            with self._locked:
                m = self._models[model]
                if result is not None and not result.ok and model in self._up:
                    log.warning(
                        "backend of %s is gone; it will be woken again on demand",
                        model,
                        extra={"event": "backend_lost", "model": model},
                    )
                    self._went_to_sleep(m, slept=False)
                self._free_slot()

    # --- the state a switch leaves behind (lock held) ---

    def _finish_switch(self, source, target, started, *, ok, error="", phases=None) -> None:
        """Record the outcome and free the slot: the policy picks the next move."""
        seconds = self.clock() - started
        ema = self.costs.observe(source, target, seconds) if ok else None
        self._record_switch(source, target, "success" if ok else "failure", error, seconds, phases)
        self._emit(ev.SwitchFinished(source, target, ok, seconds, error, ema, phases=phases))
        self._free_slot()

    def _abandoned(self, source, target, started, reason: str, phases) -> None:
        """Record a switch given up for ``reason`` and free the slot (lock held)."""
        seconds = self.clock() - started
        self._record_switch(source, target, "abandoned", reason, seconds, phases)
        self._emit(ev.SwitchAbandoned(source, target, reason, seconds))
        self._free_slot()

    def _record_switch(self, source, target, result, error, seconds, phases) -> None:
        """``last_switch`` for the status API; result: success|failure|abandoned."""
        self.last_switch = {
            "from": source,
            "to": target,
            "ok": result == "success",
            "result": result,
            "error": error,
            "duration_secs": seconds,
            "phases": dict(phases or {}),
        }

    def _went_to_sleep(self, m, slept: bool = True) -> None:
        """``m`` is asleep now; a model a reload removed is forgotten here. ``slept``:
        its sleep hook put it to sleep (so it holds its ``memory_asleep``), rather than
        its backend being found gone."""
        self._set_state(m, ASLEEP)
        m.holds_asleep = slept
        self._up.pop(m.name, None)
        if m.awake_since is not None:
            self._emit(ev.ModelDeactivated(m.name, self.clock() - m.awake_since))
        m.awake_since = None
        if m.removed:
            self._forget(m)

    def _forget(self, m) -> None:
        del self._models[m.name]
        budget = self.budget
        if not budget.single and m.name in budget.models:  # a removed model's kept size
            models = {n: spec for n, spec in budget.models.items() if n != m.name}
            self.budget = dataclasses.replace(budget, models=models)
        forget = getattr(self.hooks, "forget", None)
        if forget is not None:
            forget(m.name)
