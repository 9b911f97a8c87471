"""The switcher: which model is awake, who may use it, and moving between models.

Usage::

    switcher = Switcher(["llama", "qwen"], HookRunner(config), config.policy)
    ticket = switcher.acquire("qwen", timeout=30, cancelled=client_gone)
    try:
        forward_the_request()
    finally:
        ticket.release()        # when the last byte is sent or the client left

One lock and its condition variable guard all state. A request for the awake
model is admitted at once, many in parallel. Any other request waits in its
model's queue; the policy picks the next model, and one switch at a time runs
in a thread of its own (a greenlet under gevent), outside the lock:

    drain the old model -> sleep hook (alive check if it fails) -> wake hook
    -> alive polling -> admit every waiter of the new model at once

Admitting all waiters and counting them in flight in the same critical section
that marks the model awake is what keeps a later switch from draining a model
before its queued requests even started (the Rust llmux's endless switch loop).
A waiter that times out or whose client leaves only takes itself out of the
queue; it never starts or cancels a switch.

A model can also be put to sleep with no switch behind it (:meth:`sleep`): by
an operator, after ``idle_sleep_secs`` without requests, or because a reload
removed it. That takes the same ``switching`` slot, so it never overlaps a switch.
"""

from __future__ import annotations

import bisect
import contextvars
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import (
    ClientGone,
    LlmuxError,
    ModelNotFound,
    ModelUnavailable,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
    SwitchTimeout,
)
from .events import Observer
from .hooks import HookResult
from .policy import FifoPolicy, Snapshot, SwitchCosts, SwitchTo, WaitUntil

log = logging.getLogger("llmux.switcher")

ASLEEP, WAKING, AWAKE, DRAINING, SLEEPING, FAILED = (
    "asleep",
    "waking",
    "awake",
    "draining",
    "sleeping",
    "failed",
)
STATES = (ASLEEP, WAKING, AWAKE, DRAINING, SLEEPING, FAILED)

# How often a waiter wakes to re-check its client, and the longest single wait
# (gevent raises LoopExit on a wait that nothing could ever end).
CLIENT_POLL_SECS = 0.1
MAX_WAIT_SECS = 1.0
# A queued request without a probe to poll is woken by notifications (admitted,
# failed, cancelled); this only bounds a wait that nothing would end.
QUEUE_WAIT_SECS = 5.0
ALIVE_FIRST_INTERVAL, ALIVE_MAX_INTERVAL = 0.05, 1.0


class Hooks(Protocol):
    def run(self, model: str, kind: str) -> HookResult: ...

    def ready_timeout(self, model: str) -> float: ...

    # optional: the fraction a running wake hook said it reached (LLMUX_PROGRESS)
    # def progress(self, model: str) -> float | None: ...


@dataclass(frozen=True)
class SwitchSettings:
    request_timeout_secs: float | None = None
    drain_before_switch: bool = True
    drain_timeout_secs: float | None = None
    min_active_secs: float = 0.0
    max_queue_depth: int | None = None
    failure_backoff_secs: float = 2.0

    @classmethod
    def from_policy(cls, policy) -> SwitchSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{n: getattr(policy, n) for n in names})


@dataclass(eq=False)
class Waiter:
    """A queued request: its model and when it arrived (monotonic seconds).

    ``context`` is the requester's :mod:`contextvars` context: what is
    reported about the waiter from another thread (a failed switch, a
    shutdown, a reload) is reported in it, so its log lines carry its request id.
    """

    model: str
    since: float
    granted: bool = False
    error: LlmuxError | None = None
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


@dataclass(eq=False)
class _Model:
    name: str
    state: str = ASLEEP
    in_flight: int = 0
    waiters: list[Waiter] = field(default_factory=list)
    awake_since: float | None = None
    last_used: float = 0.0  # when the last request ended, or it woke
    idle_sleep_secs: float | None = None
    removed: bool = False  # by a reload; forgotten once asleep


class Ticket:
    """The right to use one model until :meth:`release` (idempotent)."""

    __slots__ = ("model", "waited", "_switcher", "_released")

    def __init__(self, switcher: Switcher, model: str, waited: float):
        self.model = model
        self.waited = waited
        self._switcher = switcher
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._switcher._release(self.model)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Switcher:
    def __init__(
        self,
        models: Iterable[str],
        hooks: Hooks,
        settings: SwitchSettings | None = None,
        *,
        policy=None,
        observer: Observer | None = None,
        costs: SwitchCosts | None = None,
        clock: Callable[[], float] = time.monotonic,
        idle_sleep: Mapping[str, float | None] | None = None,
    ):
        self.hooks = hooks
        self.settings = settings or SwitchSettings()
        self.policy = policy or FifoPolicy()
        self.observer = observer or Observer()
        self.costs = costs or SwitchCosts()
        self.clock = clock
        # Built here, after gevent patched threading, so the lock is cooperative.
        self._cond = threading.Condition(threading.Lock())
        idle_sleep = idle_sleep or {}
        self._models = {name: _Model(name, idle_sleep_secs=idle_sleep.get(name)) for name in models}
        self._active: str | None = None
        self._switching = False
        self._closed = False
        self._backoff_until = 0.0
        self._wake_at: float | None = None
        self._target: str | None = None  # where the running switch is going
        self._source: str | None = None  # and where it started from
        self._switch_started: float | None = None
        self._wake_started: float | None = None
        self._idle_watch: threading.Thread | None = None
        self.last_switch: dict | None = None
        self._watch_idle_if_needed()

    # --- requests ---

    def acquire(
        self,
        model: str,
        *,
        timeout: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        queued: Callable[[Waiter], None] | None = None,
    ) -> Ticket:
        """Wait until ``model`` is awake and count this request in flight on it.

        ``timeout`` defaults to ``request_timeout_secs`` (None waits for ever);
        ``cancelled`` is polled while waiting and makes the request leave the queue;
        ``queued`` is called (lock held; it must not block) when the request has
        to wait, with its place in the queue for :meth:`progress`.
        Raises ShuttingDown, ModelNotFound, QueueFull (with ``retry_after``),
        QueueTimeout, ClientGone, or the error that failed the switch.
        """
        if timeout is None:
            timeout = self.settings.request_timeout_secs
        with self._cond:
            if self._closed:
                raise ShuttingDown("llmux is shutting down")
            m = self._models.get(model)
            if m is None or m.removed:
                raise ModelNotFound(model)
            if m.state == AWAKE and not m.waiters:
                self._add_in_flight(m, 1)
                self.observer.request_admitted(model, 0.0, False)
                return Ticket(self, model, 0.0)
            limit = self.settings.max_queue_depth
            if limit is not None and len(m.waiters) >= limit:
                raise QueueFull(
                    f"the queue for model '{model}' is full ({limit} waiting)",
                    retry_after=self._retry_after(model),
                )
            now = self.clock()
            waiter = Waiter(model, now)
            m.waiters.append(waiter)
            self._cond.notify_all()  # a drain re-asks: this waiter may make it unneeded
            self.observer.request_queued(model)
            self.observer.queue_depth_changed(model, len(m.waiters))
            deadline = None if timeout is None else now + timeout
            try:
                if queued is not None:
                    queued(waiter)
                return self._wait(m, waiter, deadline, timeout, cancelled)
            except BaseException:
                self._abandon(m, waiter)
                raise

    def _wait(self, m, waiter, deadline, timeout, cancelled) -> Ticket:
        self._kick()
        while True:
            now = self.clock()
            if waiter.granted:
                self.observer.request_admitted(m.name, now - waiter.since, True)
                return Ticket(self, m.name, now - waiter.since)
            if waiter.error is not None:
                raise waiter.error
            if deadline is not None and now >= deadline:
                self._leave_queue(m, waiter, "timeout")
                self.observer.request_timeout(m.name, timeout)
                raise QueueTimeout(
                    f"waited {timeout:g}s for model '{m.name}' to become available",
                )
            if cancelled is not None and cancelled():
                self._leave_queue(m, waiter, "client_gone")
                raise ClientGone("client disconnected while queued")
            pause = CLIENT_POLL_SECS if cancelled is not None else QUEUE_WAIT_SECS
            if deadline is not None:
                pause = min(pause, deadline - now)
            if self._wake_at is not None:
                pause = min(pause, self._wake_at - now)
            self._cond.wait(max(pause, 0.001))
            if self._wake_at is not None and self.clock() >= self._wake_at:
                self._kick()  # a backoff or residency wait is over

    def _leave_queue(self, m: _Model, waiter: Waiter, reason: str) -> None:
        if waiter in m.waiters:
            m.waiters.remove(waiter)
            self.observer.request_left_queue(m.name, reason, self.clock() - waiter.since)
            self.observer.queue_depth_changed(m.name, len(m.waiters))
            self._cond.notify_all()  # a drain for this waiter may serve nobody now

    def cancel(self, waiter: Waiter) -> bool:
        """Take a queued request out of its queue: its client left.

        Callable from any thread; the ``acquire`` waiting for it raises
        :class:`~llmux.errors.ClientGone`. False if it was no longer queued
        (admitted, failed, gone already): nothing changes then.
        """
        with self._cond:
            m = self._models.get(waiter.model)
            if m is None or waiter.granted or waiter.error is not None:
                return False
            if not _holds(m.waiters, waiter):
                return False
            waiter.error = ClientGone("client disconnected while queued")
            waiter.context.run(self._leave_queue, m, waiter, "client_gone")
            return True

    def _abandon(self, m: _Model, waiter: Waiter) -> None:
        """The waiting request is gone (cancelled greenlet, error): undo what it holds."""
        if waiter.granted:
            waiter.granted = False
            self._add_in_flight(m, -1)
        else:
            self._leave_queue(m, waiter, "cancelled")

    def _release(self, model: str) -> None:
        with self._cond:
            self._add_in_flight(self._models[model], -1)

    def _add_in_flight(self, m: _Model, delta: int) -> None:
        m.in_flight += delta
        self.observer.in_flight_changed(m.name, m.in_flight)
        if m.in_flight == 0:
            m.last_used = self.clock()
            self._cond.notify_all()  # a drain may be waiting for exactly this
            self._kick()

    # --- estimates (lock held) ---

    def _eta(self, model: str, now: float) -> float | None:
        """Seconds until ``model`` could serve a request that arrives now; None: unknown.

        0 when it is awake; the rest of its switch when one is bringing it;
        otherwise the rest of the running switch (or of a failure backoff) plus a
        switch from where that leaves to ``model``. Switch durations are the
        measured averages (:class:`~llmux.engine.policy.SwitchCosts`); queues of other
        models that FIFO may serve first are not counted.
        """
        m = self._models.get(model)
        if m is None:
            return None
        if m.state == AWAKE and self._active == model:
            return 0.0
        if self._target == model:
            return self._switch_left(now)
        start, wait = self._active, max(0.0, self._backoff_until - now)
        if self._target is not None:
            left = self._switch_left(now)
            if left is None:
                return None
            start, wait = self._target, max(wait, left)
        cost = self._cost(start, model)
        return None if cost is None else wait + cost

    def _switch_left(self, now: float) -> float | None:
        """Seconds the running switch still needs: from the wake hook's own progress
        (``LLMUX_PROGRESS``) once it printed some, else from the switch's average."""
        target = self._target
        if self._wake_started is not None:
            progress = getattr(self.hooks, "progress", None)
            fraction = progress(target) if progress is not None else None
            if fraction is not None and fraction > 0:
                spent = now - self._wake_started
                return spent * (1 - fraction) / fraction
        cost = self._cost(self._source, target)
        return None if cost is None else max(0.0, cost - (now - self._switch_started))

    def _cost(self, start: str | None, to: str) -> float | None:
        """The average switch from ``start`` to ``to``, else the mean of the switches
        measured into ``to``, else of all switches; None before any was measured."""
        cost = self.costs.get(start, to)
        if cost is not None:
            return cost
        known = self.costs.snapshot()
        into = [secs for (_, b), secs in known.items() if b == to] or list(known.values())
        return sum(into) / len(into) if into else None

    def _retry_after(self, model: str) -> int:
        """Whole seconds for a ``Retry-After``: the estimate, at least 1."""
        return _whole_secs(self._eta(model, self.clock()))

    def _retry_after_switch(self) -> int:
        """``Retry-After`` for what waits on the running switch itself."""
        left = self._switch_left(self.clock()) if self._target is not None else None
        return _whole_secs(left)

    # --- deciding ---

    def _snapshot(self, now: float) -> Snapshot:
        active = self._models[self._active] if self._active else None
        return Snapshot(
            now=now,
            active=self._active,
            awake_since=active.awake_since if active else None,
            in_flight={n: m.in_flight for n, m in self._models.items()},
            queues={
                n: tuple(w.since for w in m.waiters) for n, m in self._models.items() if m.waiters
            },
            backoff_until=self._backoff_until,
            min_active_secs=self.settings.min_active_secs,
            costs=self.costs.snapshot(),
        )

    def _kick(self) -> None:
        """Ask the policy what to do next and start a switch if it says so (lock held)."""
        if self._switching or self._closed:
            return
        if self._active is not None:
            self._admit_all(self._models[self._active])
        decision = self.policy.decide(self._snapshot(self.clock()))
        self._wake_at = decision.when if isinstance(decision, WaitUntil) else None
        if isinstance(decision, SwitchTo):
            self._switching = True
            self._begin_switch(decision.model)
            threading.Thread(
                target=self._run_switch, args=(decision.model,), name="llmux-switch", daemon=True
            ).start()

    def _admit_all(self, m: _Model) -> None:
        if m.state != AWAKE or not m.waiters:
            return
        waiters, m.waiters = m.waiters, []
        for waiter in waiters:
            waiter.granted = True
        self.observer.queue_depth_changed(m.name, 0)
        self._add_in_flight(m, len(waiters))
        self._cond.notify_all()

    def _fail_waiters(self, m: _Model, error: LlmuxError, reason: str) -> None:
        waiters, m.waiters = m.waiters, []
        for waiter in waiters:
            waiter.error = error
            waited = self.clock() - waiter.since
            waiter.context.run(self.observer.request_left_queue, m.name, reason, waited)
        if waiters:
            self.observer.queue_depth_changed(m.name, 0)
        self._cond.notify_all()

    def _set_state(self, m: _Model, state: str) -> None:
        m.state = state
        self.observer.state_changed(m.name, state)

    # --- switching (runs in its own thread, the lock taken only for short steps) ---

    def _begin_switch(self, target: str) -> None:
        """Take note of a switch about to start (lock held, switching slot taken)."""
        self._target, self._source = target, self._active
        self._switch_started, self._wake_started = self.clock(), None

    def _run_switch(self, target: str, requested: bool = True) -> None:
        try:
            self._switch(target, requested)
        except Exception:  # never leave the switcher wedged in "switching"
            log.exception("switch to %s crashed", self._target, extra={"event": "switch_crashed"})
            self._recover_from_crash()

    def _recover_from_crash(self) -> None:
        """Put every model a crashed switch was moving into a state it can leave.

        A model draining or being put to sleep may still be up: it is taken as
        awake (a later switch puts it to sleep again before waking another). A
        model being woken gets its sleep hook, best effort, and is ``failed``.
        """
        target = self._target
        with self._cond:
            waking = [n for n, m in self._models.items() if m.state == WAKING]
        for name in waking:
            try:
                self._run_hook(name, "sleep")
            except Exception:
                log.exception("cleanup of %s failed", name, extra={"event": "switch_crashed"})
        with self._cond:
            for m in self._models.values():
                if m.state == DRAINING or (m.state == SLEEPING and self._active == m.name):
                    self._set_state(m, AWAKE)
                elif m.state in (WAKING, SLEEPING):
                    self._set_state(m, FAILED)
                    self._backoff_until = self.clock() + self.settings.failure_backoff_secs
            if target in self._models:
                error = ModelUnavailable(f"switch to model '{target}' failed unexpectedly")
                self._fail_waiters(self._models[target], error, "failed")
            self._finish_switch(
                self._active, target, self.clock(), ok=False, error="internal error"
            )

    def _switch(self, target: str, requested: bool = True) -> None:
        """Drain, sleep, wake, each irreversible step committed under the lock first.

        ``requested`` is False for a preload, which no waiter asked for.
        """
        with self._cond:
            started = self._switch_started
            source = self._active
            self.observer.switch_started(source, target)
            phases: dict[str, float] = {}
            if source is not None:
                self._set_state(self._models[source], DRAINING)
        if source is not None:
            t0 = self.clock()
            deadline = self._drain_deadline(t0)
            with self._cond:
                self.observer.drain_started(source, target, self._models[source].in_flight)
            while True:
                drained = self._drain(source, requested, deadline)
                phases["drain"] = self.clock() - t0
                if not drained:
                    self.observer.drain_finished(source, target, phases["drain"], False)
                    self._abandon_switch(
                        source,
                        target,
                        started,
                        SwitchTimeout(
                            f"model '{source}' did not finish its requests within "
                            f"{self.settings.drain_timeout_secs:g}s; switch to '{target}' "
                            "abandoned",
                        ),
                        "drain timed out",
                    )
                    return
                with self._cond:
                    target = self._commit(source, source, target, started, requested, phases)
                    if target is None:
                        return
                    if self.settings.drain_before_switch and self._models[source].in_flight:
                        continue  # it ended early, and a switch is wanted again: drain on
                    self._set_state(self._models[source], SLEEPING)
                break
            self.observer.drain_finished(source, target, phases["drain"], True)
            t0 = self.clock()
            if not self._put_to_sleep(source, target, started):
                return
            phases["sleep"] = self.clock() - t0
        with self._cond:
            target = self._commit(source, None, target, started, requested, phases)
            if target is None:
                return
            self._set_state(self._models[target], WAKING)
            t0 = self._wake_started = self.clock()
        failure = self._wake(target)
        phases["wake"] = self.clock() - t0
        with self._cond:
            m = self._models[target]
            if failure is not None:
                self._set_state(m, FAILED)
                self._backoff_until = self.clock() + self.settings.failure_backoff_secs
                self._target = None  # the estimate is for the next attempt
                error = ModelUnavailable(
                    f"model '{target}' is unavailable: {failure}",
                    retry_after=self._retry_after(target),
                )
                self._fail_waiters(m, error, "failed")
                self._finish_switch(source, target, started, ok=False, error=failure, phases=phases)
                return
            self._set_state(m, AWAKE)
            m.awake_since = m.last_used = self.clock()
            self._active = target
            self._admit_all(m)
            self._finish_switch(source, target, started, ok=True, phases=phases)

    def _commit(
        self,
        source: str | None,
        awake: str | None,
        target: str,
        started: float,
        requested: bool,
        phases: dict,
    ) -> str | None:
        """Before an irreversible step: the model to go on with, or None (lock held).

        The policy is asked again, on the state as it is now: a drain can take
        minutes, and waiters leave. If it still wants ``target``, go on; if it
        wants another model, go on towards that one (``switch_retargeted``);
        if it prefers ``awake`` (None: nothing is awake; for FIFO, when nobody
        waits for another model any more), the switch is abandoned and ``awake``
        keeps serving (``switch_abandoned``). ``source`` is the model the switch
        began from, for the reports. SPEC §5: a request that left never causes
        a switch.
        """
        reason = None
        if self._closed:
            reason = "llmux is shutting down"
        elif requested:
            wanted = self._wanted(awake)
            if wanted is None:
                reason = "no request waits for it any more"
            elif wanted != target:
                self.observer.switch_retargeted(source, target, wanted)
                target = self._target = wanted
                # the estimate of the rest: a switch from where we are now
                self._source, self._switch_started = awake, self.clock()
        if reason is None:
            return target
        if awake is not None:
            m = self._models[awake]
            self._set_state(m, AWAKE)
            self._admit_all(m)
        seconds = self.clock() - started
        self._record_switch(source, target, "abandoned", reason, seconds, phases)
        self.observer.switch_abandoned(source, target, reason, seconds)
        self._free_slot()
        return None

    def _wanted(self, awake: str | None) -> str | None:
        """The model the policy would switch to now, or None if it prefers ``awake``.

        Lock held. Backoff and residency were settled when the switch began,
        so they are left out of this second opinion.
        """
        snap = dataclasses.replace(
            self._snapshot(self.clock()), backoff_until=0.0, min_active_secs=0.0
        )
        decision = self.policy.decide(snap)
        if isinstance(decision, SwitchTo) and decision.model != awake:
            return decision.model
        if isinstance(decision, WaitUntil):  # cannot happen without backoff; go on
            return self._target
        return None

    def _drain_deadline(self, start: float) -> float | None:
        """When a drain begun at ``start`` times out (``drain_timeout_secs``); None: never."""
        timeout = self.settings.drain_timeout_secs
        return None if timeout is None else start + timeout

    def _drain(self, source: str, requested: bool = False, deadline: float | None = None) -> bool:
        """Wait for the in-flight requests of ``source``; False once ``deadline`` passed.

        ``requested``: the drain of a switch some request asked for. Such a
        drain ends early (True, requests still in flight) when requests wait
        for ``source`` itself and the policy now prefers it (the waiter the
        switch was for left): they need not wait for its longest stream. The
        caller's commit then abandons the switch, or, if a switch is wanted
        again by then, drains on.
        """
        if not self.settings.drain_before_switch:
            return True
        m = self._models[source]
        with self._cond:
            while m.in_flight > 0:
                if requested and (self._closed or (m.waiters and self._wanted(source) is None)):
                    return True
                left = MAX_WAIT_SECS if deadline is None else deadline - self.clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, MAX_WAIT_SECS))
        return True

    def _put_to_sleep(self, source: str, target: str, started: float) -> bool:
        """Run ``sleep`` on the old model; False (switch abandoned) if it stays alive."""
        m = self._models[source]
        result, still_alive = self._sleep_hook(m)
        if not result.ok:
            with self._cond:
                self.observer.sleep_hook_failed(source, target, result.describe(), still_alive)
            if still_alive:
                self._abandon_switch(
                    source,
                    target,
                    started,
                    ModelUnavailable(
                        f"model '{target}' is unavailable: could not put '{source}' to sleep "
                        f"({result.describe()})",
                    ),
                    result.describe(),
                )
                return False
        with self._cond:
            self._went_to_sleep(m)
        return True

    def _sleep_hook(self, m: _Model) -> tuple[HookResult, bool]:
        """Run ``m``'s sleep hook (its state already ``sleeping``); if it failed, also
        whether ``alive`` says it still runs."""
        result = self._run_hook(m.name, "sleep")
        return result, not result.ok and self._run_hook(m.name, "alive").ok

    def _went_to_sleep(self, m: _Model) -> None:
        """``m`` is asleep now (lock held); a model a reload removed is forgotten here."""
        self._set_state(m, ASLEEP)
        if self._active == m.name:
            self._active = None
        if m.awake_since is not None:
            self.observer.model_deactivated(m.name, self.clock() - m.awake_since)
        m.awake_since = None
        if m.removed:
            self._forget(m)

    def _forget(self, m: _Model) -> None:
        del self._models[m.name]
        forget = getattr(self.hooks, "forget", None)
        if forget is not None:
            forget(m.name)

    def _abandon_switch(
        self, source: str, target: str, started: float, error: LlmuxError, reason: str
    ) -> None:
        """The old model keeps serving; the target's waiters get ``error``, with the
        estimate of a new attempt as its ``retry_after``."""
        with self._cond:
            m = self._models[source]
            self._set_state(m, AWAKE)
            self._target = None
            error.retry_after = self._retry_after(target)
            self._fail_waiters(self._models[target], error, "failed")
            self._admit_all(m)
            self._finish_switch(source, target, started, ok=False, error=reason)

    def _wake(self, target: str) -> str | None:
        """Run ``wake`` and poll ``alive`` (state already ``waking``); why it failed, or None."""
        result = self._run_hook(target, "wake")
        if result.ok:
            result = self._wait_alive(target)
            if result.ok:
                return None
            failure = (
                f"alive hook never passed within {self.hooks.ready_timeout(target):g}s "
                f"of the wake (last probe: {result.describe()})"
            )
        else:
            failure = result.describe()
        self._run_hook(target, "sleep")  # clean up whatever half-started
        return failure

    def _wait_alive(self, model: str) -> HookResult:
        """Poll ``alive`` with a growing interval until it passes or ``ready_timeout`` ends.

        Failed probes are expected while a model loads; only the outcome of the
        whole polling is reported, with the time it took.
        """
        start = self.clock()
        deadline = start + self.hooks.ready_timeout(model)
        interval = ALIVE_FIRST_INTERVAL
        while True:
            result = self.hooks.run(model, "alive")
            if result.ok or self.clock() >= deadline:
                break
            with self._cond:
                self.observer.alive_probe_failed(model, result)
            time.sleep(min(interval, max(deadline - self.clock(), 0)))
            interval = min(interval * 1.5, ALIVE_MAX_INTERVAL)
        result = dataclasses.replace(result, duration=self.clock() - start)
        with self._cond:
            self.observer.hook_finished(model, result)
        return result

    def _run_hook(self, model: str, kind: str) -> HookResult:
        result = self.hooks.run(model, kind)
        with self._cond:
            self.observer.hook_finished(model, result)
        return result

    def _finish_switch(self, source, target, started, *, ok, error="", phases=None) -> None:
        """Record the outcome and let the policy pick the next move (lock held)."""
        seconds = self.clock() - started
        ema = self.costs.observe(source, target, seconds) if ok else None
        self._record_switch(source, target, "success" if ok else "failure", error, seconds, phases)
        self.observer.switch_finished(source, target, ok, seconds, error, ema, phases=phases)
        self._free_slot()

    def _record_switch(self, source, target, result, error, seconds, phases) -> None:
        """``last_switch`` for the status API (lock held); result: success|failure|abandoned."""
        self.last_switch = {
            "from": source,
            "to": target,
            "ok": result == "success",
            "result": result,
            "error": error,
            "duration_secs": seconds,
            "phases": dict(phases or {}),
        }

    def _free_slot(self) -> None:
        """The switch, sleep, start-up or recheck is over: the policy picks next (lock held)."""
        self._switching = False
        self._target = self._source = self._switch_started = self._wake_started = None
        self._kick()
        self._cond.notify_all()

    # --- outside knowledge: start-up and a backend that went away ---

    def start(self, prepare: Callable[[], str | None], preload: str | None = None) -> None:
        """Run ``prepare`` before anything else; it returns the model already awake.

        Used at start-up to take the right to run hooks and to learn, by probing,
        which model a previous llmux left awake. Requests queue meanwhile. Then,
        if no model is awake, ``preload`` is woken as if a request had asked.
        """
        with self._cond:
            self._switching = True
        threading.Thread(
            target=self._run_start, args=(prepare, preload), name="llmux-start", daemon=True
        ).start()

    def _run_start(self, prepare: Callable[[], str | None], preload: str | None) -> None:
        awake = None
        try:
            awake = prepare()
        except Exception:
            log.exception("start-up check failed", extra={"event": "startup_failed"})
        with self._cond:
            if awake in self._models:
                m = self._models[awake]
                self._set_state(m, AWAKE)
                m.awake_since = m.last_used = self.clock()
                self._active = awake
            if awake is None and preload in self._models and not self._closed:
                log.info("preloading %s", preload, extra={"event": "preload", "model": preload})
                self._begin_switch(preload)
            else:
                preload = None
                self._free_slot()
        if preload is not None:  # still holds the switching slot taken in start()
            self._run_switch(preload, requested=False)

    def backend_unreachable(self, model: str) -> None:
        """A request could not connect to ``model``'s backend: is the model still alive?

        If its ``alive`` hook fails, the model is taken as asleep, so the next
        request wakes it again instead of failing until someone restarts llmux.
        """
        with self._cond:
            if self._active != model or self._switching or self._closed:
                return
            self._switching = True
        threading.Thread(
            target=self._recheck, args=(model,), name="llmux-recheck", daemon=True
        ).start()

    def _recheck(self, model: str) -> None:
        result = None
        try:
            result = self._run_hook(model, "alive")
        finally:
            with self._cond:
                m = self._models[model]
                if result is not None and not result.ok and self._active == model:
                    log.warning(
                        "backend of %s is gone; it will be woken again on demand",
                        model,
                        extra={"event": "backend_lost", "model": model},
                    )
                    self._went_to_sleep(m)
                self._free_slot()

    # --- putting a model to sleep with no switch behind it ---

    def sleep(self, model: str, *, reason: str = "admin", timeout: float = 60.0) -> str:
        """Drain ``model`` if it is awake and run its ``sleep`` hook; return its state after.

        Waits up to ``timeout`` for a running switch to end first. Requests that
        arrive meanwhile queue, and wake the model again once it is asleep.
        """
        deadline = self.clock() + timeout
        with self._cond:
            m = self._models.get(model)
            if m is None or m.removed and reason != "reload":
                raise ModelNotFound(model)
            while self._switching:
                left = deadline - self.clock()
                if left <= 0:
                    raise SwitchTimeout(
                        f"a switch was still running after {timeout:g}s; '{model}' was not "
                        "put to sleep",
                        retry_after=self._retry_after_switch(),
                    )
                self._cond.wait(min(left, MAX_WAIT_SECS))
            if self._active != model:
                return m.state
            self._switching = True
        return self._retire(model, reason)

    def _retire(self, model: str, reason: str) -> str:
        """Drain and sleep the active ``model`` (the switching slot is held).

        An idle sleep is committed under the lock before its sleep hook: if a
        request arrived since the idle time ran out, the model stays awake.
        """
        m = self._models[model]
        started = self.clock()
        error = ""
        abandoned = False
        try:
            with self._cond:
                self._set_state(m, DRAINING)
            if not self._drain(model, deadline=self._drain_deadline(started)):
                error = "drain timed out"
            else:
                with self._cond:
                    abandoned = reason == "idle" and bool(m.waiters or m.in_flight)
                    if not abandoned:
                        self._set_state(m, SLEEPING)
                if not abandoned:
                    result, still_alive = self._sleep_hook(m)
                    if still_alive:
                        error = (
                            f"sleep hook failed and the model is still alive: {result.describe()}"
                        )
        except Exception:
            log.exception("putting %s to sleep crashed", model, extra={"event": "sleep_crashed"})
            error = "internal error"
        finally:  # whatever happened, the slot is freed and the model is in a real state
            with self._cond:
                if error or abandoned or m.state == DRAINING:
                    self._set_state(m, AWAKE)
                    self._admit_all(m)
                else:
                    self._went_to_sleep(m)
                took = self.clock() - started
                if abandoned:
                    self.observer.sleep_abandoned(model, reason, "a request arrived")
                else:
                    self.observer.model_put_to_sleep(model, reason, not error, took, error)
                self._free_slot()
        return m.state

    def _watch_idle_if_needed(self) -> None:
        """Start the idle watcher once some model has an idle time (lock held or unshared)."""
        wanted = any(m.idle_sleep_secs for m in self._models.values())
        if wanted and self._idle_watch is None:
            self._idle_watch = threading.Thread(
                target=self._watch_idle, name="llmux-idle", daemon=True
            )
            self._idle_watch.start()

    def _watch_idle(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                model, pause = self._idle_due(self.clock())
                if model is None:
                    self._cond.wait(pause)
                    continue
                self._switching = True  # taken in the same critical section as the check
            self._retire(model, "idle")

    def _idle_due(self, now: float) -> tuple[str | None, float]:
        """The active model if its idle time is over, else how long to wait (lock held)."""
        m = self._models.get(self._active) if self._active else None
        if m is None or self._switching or not m.idle_sleep_secs:
            return None, MAX_WAIT_SECS
        if m.in_flight or any(other.waiters for other in self._models.values()):
            return None, MAX_WAIT_SECS
        due = m.last_used + m.idle_sleep_secs
        if now >= due:
            return m.name, 0.0
        return None, min(MAX_WAIT_SECS, due - now)

    # --- a reloaded config ---

    def reconfigure(
        self,
        idle_sleep: Mapping[str, float | None],
        settings: SwitchSettings | None = None,
        *,
        policy=None,
        check: Callable[[dict[str, str]], None] | None = None,
        apply: Callable[[], None] | None = None,
    ) -> list[str]:
        """Take a new model set (name -> idle time); return the removed models still awake.

        ``policy``, when given, decides from now on. Added models start asleep.
        A removed model's queued requests get 404;
        an asleep one is forgotten at once, an awake one once it is put to sleep
        (by :meth:`sleep` with ``reason="reload"``, or by the next switch).

        ``check(states)`` (model -> state) may raise to refuse the change, and
        ``apply()`` makes the caller's own part of it; both run under the lock,
        so no model changes state between the check and the change. Both must
        be quick and must not call back into the switcher.
        """
        with self._cond:
            if check is not None:
                check({n: m.state for n, m in self._models.items()})
            if apply is not None:
                apply()
            if settings is not None:
                self.settings = settings
            if policy is not None:
                self.policy = policy
            for name, secs in idle_sleep.items():
                m = self._models.get(name)
                if m is None:
                    self._models[name] = _Model(name, idle_sleep_secs=secs)
                    self.observer.state_changed(name, ASLEEP)
                else:
                    m.idle_sleep_secs, m.removed = secs, False
            still_awake = []
            for m in [m for n, m in self._models.items() if n not in idle_sleep]:
                m.removed = True
                self._fail_waiters(m, ModelNotFound(m.name, removed=True), "removed")
                if m.state in (ASLEEP, FAILED) and self._active != m.name:
                    self._forget(m)
                else:
                    still_awake.append(m.name)
            self._watch_idle_if_needed()
            self._kick()
            self._cond.notify_all()
            return still_awake

    # --- inspection and shutdown ---

    def _positions(self) -> dict[Waiter, int]:
        """Every queued request's 1-based place among all queued ones, by arrival."""
        waiters = sorted((w for m in self._models.values() for w in m.waiters), key=_since)
        return {w: i for i, w in enumerate(waiters, 1)}

    def progress(self, waiter: Waiter) -> dict:
        """Where a queued request stands, for loading progress.

        ``{"model", "state", "position", "queued", "eta_secs", "hook_progress"}``:
        its place among all ``queued`` requests (None once admitted or gone),
        the model's estimated wait in seconds (None: unknown, see :meth:`_eta`),
        and the fraction the model's wake hook printed (None if none).
        """
        with self._cond:
            m = self._models.get(waiter.model)
            queues = [q.waiters for q in self._models.values()]
            # each queue is in arrival order: a binary search per model, no sort
            queued = m is not None and _holds(m.waiters, waiter)
            ahead = sum(bisect.bisect_left(q, waiter.since, key=_since) for q in queues)
            return {
                "model": waiter.model,
                "state": m.state if m is not None else ASLEEP,
                "position": ahead + 1 if queued else None,
                "queued": sum(len(q) for q in queues),
                "eta_secs": _rounded(self._eta(waiter.model, self.clock())),
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
        :meth:`_eta`; what ``Retry-After`` says) and ``queue``, its waiting
        requests as ``{"position", "waited_secs"}`` (position among all models'
        queued requests, by arrival).
        """
        with self._cond:
            now = self.clock()
            positions = self._positions()
            return {
                "active": self._active,
                "switching": self._switching,
                "models": {
                    n: {
                        "state": m.state,
                        "in_flight": m.in_flight,
                        "queued": len(m.waiters),
                        "oldest_wait_secs": (now - m.waiters[0].since) if m.waiters else 0.0,
                        "idle_secs": (now - m.last_used)
                        if m.state == AWAKE and not m.in_flight
                        else None,
                        "idle_sleep_secs": m.idle_sleep_secs,
                        "estimated_wait_secs": _rounded(self._eta(n, now)),
                        "hook_progress": self._hook_progress(n),
                        "queue": [
                            {"position": positions[w], "waited_secs": now - w.since}
                            for w in m.waiters
                        ],
                    }
                    for n, m in self._models.items()
                },
                "last_switch": self.last_switch,
                "switch_costs": [
                    {"from": a, "to": b, "ema_secs": secs}
                    for (a, b), secs in sorted(self.costs.snapshot().items())
                ],
            }

    def state(self, model: str) -> str:
        with self._cond:
            m = self._models.get(model)
            return m.state if m is not None else ASLEEP

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no switch or sleep runs; True if none does."""
        deadline = self.clock() + timeout
        with self._cond:
            while self._switching:
                left = deadline - self.clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, MAX_WAIT_SECS))
        return True

    def close(self) -> None:
        """Refuse new requests and fail every queued one with ``shutting_down``."""
        with self._cond:
            self._closed = True
            for m in self._models.values():
                self._fail_waiters(m, ShuttingDown("llmux is shutting down"), "shutdown")


def _since(waiter: Waiter) -> float:
    return waiter.since


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def _holds(queue: list[Waiter], waiter: Waiter) -> bool:
    """Whether ``waiter`` is in ``queue`` (in arrival order), by binary search."""
    i = bisect.bisect_left(queue, waiter.since, key=_since)
    while i < len(queue) and queue[i].since == waiter.since:
        if queue[i] is waiter:
            return True
        i += 1
    return False


def _whole_secs(seconds: float | None) -> int:
    return max(1, math.ceil(seconds)) if seconds is not None else 1
