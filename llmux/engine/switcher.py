"""The switcher: which model is awake, who may use it, and when to move.

Usage::

    switcher = Switcher(["llama", "qwen"], HookRunner(config), SwitchSettings())
    ticket = switcher.acquire("qwen", timeout=30)
    try:
        forward_the_request()
    finally:
        ticket.release()        # when the last byte is sent or the client left

One lock guards all state; conditions built on it let each kind of wait be
woken alone: every queued request has its own (:class:`~llmux.engine.waiters.Waiter`),
a drain has ``_drained``, callers waiting for the switching slot ``_slot_free``,
and the one deadline timer ``_timer``. A request for the awake model is
admitted at once, many in parallel. Any other request waits in its model's
queue; the policy picks the next model (:meth:`_kick`), and the slow work runs
in the *switching slot*, one procedure at a time (:mod:`~llmux.engine.procedures`),
started by :meth:`_take_slot` and no other way.

:class:`Switcher` is put together from halves, one responsibility each, all
under the one lock: this module (requests, queues, admission, the slot, start,
sleep, reconfigure), :mod:`~llmux.engine.procedures` (the slow work),
:mod:`~llmux.engine.timer` (deadlines), :mod:`~llmux.engine.reports`
(estimates, progress, status) and :mod:`~llmux.engine.delivery` (events).

Admitting all waiters and counting them in flight in the same critical section
that marks the model awake is what keeps a later switch from draining a model
before its queued requests even started (the Rust llmux's endless switch loop).
A waiter that times out or whose client leaves only takes itself out of the
queue; it never starts or cancels a switch.

The timer (:meth:`tick`) acts on deadlines: the end of a failure backoff or of
``min_active_secs`` (the policy's ``WaitUntil``) and the idle sleep the policy names.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import (
    ClientGone,
    LlmuxError,
    ModelNotFound,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
    SwitchTimeout,
)
from . import estimates
from . import events as ev
from .delivery import EventDelivery, Section
from .effects import AwaitDrain, Call, Effect, Pause, Procedure, RunHook, Runner, ThreadRunner
from .events import Observer
from .hooks import HookResult
from .policy import (
    ArrivalRates,
    FifoPolicy,
    ServiceTimes,
    Snapshot,
    SwitchCosts,
    SwitchTo,
    WaitUntil,
)
from .procedures import Procedures
from .reports import Reports
from .residency import Budget, MeasuredSizes
from .residents import EVICTIONS_KEPT, Residents
from .states import ASLEEP, AWAKE, DRAINING, FAILED, SLEEPING, WAKING, ModelState, transition
from .timer import Deadlines
from .waiters import Queue, Ticket, Waiter, holds

__all__ = [
    "ASLEEP",
    "AWAKE",
    "DRAINING",
    "FAILED",
    "SLEEPING",
    "WAKING",
    "STATES",
    "Switcher",
    "SwitchSettings",
    "Ticket",
    "Waiter",
]

log = logging.getLogger("llmux.switcher")

STATES = tuple(ModelState)

# How often a waiter with a ``cancelled`` probe polls it.
CLIENT_POLL_SECS = 0.1
# The longest single wait of anything woken by notifications: it only bounds a
# wait nothing would end (gevent raises LoopExit on one that nothing could).
QUEUE_WAIT_SECS = 5.0
MAX_WAIT_SECS = 1.0
# The earliest a policy's WaitUntil is acted on, however early it says.
MIN_WAIT_UNTIL_SECS = 0.05


class Hooks(Protocol):
    def run(self, model: str, kind: str, stop: threading.Event | None = None) -> HookResult:
        """Run ``model``'s ``kind`` hook; once ``stop`` is set, end it (``aborted``)."""

    def ready_timeout(self, model: str) -> float: ...

    # optional: the fraction a running wake hook said it reached (LLMUX_PROGRESS)
    # def progress(self, model: str) -> float | None: ...
    # optional: drop what is kept about a model a reload removed
    # def forget(self, model: str) -> None: ...


@dataclass(frozen=True)
class SwitchSettings:
    """The ``policy`` settings the switcher obeys (seconds; None: no limit)."""

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
class _Model:
    name: str
    state: ModelState = ASLEEP
    in_flight: int = 0
    waiters: Queue = field(default_factory=Queue)  # in arrival order
    awake_since: float | None = None
    last_used: float = 0.0  # when the last request ended, or it woke
    idle_sleep_secs: float | None = None
    removed: bool = False  # by a reload; forgotten once asleep
    came_from: str | None = None  # the lead of what its last wake put to sleep
    holds_asleep: bool = False  # its sleep hook put it to sleep: it holds memory_asleep


class _PerModel(Mapping):
    """Model name -> one attribute of its :class:`_Model`: a live view, no copy."""

    __slots__ = ("_models", "_attr")

    def __init__(self, models: Mapping[str, _Model], attr: str):
        self._models = models
        self._attr = attr

    def __getitem__(self, name: str):
        return getattr(self._models[name], self._attr)

    def __iter__(self):
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)


class Switcher(Procedures, Residents, Deadlines, Reports, EventDelivery):
    """Models' states, queues and in-flight counts, and the switching slot.

    ``clock`` gives monotonic seconds; ``runner`` runs procedures and the timer
    (default: threads, or greenlets under gevent; the engine harness passes its own);
    ``budget`` which models may be awake together (default: one at a time).
    """

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
        runner: Runner | None = None,
        budget: Budget | None = None,
    ):
        self.hooks = hooks
        self.settings = settings or SwitchSettings()
        self.policy = policy or FifoPolicy()
        self.observer = observer or Observer()
        self.costs = costs or SwitchCosts()
        self.service = ServiceTimes()
        self.wake_costs = SwitchCosts()  # the wake phase alone, per model, from "idle"
        # wakes from llmux's own sleep, no out-of-memory retry: what an eviction costs
        self.rewake_costs = SwitchCosts()
        self.arrivals = ArrivalRates()
        self.clock = clock
        self.runner = runner or ThreadRunner(self._perform)
        # Built here, after gevent patched threading, so the lock is cooperative.
        self._lock = threading.Lock()
        self._drained = self.runner.condition(self._lock)
        self._slot_free = self.runner.condition(self._lock)
        self._timer = self.runner.condition(self._lock)
        self._locked = Section(self)
        # events recorded under the lock, delivered in order after it (one deliverer at a time)
        self._outbox: deque[tuple[contextvars.Context, ev.Event]] = deque()
        self._delivering = threading.Lock()
        idle_sleep = idle_sleep or {}
        self._models = {name: _Model(name, idle_sleep_secs=idle_sleep.get(name)) for name in models}
        self.budget = budget or Budget.one_at_a_time(self._models)
        self.measured = MeasuredSizes()  # what wakes were measured to take, with a probe
        self._memory_used: int | None = None  # the probe's last reading (bytes)
        self.evictions: deque[dict] = deque(maxlen=EVICTIONS_KEPT)
        # the models whose backends are up (awake, draining, being put to sleep), in
        # the order they woke; at most one without a budget
        self._up: dict[str, None] = {}
        self._victims: list[str] = []  # what the running switch puts to sleep
        self._switching = False
        self._slot_epoch = 0
        self._running: estimates.RunningSwitch | None = None
        self._closed = False
        self._backoff_until = 0.0
        self._wake_at: float | None = None  # the policy's WaitUntil
        self._timer_due: float | None = None
        self._timer_started = False
        self.last_switch: dict | None = None

    # --- requests ---

    def acquire(
        self,
        model: str,
        *,
        timeout: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        queued: Callable[[Waiter], None] | None = None,
        weight: float = 1.0,
    ) -> Ticket:
        """Wait until ``model`` is awake and count this request in flight on it.

        ``timeout`` (seconds) defaults to ``request_timeout_secs`` (None waits for
        ever); ``cancelled`` is polled every :data:`CLIENT_POLL_SECS` while waiting
        and makes the request leave the queue; ``queued`` is called (lock held; it
        must not block, it may raise to leave) when the request has to wait, with
        its place in the queue for :meth:`progress` and :meth:`cancel`; ``weight``
        is its priority weight for the policy (from its ``Priority`` header).
        Raises ShuttingDown, ModelNotFound, QueueFull (with ``retry_after``),
        QueueTimeout, ClientGone, or the error that failed the switch.
        """
        if timeout is None:
            timeout = self.settings.request_timeout_secs
        ticket = None
        try:
            with self._locked:
                entered = self._enter(model, queued, weight)
                if isinstance(entered, Ticket):
                    ticket = entered
                else:
                    m = self._models[model]
                    deadline = None if timeout is None else entered.since + timeout
                    try:
                        ticket = self._await(m, entered, deadline, timeout, cancelled)
                    except BaseException:
                        self._abandon(m, entered)
                        raise
        except BaseException:
            if ticket is not None:  # delivering events on the way out was interrupted
                ticket.release()
            raise
        return ticket

    def enter(
        self, model: str, *, queued: Callable[[Waiter], None] | None = None, weight: float = 1.0
    ):
        """Admit a request at once (a :class:`Ticket`) or queue it (its :class:`Waiter`),
        without waiting. :meth:`claim` then says whether the waiter got in.

        For callers that wait their own way (the engine harness); raises what
        :meth:`acquire` raises before it waits.
        """
        with self._locked:
            return self._enter(model, queued, weight)

    def claim(self, waiter: Waiter) -> Ticket | None:
        """The ticket of an admitted ``waiter`` (once), None while it waits; raises the
        error that failed it (its switch failed, llmux shut down, its client left)."""
        with self._locked:
            return self._claim(waiter, self.clock())

    def _enter(self, model: str, queued, weight: float = 1.0) -> Ticket | Waiter:
        if self._closed:
            raise ShuttingDown("llmux is shutting down")
        m = self._models.get(model)
        if m is None or m.removed:
            raise ModelNotFound(model)
        now = self.clock()
        self.arrivals.observe(model, now)
        if m.state == AWAKE and not m.waiters and self.policy.admits(self._snapshot(now), model):
            self._add_in_flight(m, 1)
            self._emit(ev.RequestAdmitted(model, 0.0, False))
            return Ticket(self._release, model, 0.0, now)
        limit = self.settings.max_queue_depth
        if limit is not None and len(m.waiters) >= limit:
            raise QueueFull(
                f"the queue for model '{model}' is full ({limit} waiting)",
                retry_after=self._retry_after(model),
            )
        waiter = Waiter(model, now, weight, wakeup=self.runner.condition(self._lock))
        m.waiters.join(waiter)
        self._drained.notify_all()  # a drain re-asks: this waiter may make it unneeded
        self._emit(ev.RequestQueued(model, weight))
        self._emit(ev.QueueDepthChanged(model, len(m.waiters)))
        try:
            if queued is not None:
                queued(waiter)
            self._kick()
            self._check_wake_wanted()  # a wake nobody waits for may now be in the way
        except BaseException:
            self._leave_queue(m, waiter, "cancelled")
            raise
        return waiter

    def _claim(self, waiter: Waiter, now: float) -> Ticket | None:
        if waiter.error is not None:
            raise waiter.error
        if not waiter.granted or waiter.claimed:
            return None
        waiter.claimed = True
        self._emit(ev.RequestAdmitted(waiter.model, now - waiter.since, True))
        return Ticket(self._release, waiter.model, now - waiter.since, now)

    def _await(self, m, waiter, deadline, timeout, cancelled) -> Ticket:
        """Sleep on the waiter's own condition until it is settled or gives up (lock held)."""
        while True:
            now = self.clock()
            ticket = self._claim(waiter, now)
            if ticket is not None:
                return ticket
            if deadline is not None and now >= deadline:
                self._leave_queue(m, waiter, "timeout")
                self._emit(ev.RequestTimeout(m.name, timeout))
                raise QueueTimeout(
                    f"waited {timeout:g}s for model '{m.name}' to become available",
                )
            if cancelled is not None and cancelled():
                self._leave_queue(m, waiter, "client_gone")
                raise ClientGone("client disconnected while queued")
            pause = CLIENT_POLL_SECS if cancelled is not None else QUEUE_WAIT_SECS
            if deadline is not None:
                pause = min(pause, deadline - now)
            self._wait(waiter.wakeup, max(pause, 0.001))

    def cancel(self, waiter: Waiter) -> bool:
        """Take a queued request out of its queue: its client left.

        Callable from any thread; the ``acquire`` waiting for it raises
        :class:`~llmux.errors.ClientGone`. False if it was no longer queued
        (admitted, failed, gone already): nothing changes then.
        """
        with self._locked:
            m = self._models.get(waiter.model)
            if m is None or waiter.granted or waiter.error is not None:
                return False
            if not holds(m.waiters, waiter):
                return False
            waiter.settle(error=ClientGone("client disconnected while queued"))
            self._leave_queue(m, waiter, "client_gone")
            return True

    def _leave_queue(self, m: _Model, waiter: Waiter, reason: str) -> None:
        if waiter in m.waiters:
            m.waiters.leave(waiter)
            waited = self.clock() - waiter.since
            self._emit(ev.RequestLeftQueue(m.name, reason, waited), waiter.context)
            self._emit(ev.QueueDepthChanged(m.name, len(m.waiters)), waiter.context)
            self._drained.notify_all()  # a drain for this waiter may serve nobody now
            self._check_wake_wanted()
            self._reschedule()

    def _abandon(self, m: _Model, waiter: Waiter) -> None:
        """The waiting request is gone (cancelled greenlet, error): undo what it holds."""
        if waiter.granted:
            waiter.granted = False
            self._add_in_flight(m, -1)
        else:
            self._leave_queue(m, waiter, "cancelled")

    def _release(self, ticket: Ticket) -> None:
        with self._locked:
            self.service.observe(ticket.model, self.clock() - ticket.admitted_at)
            self._add_in_flight(self._models[ticket.model], -1)

    def _add_in_flight(self, m: _Model, delta: int) -> None:
        m.in_flight += delta
        self._emit(ev.InFlightChanged(m.name, m.in_flight))
        if m.in_flight == 0:
            m.last_used = self.clock()
            self._drained.notify_all()  # a drain may be waiting for exactly this
            self._kick()

    def _admit_all(self, m: _Model) -> None:
        """Admit every waiter of ``m`` if it is awake, in one step (lock held)."""
        if m.state != AWAKE or not m.waiters:
            return
        if not self.policy.admits(self._snapshot(self.clock()), m.name):
            return
        waiters = m.waiters.take_all()
        for waiter in waiters:
            waiter.settle()
        self._emit(ev.QueueDepthChanged(m.name, 0))
        self._add_in_flight(m, len(waiters))

    def _fail_waiters(self, m: _Model, error: LlmuxError, reason: str) -> None:
        waiters = m.waiters.take_all()
        for waiter in waiters:
            waiter.settle(error=error)
            waited = self.clock() - waiter.since
            self._emit(ev.RequestLeftQueue(m.name, reason, waited), waiter.context)
        if waiters:
            self._emit(ev.QueueDepthChanged(m.name, 0))
            self._drained.notify_all()
            self._reschedule()

    # --- deciding ---

    def _snapshot(self, now: float) -> Snapshot:
        """What the policy sees (lock held): live views, valid during the call only."""
        models = self._models
        lead, queues, weights = self._views()
        active = models[lead] if lead else None
        return Snapshot(
            now=now,
            active=lead,
            awake_since=active.awake_since if active else None,
            in_flight=_PerModel(models, "in_flight"),
            queues=queues,
            backoff_until=self._backoff_until,
            min_active_secs=self.settings.min_active_secs,
            costs=self.costs.view(),
            states=_PerModel(models, "state"),
            last_used=_PerModel(models, "last_used"),
            idle_sleep=_PerModel(models, "idle_sleep_secs"),
            service_secs=self.service.view(),
            switching=self._switching,
            running=self._running,
            wake_fraction=self._wake_fraction(),
            queue_weights=weights,
            came_from=active.came_from if active else None,
            arrivals=self.arrivals,
        )

    def _kick(self) -> None:
        """Ask the policy what to do next and start a switch if it says so (lock held)."""
        if self._switching or self._closed:
            return
        for name in self._up:
            self._admit_all(self._models[name])
        for name, room in self._unfit():
            self._fail_unfit(self._models[name], room)
        snap = self._snapshot(self.clock())
        decision = self.policy.decide(snap)
        self._wake_at = None
        if isinstance(decision, WaitUntil):  # never in the past: the timer would spin
            self._wake_at = max(decision.when, snap.now + MIN_WAIT_UNTIL_SECS)
        if isinstance(decision, SwitchTo):
            self._begin_switch(decision.model)
            self._take_slot("switch", self._switch(decision.model), spawn=True)
            snap = None  # its scalars (switching, running) are out of date now
        self._reschedule(snap)

    def _check_wake_wanted(self) -> None:
        """Stop the running wake if its waiters all left and the policy says so (lock held).

        Sets the running switch's ``stop`` event: the hook runner ends the wake
        hook's process group (at once if it has not started); the switch then puts
        the model back to sleep and the policy decides again (``_stop_wake``).
        """
        running = self._running
        if running is None or running.aborting or running.wake_started is None:
            return
        if not self._wake_unwanted(running.target):
            return
        self._running = dataclasses.replace(running, aborting=True)
        if running.stop is not None:
            running.stop.set()

    def _wake_unwanted(self, model: str) -> bool:
        """Whether nobody waits for ``model``, being woken, and the policy would stop it."""
        m = self._models.get(model)
        if m is None or m.state != WAKING or m.waiters:
            return False
        return self.policy.aborts_wake(self._snapshot(self.clock()), model)

    def _set_state(self, m: _Model, state: ModelState) -> None:
        """Move ``m`` to ``state`` (lock held); staying where it is is no transition."""
        if m.state != state:
            m.state = transition(m.state, state)
            self._emit(ev.StateChanged(m.name, state))

    # --- the switching slot ---

    def _take_slot(self, name: str, procedure: Procedure, *, spawn: bool = False) -> Procedure:
        """Take the switching slot for ``procedure`` (lock held, slot free).

        The one way to start exclusive work. Returns the procedure wrapped so
        that, however it ends, the slot is freed and models are left in states
        they can leave; with ``spawn`` it is already running in the runner, else
        the caller runs it with ``self.runner.run`` once it let go of the lock.
        """
        assert not self._switching, "the switching slot is taken"
        self._switching = True
        self._slot_epoch += 1
        wrapped = self._in_slot(name, self._slot_epoch, procedure)
        if spawn:
            self.runner.spawn(f"llmux-{name}", wrapped)
        return wrapped

    def _in_slot(self, name: str, epoch: int, procedure: Procedure) -> Procedure:
        try:
            return (yield from procedure)
        except Exception:  # never leave the switcher wedged in "switching"
            log.exception("%s crashed", name, extra={"event": "switch_crashed"})
            with self._locked:
                ours = self._switching and self._slot_epoch == epoch
            if ours:  # else it crashed after freeing the slot, maybe taken again since
                yield from self._recover()
        except GeneratorExit:  # the thread running it is being killed: no more hooks
            log.warning("%s interrupted", name, extra={"event": "switch_crashed"})
            with self._locked:
                if self._switching and self._slot_epoch == epoch:
                    self._recover_states(self._running)
            raise
        finally:
            with self._locked:
                if self._switching and self._slot_epoch == epoch:
                    self._free_slot()

    def _free_slot(self) -> None:
        """The slot's work is over: the policy picks next (lock held)."""
        self._switching = False
        self._running = None
        self._slot_free.notify_all()
        self._kick()

    def _perform(self, effect: Effect) -> Any:
        """Do what a procedure yielded (no lock held), for :class:`ThreadRunner`."""
        if isinstance(effect, RunHook):
            return self.hooks.run(effect.model, effect.kind, stop=effect.stop)
        if isinstance(effect, AwaitDrain):
            with self._locked:
                while (outcome := self._drain_outcome(effect)) is None:
                    left = MAX_WAIT_SECS
                    if effect.deadline is not None:
                        left = min(left, effect.deadline - self.clock())
                    self._wait(self._drained, max(left, 0.001))
                return outcome
        if isinstance(effect, Pause):
            time.sleep(effect.seconds)
            return None
        if isinstance(effect, Call):
            return effect.fn()
        raise TypeError(f"unknown effect {effect!r}")

    # --- starting, re-checking, putting to sleep ---

    def start(self, prepare: Callable[[], Any], preload: str | None = None) -> None:
        """Run ``prepare`` before anything else; it returns the model already awake (or
        a list of them, under a memory budget).

        Used at start-up to take the right to run hooks and to learn, by probing,
        which model a previous llmux left awake. Requests queue meanwhile. Then,
        if no model is awake, ``preload`` is woken as if a request had asked.
        """
        with self._locked:
            self._take_slot("start", self._start_up(prepare, preload), spawn=True)

    def backend_unreachable(self, model: str) -> None:
        """A request could not connect to ``model``'s backend: is the model still alive?

        If its ``alive`` hook fails, the model is taken as asleep, so the next
        request wakes it again instead of failing until someone restarts llmux.
        """
        with self._locked:
            if model not in self._up or self._switching or self._closed:
                return
            self._take_slot("recheck", self._recheck(model), spawn=True)

    def sleep(self, model: str, *, reason: str = "admin", timeout: float = 60.0) -> str:
        """Drain ``model`` if it is awake and run its ``sleep`` hook; return its state after.

        Waits up to ``timeout`` seconds for a running switch to end first (else
        raises SwitchTimeout; ModelNotFound for an unknown model). Requests that
        arrive meanwhile queue, and wake the model again once it is asleep.
        """
        deadline = self.clock() + timeout
        procedure = None
        try:
            with self._locked:
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
                    self._wait(self._slot_free, min(left, MAX_WAIT_SECS))
                if model not in self._up:
                    return m.state
                procedure = self._take_slot("sleep", self._retire(model, reason))
                epoch = self._slot_epoch
        except BaseException:
            if procedure is not None:  # interrupted on the way out, before it ran
                with self._locked:
                    if self._switching and self._slot_epoch == epoch:
                        self._free_slot()
            raise
        return self.runner.run(procedure)

    # --- a reloaded config ---

    def reconfigure(
        self,
        idle_sleep: Mapping[str, float | None],
        settings: SwitchSettings | None = None,
        *,
        policy=None,
        budget: Budget | None = None,
        check: Callable[[dict[str, str]], None] | None = None,
        apply: Callable[[], None] | None = None,
    ) -> list[str]:
        """Take a new model set (name -> idle seconds); return the removed models still awake.

        ``policy``, when given, decides from now on, and ``budget`` bounds the
        models awake from the next wake on (models awake beyond it stay awake
        until a switch puts them to sleep). Added models start asleep.
        A removed model's queued requests get 404;
        an asleep one is forgotten at once, an awake one once it is put to sleep
        (by :meth:`sleep` with ``reason="reload"``, or by the next switch).

        ``check(states)`` (model -> state) may raise to refuse the change, and
        ``apply()`` makes the caller's own part of it; both run under the lock,
        so no model changes state between the check and the change. Both must
        be quick and must not call back into the switcher.
        """
        with self._locked:
            if check is not None:
                check({n: str(m.state) for n, m in self._models.items()})
            if apply is not None:
                apply()
            if settings is not None:
                self.settings = settings
            if policy is not None:
                self.policy = policy
            if budget is not None:
                self._rebudget(budget, idle_sleep)
            for name, secs in idle_sleep.items():
                m = self._models.get(name)
                if m is None:
                    self._models[name] = _Model(name, idle_sleep_secs=secs)
                    self._emit(ev.StateChanged(name, ASLEEP))
                else:
                    m.idle_sleep_secs, m.removed = secs, False
            still_awake = []
            for m in [m for n, m in self._models.items() if n not in idle_sleep]:
                m.removed = True
                self._fail_waiters(m, ModelNotFound(m.name, removed=True), "removed")
                if m.state in (ASLEEP, FAILED) and m.name not in self._up:
                    self._forget(m)
                else:
                    still_awake.append(m.name)
            self._drained.notify_all()
            self._kick()
            self._reschedule()
            return still_awake

    def _rebudget(self, budget: Budget, configured: Mapping) -> None:
        """Take ``budget`` from a reload (lock held). A removed model still up keeps
        its old size until it is put to sleep and forgotten (counted as 0 it would let
        another model wake beside its real memory); a model whose memory settings
        changed, or that is gone, starts its measurements afresh."""
        old = self.budget
        if not budget.single:
            kept = {
                n: old.models[n]
                for n in self._up
                if n not in configured and not old.single and n in old.models
            }
            if kept:
                budget = dataclasses.replace(budget, models={**budget.models, **kept})
        for name in set(old.models) | set(budget.models):
            if old.models.get(name) != budget.models.get(name) or name not in configured:
                self.measured.forget(name)
        self.budget = budget

    # --- waiting for the slot, and shutdown ---

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no switch or sleep runs; True if none does."""
        deadline = self.clock() + timeout
        with self._locked:
            while self._switching:
                left = deadline - self.clock()
                if left <= 0:
                    return False
                self._wait(self._slot_free, min(left, MAX_WAIT_SECS))
        return True

    def close(self) -> None:
        """Refuse new requests and fail every queued one with ``shutting_down``."""
        with self._locked:
            self._closed = True
            for m in self._models.values():
                self._fail_waiters(m, ShuttingDown("llmux is shutting down"), "shutdown")
            self._drained.notify_all()
            self._timer.notify()
