"""A discrete-event simulation of llmux: the real switcher and policy on simulated time.

Usage::

    sim = Simulation(trace, policy, Backends(wake_secs, sleep_secs, concurrency))
    result = sim.simulate()     # Result: waits, switches, serving time, ...

Nothing of the engine is re-implemented here: :class:`Simulation` builds the very
:class:`~llmux.engine.switcher.Switcher` the server runs, with the policy object
the server would build, and is its clock, its runner and its hooks. Procedures
are stepped as in production, but every effect they yield takes simulated time:
a ``wake`` hook ``wake_secs`` of the model, a ``sleep`` hook ``sleep_secs``,
``alive`` no time (it passes once the wake finished), a pause its seconds, a
drain until the model's last request ends. Conditions the engine notifies are
noted and acted on as a thread woken by them would be. So an hour of trace runs
in seconds, deterministically, and what the simulator predicts is what the
engine does, short of the time real hooks and HTTP take (the replay through
the real server, ``benchmarks/replay.py``, measures that).

The backend of each model serves ``concurrency`` requests at once, the rest in
arrival order (vLLM's and llama.cpp's own queues); a request's wait is the time
from its arrival to its admission by llmux, the quantity of
``llmux_request_queue_wait_seconds``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmux.engine.cost_aware import urgency_weight
from llmux.engine.effects import AwaitDrain, Call, Pause, RunHook
from llmux.engine.events import Observer
from llmux.engine.hooks import HookResult
from llmux.engine.switcher import Switcher, SwitchSettings
from llmux.engine.waiters import Ticket
from llmux.errors import LlmuxError

from .traces import Arrival, Trace

FOREVER = 1e12


@dataclass(frozen=True)
class Backends:
    """What the simulated models cost: per model ``wake_secs`` and ``sleep_secs`` of
    their hooks (seconds), and ``concurrency`` (requests served at once, default 1);
    ``patience_secs``: a client leaves the queue after this long (None: never)."""

    wake_secs: Mapping[str, float]
    sleep_secs: Mapping[str, float] = field(default_factory=dict)
    concurrency: Mapping[str, int] = field(default_factory=dict)
    patience_secs: float | None = None


@dataclass
class Request:
    """One arrival of the trace and what became of it (simulated seconds)."""

    arrival: Arrival
    ticket: Ticket | None = None
    waiter: Any = None
    gone: bool = False  # left the queue (patience) or failed
    bound: float | None = None  # the starvation bound in force when it arrived
    admitted_at: float | None = None
    started_at: float | None = None  # its service in the backend
    done_at: float | None = None


@dataclass
class Switch:
    """One switch the engine started, in simulated seconds."""

    started: float
    source: str | None
    target: str
    finished: float | None = None
    result: str = ""  # success | failure | abandoned
    drained: float | None = None  # when its drain ended; from then the GPU serves nobody
    busy_source: bool = False  # the model left still had work when the switch began


@dataclass
class Result:
    """What one run did. Times in simulated seconds."""

    policy: str
    requests: list[Request]
    switches: list[Switch]
    serving_secs: float
    duration: float
    stopped_wakes: int = 0
    wakes: int = 0  # wake hooks run (to their end or stopped)
    wake_secs: float = 0.0  # the seconds those wake hooks took


class _Condition:
    """A condition the engine notifies; the simulation acts on it after the call."""

    __slots__ = ("sim", "owner")

    def __init__(self, sim: Simulation):
        self.sim = sim
        self.owner: Any = None  # the Request it wakes, or "drain" / "timer"

    def notify(self, n: int = 1) -> None:
        self.sim._notified.append(self)

    notify_all = notify

    def wait(self, timeout=None) -> bool:
        raise AssertionError("nothing waits in the simulation")


@dataclass
class _Step:
    procedure: Any
    token: int = 0  # of the effect it waits for; a stale timer event is ignored
    drain: AwaitDrain | None = None
    hook: RunHook | None = None
    wake_ends: float = 0.0  # when the wake hook it runs ends, if not stopped


class Simulation(Observer):
    """One run of ``trace`` through a switcher deciding with ``policy``; ``yardstick``
    (a policy with a ``bound``) gives each request the bound in force at its arrival,
    from the switch costs measured so far, the same for every policy compared."""

    def __init__(
        self,
        trace: Trace,
        policy,
        backends: Backends,
        settings: SwitchSettings | None = None,
        *,
        yardstick=None,
        budget=None,
        name: str | None = None,
    ):
        self.trace = trace
        self.name = name  # of the run; default the policy's
        self.backends = backends
        # a policy whose bound(snap, model) measures every run alike (FIFO has none)
        self.yardstick = yardstick
        self.now = 0.0
        self._heap: list = []
        self._seq = itertools.count()
        self._ready: deque = deque()  # (step, value) to resume at once
        self._notified: list[_Condition] = []
        self._steps: list[_Step] = []
        self._timer_started = False
        self._timer_scheduled: float | None = None  # the due time an event waits for
        self.up: set[str] = set()
        self.requests: list[Request] = []
        self.switches: list[Switch] = []
        self.stopped_wakes = 0
        self.wakes = 0
        self.wake_secs = 0.0
        self._serving: dict[str, deque[Request]] = {m: deque() for m in trace.models}
        self._backlog: dict[str, deque[Request]] = {m: deque() for m in trace.models}
        self._busy = 0
        self._in_flight: dict[str, int] = {}  # as the engine reports it (events)
        self._busy_since = 0.0
        self.serving_secs = 0.0
        self.sw = Switcher(
            trace.models,
            self,
            settings or SwitchSettings(),
            policy=policy,
            observer=self,
            clock=lambda: self.now,
            runner=self,
            budget=budget,
        )
        self.sw._drained.owner = "drain"
        self.sw._timer.owner = "timer"

    # --- the Runner protocol ---

    def spawn(self, name: str, procedure) -> None:
        step = _Step(procedure)
        self._steps.append(step)
        self._ready.append((step, None))

    def run(self, procedure) -> Any:
        raise NotImplementedError("the simulation runs no procedure inline (Switcher.sleep)")

    def background(self, name: str, loop: Callable[[], None]) -> None:
        self._timer_started = True
        self._notified.append(self.sw._timer)

    def condition(self, lock) -> _Condition:
        return _Condition(self)

    # --- the Hooks protocol ---

    def ready_timeout(self, model: str) -> float:
        return FOREVER

    # --- running ---

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action))

    def simulate(self) -> Result:
        """Replay every arrival; return once nothing is left to happen."""
        arrivals = iter(self.trace.arrivals)

        def next_arrival() -> None:
            a = next(arrivals, None)
            if a is not None:
                self.at(a.at, lambda: self._arrive(a, next_arrival))

        next_arrival()
        while self._heap:
            when, _, action = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            action()
            self._pump()
        return Result(
            self.name or getattr(self.sw.policy, "name", "?"),
            self.requests,
            self.switches,
            self.serving_secs,
            self.now,
            self.stopped_wakes,
            self.wakes,
            self.wake_secs,
        )

    def _arrive(self, a: Arrival, then: Callable[[], None]) -> None:
        then()
        r = Request(a)
        self.requests.append(r)
        if self.yardstick is not None:
            with self.sw._locked:
                r.bound = self.yardstick.bound(self.sw._snapshot(self.now), a.model)
        try:
            got = self.sw.enter(a.model, weight=urgency_weight(a.priority))
        except LlmuxError:
            r.gone = True
            return
        if isinstance(got, Ticket):
            self._admitted(r, got)
            return
        r.waiter = got
        got.wakeup.owner = r
        self._notified.append(got.wakeup)  # it may have been admitted on the way in
        if self.backends.patience_secs is not None:
            self.at(self.now + self.backends.patience_secs, lambda: self._give_up(r))

    def _give_up(self, r: Request) -> None:
        if r.ticket is None and not r.gone and self.sw.cancel(r.waiter):
            r.gone = True

    def _admitted(self, r: Request, ticket: Ticket) -> None:
        r.ticket, r.admitted_at = ticket, self.now
        model = r.arrival.model
        if len(self._serving[model]) < self.backends.concurrency.get(model, 1):
            self._start(r)
        else:
            self._backlog[model].append(r)

    def _start(self, r: Request) -> None:
        model = r.arrival.model
        self._serving[model].append(r)
        r.started_at = self.now
        if self._busy == 0:
            self._busy_since = self.now
        self._busy += 1
        self.at(self.now + r.arrival.service_secs, lambda: self._done(r))

    def _done(self, r: Request) -> None:
        model = r.arrival.model
        self._serving[model].remove(r)
        r.done_at = self.now
        self._busy -= 1
        if self._busy == 0:
            self.serving_secs += self.now - self._busy_since
        if self._backlog[model]:
            self._start(self._backlog[model].popleft())
        r.ticket.release()

    def _pump(self) -> None:
        """Act on everything the last action set off, until nothing moves."""
        self._stop_wakes()  # the action may have set a stop and notified nothing
        while self._ready or self._notified:
            while self._ready:
                step, value = self._ready.popleft()
                self._resume(step, value)
            self._stop_wakes()
            notified, self._notified = self._notified, []
            for cond in dict.fromkeys(notified):  # each once, in order
                if cond.owner == "timer":
                    self.sw.tick()
                elif cond.owner == "drain":
                    for step in [s for s in self._steps if s.drain is not None]:
                        self._check_drain(step)
                elif isinstance(cond.owner, Request):
                    self._claim(cond.owner)
        due = self.sw._timer_due
        if self._timer_started and due is not None and due != self._timer_scheduled:
            self._timer_scheduled = due
            self.at(due, lambda: self._tick_at(due))

    def _tick_at(self, due: float) -> None:
        if self._timer_scheduled == due:
            self._timer_scheduled = None
            self.sw.tick()

    def _claim(self, r: Request) -> None:
        if r.ticket is not None or r.gone:
            return
        try:
            ticket = self.sw.claim(r.waiter)
        except LlmuxError:
            r.gone = True
            return
        if ticket is not None:
            self._admitted(r, ticket)

    # --- procedures ---

    def _resume(self, step: _Step, value, error: BaseException | None = None) -> None:
        step.token += 1
        step.drain = step.hook = None
        try:
            effect = step.procedure.send(value) if error is None else step.procedure.throw(error)
        except StopIteration:
            self._steps.remove(step)
            return
        self._perform(step, effect)

    def _later(self, step: _Step, seconds: float, value) -> None:
        token = step.token

        def resume() -> None:
            if step.token == token:
                if isinstance(value, HookResult) and value.hook in ("wake", "sleep"):
                    (self.up.add if value.hook == "wake" else self.up.discard)(step.hook.model)
                self._resume(step, value)

        self.at(self.now + seconds, resume)

    def _perform(self, step: _Step, effect) -> None:
        if isinstance(effect, RunHook):
            step.hook = effect
            if effect.kind == "alive":
                ok = effect.model in self.up
                self._ready.append((step, HookResult("alive", 0 if ok else 1, 0.0)))
                return
            costs = self.backends.wake_secs if effect.kind == "wake" else self.backends.sleep_secs
            seconds = costs.get(effect.model, 0.0)
            if effect.kind == "wake":
                self.wakes += 1
                self.wake_secs += seconds  # a stopped wake's unspent part is taken off then
                step.wake_ends = self.now + seconds
            self._later(step, seconds, HookResult(effect.kind, 0, seconds))
        elif isinstance(effect, Pause):
            self._later(step, effect.seconds, None)
        elif isinstance(effect, Call):
            self._ready.append((step, effect.fn()))
        elif isinstance(effect, AwaitDrain):
            step.drain = effect
            if effect.deadline is not None:
                token = step.token
                self.at(effect.deadline, lambda: step.token == token and self._check_drain(step))
            self._check_drain(step)
        else:
            raise TypeError(f"unknown effect {effect!r}")

    def _check_drain(self, step: _Step) -> None:
        drain = step.drain
        if drain is None:
            return
        with self.sw._locked:
            outcome = self.sw._drain_outcome(drain)
        if outcome is not None:
            step.drain = None
            self._ready.append((step, outcome))

    def _stop_wakes(self) -> None:
        """End the hooks whose stop the engine set, as the hook runner would, at once."""
        for step in self._steps:
            hook = step.hook
            if hook is not None and hook.stop is not None and hook.stop.is_set():
                self.stopped_wakes += hook.kind == "wake"
                if hook.kind == "wake":
                    self.wake_secs -= max(step.wake_ends - self.now, 0.0)
                self._ready.append((step, HookResult(hook.kind, -15, 0.0, aborted=True)))
                step.token += 1  # its scheduled end is void
                step.hook = None

    # --- what the engine reports ---

    def in_flight_changed(self, model, in_flight) -> None:
        self._in_flight[model] = in_flight

    def switch_started(self, from_model, to_model) -> None:
        # the engine's count: admitted requests count before the simulation starts them
        busy = from_model is not None and self._in_flight.get(from_model, 0) > 0
        self.switches.append(Switch(self.now, from_model, to_model, busy_source=busy))

    def drain_finished(self, from_model, to_model, seconds, completed) -> None:
        if self.switches and self.switches[-1].drained is None:
            self.switches[-1].drained = self.now

    def switch_finished(self, from_model, to_model, ok, seconds, error="", ema=None, phases=None):
        self._end_switch("success" if ok else "failure")

    def switch_abandoned(self, from_model, to_model, reason, seconds) -> None:
        self._end_switch("abandoned")

    def _end_switch(self, result: str) -> None:
        if self.switches and self.switches[-1].finished is None:
            s = self.switches[-1]
            s.finished, s.result = self.now, result


def switching_secs(s: Switch) -> float:
    """The part of switch ``s`` during which no model serves: from its drain's end (or
    its start, with nothing to drain) to its end."""
    if s.finished is None:
        return 0.0
    return s.finished - (s.drained if s.drained is not None else s.started)
