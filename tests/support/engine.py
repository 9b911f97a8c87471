"""A deterministic harness for the engine: no threads, a fake clock, hooks that
finish when the test says.

Usage::

    h = Harness(("a", "b"))
    r = h.request("a")                 # queued: "a" is asleep
    assert h.hooks_pending() == [("a", "wake")]
    h.finish("a", "wake")              # the wake hook returns 0; alive passes
    assert r.admitted and h.state("a") == "awake"
    h.release(r)
    h.advance(30)                      # 30 fake seconds: timers fire

The switcher runs unchanged; only its runner, clock and conditions are the
harness's. A procedure the switcher starts is stepped, outside the lock, until
it yields something the test must answer: a ``wake`` or ``sleep`` hook
(``alive`` is answered from the set of models whose wake succeeded and whose
sleep did not, unless ``alive_override`` says otherwise), a :class:`Pause` not
yet over on the fake clock, or a drain not yet done. Nothing polls: a drain is
looked at again only when the engine notified ``_drained`` or its deadline came,
a queued request only when its own condition was notified, the timer only when
notified or due, so a forgotten notification leaves a scenario stuck and its
test fails. After every step the harness checks the engine's invariants: never
two models up (under a memory budget: the models up fit it, no exclusive pair
up, and with a fake GPU it is never overfilled), one wake or sleep hook at a
time, in-flight counts equal the tickets held, the switching slot taken exactly
while a procedure runs, and every state change a legal transition.

Not covered here, and covered by the threaded tests (tests/unit/test_switcher*.py):
``acquire``'s own waiting (timeouts, ``cancelled`` probes), ``Switcher.sleep``'s
wait for the slot, and ``ThreadRunner``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llmux.engine.effects import AwaitDrain, Call, Pause, Procedure, RunHook
from llmux.engine.events import Event, Observer, Observers
from llmux.engine.hooks import HookResult
from llmux.engine.states import TRANSITIONS, ModelState
from llmux.engine.switcher import Switcher, SwitchSettings
from llmux.engine.waiters import Ticket, Waiter
from llmux.errors import LlmuxError

# Requests arrive this far apart on the fake clock (seconds), so that their arrival
# order is their order in time, as it is on a real clock.
ARRIVAL_GAP = 0.001


class FakeClock:
    """Monotonic seconds that move only when the test moves them."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


class Recorder(Observer):
    """Keeps every event as ``(kind, fields)``."""

    def __init__(self):
        self.events: list[tuple[str, tuple]] = []

    def emit(self, event: Event) -> None:
        self.events.append((event.kind, tuple(event.values())))

    def of(self, kind: str) -> list[tuple]:
        return [fields for k, fields in self.events if k == kind]


@dataclass
class _Step:
    name: str
    procedure: Procedure
    effect: Any = None
    started: bool = False
    fresh: bool = False  # its effect was just yielded: looked at once before waiting
    until: float | None = None  # of a Pause


@dataclass
class Request:
    """One request: a ticket once admitted, or its error."""

    model: str
    ticket: Ticket | None = None
    waiter: Waiter | None = None
    error: LlmuxError | None = None
    released: bool = False

    @property
    def admitted(self) -> bool:
        return self.ticket is not None

    @property
    def queued(self) -> bool:
        return self.ticket is None and self.error is None


class FlagCondition:
    """The harness's condition: nobody waits on it; :meth:`notify` raises a flag that
    the harness takes down when it acts on it. So a waiter, a drain or the timer
    moves on only when the engine notified it, as in production, and a
    notification the engine forgot shows as a scenario that never moves on."""

    def __init__(self, lock=None):
        self.notified = False

    def notify(self, n: int = 1) -> None:
        self.notified = True

    def notify_all(self) -> None:
        self.notified = True

    def wait(self, timeout=None) -> bool:
        raise AssertionError("nothing waits in the harness")

    def take(self) -> bool:
        """Whether it was notified since the last take."""
        was, self.notified = self.notified, False
        return was


class StepRunner:
    """The switcher's runner in the harness: procedures are kept, not run, and the
    timer is not a thread (the harness ticks when it is due or notified)."""

    def __init__(self):
        self.steps: list[_Step] = []
        self.timer_started = False

    def spawn(self, name: str, procedure: Procedure) -> None:
        self.steps.append(_Step(name, procedure))

    def run(self, procedure: Procedure) -> Any:
        raise NotImplementedError("the harness runs nothing inline; use Harness.sleep")

    def background(self, name: str, loop) -> None:
        self.timer_started = True  # its first pass runs at once

    def condition(self, lock) -> FlagCondition:
        return FlagCondition(lock)


class Harness:
    def __init__(
        self,
        models: Iterable[str] = ("a", "b", "c"),
        *,
        idle: dict[str, float] | None = None,
        ready_timeout: float = 10.0,
        progress: dict[str, float] | None = None,
        observers: Iterable[Observer] = (),
        policy=None,
        budget=None,
        gpu: dict[str, int] | None = None,
        gpu_capacity: int = 0,
        probe: bool = True,
        **settings,
    ):
        # a fake GPU: what each model really takes awake (bytes), read by the probe
        self.gpu = gpu
        self.gpu_capacity = gpu_capacity
        self.probe = probe  # whether llmux may read the fake GPU
        self.oom_wakes = 0
        self.clock = FakeClock()
        self.runner = StepRunner()
        self.events = Recorder()
        self.up: set[str] = set()
        self.alive_override: dict[str, bool] = {}
        self.calls: list[tuple[str, str]] = []
        self.wake_progress = progress if progress is not None else {}
        self._ready_timeout = ready_timeout
        self.requests: list[Request] = []
        self._states: dict[str, str] = {}
        self._timer_ran = False
        self.sw = Switcher(
            models,
            self,
            SwitchSettings(**settings),
            observer=Observers(self.events, *observers),
            policy=policy,
            clock=self.clock,
            idle_sleep=idle,
            runner=self.runner,
            budget=budget,
        )

    # --- the Hooks protocol; only ready_timeout and progress are called directly ---

    def run(self, model: str, kind: str, stop=None) -> HookResult:
        raise AssertionError("hooks run only through the harness's effects")

    def ready_timeout(self, model: str) -> float:
        return self._ready_timeout

    def progress(self, model: str) -> float | None:
        return self.wake_progress.get(model)

    def probe_memory(self) -> int | None:
        """The fake GPU's use: what the models up really take; None without one."""
        return None if self.gpu is None or not self.probe else self.gpu_used()

    def gpu_used(self) -> int:
        return sum(self.gpu[m] for m in self.up)

    # --- what the test does ---

    def request(self, model: str, weight: float = 1.0) -> Request:
        """A request arrives; it is admitted at once or queued. Raises what ``enter`` raises."""
        r = Request(model)
        self.clock.now += ARRIVAL_GAP
        got = self.sw.enter(model, weight=weight)
        if isinstance(got, Ticket):
            r.ticket = got
        else:
            r.waiter = got
        self.requests.append(r)
        self._collect(fresh=r)
        self.settle()
        return r

    def release(self, *requests: Request) -> None:
        for r in requests:
            assert r.ticket is not None, "only an admitted request can be released"
            r.ticket.release()
            r.released = True
        self.settle()

    def cancel(self, r: Request) -> bool:
        """The client of a queued request left."""
        gone = self.sw.cancel(r.waiter)
        self.settle()
        return gone

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the fake clock, firing timers and ending pauses."""
        self.clock.now += seconds
        self.settle()

    def start(self, awake: str | None = None, preload: str | None = None) -> None:
        """Start-up: the probe finds ``awake`` up (a previous llmux left it)."""
        if awake is not None:
            self.up.add(awake)
        self.sw.start(lambda: awake, preload)
        self.settle()

    def sleep(self, model: str) -> None:
        """An operator puts ``model`` to sleep; the procedure is stepped like any other."""
        with self.sw._locked:
            if self.sw._switching or model not in self.sw._up:
                raise AssertionError("the harness puts only the idle active model to sleep")
            procedure = self.sw._take_slot("sleep", self.sw._retire(model, "admin"))
        self.runner.steps.append(_Step("sleep", procedure))
        self.settle()

    def hooks_pending(self) -> list[tuple[str, str]]:
        """The wake and sleep hooks running now, waiting for :meth:`finish`."""
        return [(s.effect.model, s.effect.kind) for s in self._hook_steps()]

    def finish(
        self,
        model: str,
        kind: str,
        rc: int = 0,
        raises: Exception | None = None,
        stderr: str = "boom",
    ) -> None:
        """The pending ``kind`` hook of ``model`` ends with ``rc`` (and ``stderr`` if not
        0), or raises. With a fake GPU (``gpu``), a wake that would overfill it fails as
        a real one does: exit 1, ``CUDA out of memory``."""
        for step in self._hook_steps():
            if (step.effect.model, step.effect.kind) == (model, kind):
                overfills = self.gpu is not None and kind == "wake" and rc == 0 and raises is None
                if overfills and self.gpu_used() + self.gpu[model] > self.gpu_capacity:
                    rc, stderr = 1, "torch.OutOfMemoryError: CUDA out of memory"
                    self.oom_wakes += 1
                if raises is None and rc == 0:
                    if kind == "wake":
                        self.up.add(model)
                    elif kind == "sleep":
                        self.up.discard(model)
                result = HookResult(kind, rc, 0.0, stderr="" if rc == 0 else stderr)
                self._resume(step, result, raises)
                self.settle()
                return
        raise AssertionError(f"no {kind} hook of {model} runs; pending: {self.hooks_pending()}")

    # --- what the test looks at ---

    def state(self, model: str) -> str:
        return self.sw.state(model)

    def status(self) -> dict:
        return self.sw.status()

    @property
    def switching(self) -> bool:
        return self.sw.status()["switching"]

    # --- stepping ---

    def _hook_steps(self) -> list[_Step]:
        return [
            s
            for s in self.runner.steps
            if isinstance(s.effect, RunHook) and s.effect.kind in ("wake", "sleep")
        ]

    def settle(self) -> None:
        """Step the timer, every procedure and every waiter until all wait for the test,
        checking the invariants after each step."""
        for _ in range(10_000):
            moved = self._tick_if_due()
            for step in list(self.runner.steps):
                if self._try_step(step):
                    moved = True
                    self.check()
            moved = self._collect() or moved
            if not moved:
                self.check()
                return
        raise AssertionError("the engine never settled (a timer or procedure spins)")

    def _tick_if_due(self) -> bool:
        """Run the timer's pass when it was notified or its deadline came, as its thread would."""
        if not self.runner.timer_started:
            return False
        first = not self._timer_ran
        due = self.sw._timer_due
        if not (first or self.sw._timer.take() or (due is not None and self.clock.now >= due)):
            return False
        self._timer_ran = True
        self.sw.tick()
        self.check()
        return True

    def _try_step(self, step: _Step) -> bool:
        if not step.started:
            step.started = True
            self._resume(step, None, None)
            return True
        effect = step.effect
        fresh, step.fresh = step.fresh, False
        if isinstance(effect, RunHook) and effect.stop is not None and effect.stop.is_set():
            # the engine stopped it: the runner ends it at once, killed
            self._resume(step, HookResult(effect.kind, -15, 0.0, aborted=True), None)
            return True
        if isinstance(effect, RunHook) and effect.kind == "alive":
            ok = self.alive_override.get(effect.model, effect.model in self.up)
            self._resume(step, HookResult("alive", 0 if ok else 1, 0.0), None)
            return True
        if isinstance(effect, Call):
            try:
                value, error = effect.fn(), None
            except Exception as exc:
                value, error = None, exc
            self._resume(step, value, error)
            return True
        if isinstance(effect, Pause):
            if step.until is None:
                step.until = self.clock.now + effect.seconds
            if self.clock.now >= step.until:
                step.until = None
                self._resume(step, None, None)
                return True
            return False
        if isinstance(effect, AwaitDrain):
            # looked at when yielded, when notified, and when its deadline comes
            notified = self.sw._drained.take()
            late = effect.deadline is not None and self.clock.now >= effect.deadline
            if not (fresh or notified or late):
                return False
            with self.sw._locked:
                outcome = self.sw._drain_outcome(effect)
            if outcome is not None:
                self._resume(step, outcome, None)
                return True
        return False

    def _resume(self, step: _Step, value, error) -> None:
        try:
            if error is not None:
                step.effect = step.procedure.throw(error)
            else:
                step.effect = step.procedure.send(value)
        except StopIteration:
            self.runner.steps.remove(step)
            return
        step.fresh = True
        if isinstance(step.effect, RunHook):
            self.calls.append((step.effect.model, step.effect.kind))

    def _collect(self, fresh: Request | None = None) -> bool:
        """Requests whose waiter was notified (or ``fresh``, just queued) get their
        ticket or error, as a waiting ``acquire`` would; True if any did."""
        moved = False
        for r in self.requests:
            if r.waiter is None or not r.queued:
                continue
            if not (r is fresh or r.waiter.wakeup.take()):
                continue
            try:
                r.ticket = self.sw.claim(r.waiter)
            except LlmuxError as exc:
                r.error = exc
            moved = moved or not r.queued
        return moved

    def check(self) -> None:
        """The invariants: the models up fit the budget (without one: never two up),
        no two ``exclusive_with`` models up, one wake or sleep hook at a time; in-flight
        counts equal the tickets held (a waiter admitted but not yet woken counts); the
        slot taken exactly while a procedure runs; every state change a transition of
        TRANSITIONS."""
        budget = self.sw.budget
        assert budget.fits(self.up), (
            f"{sorted(self.up)} up at once: over the budget, or exclusive with each other"
        )
        assert len(self.hooks_pending()) <= 1, f"hooks overlap: {self.hooks_pending()}"
        if self.gpu is not None:
            assert self.gpu_used() <= self.gpu_capacity, "the fake GPU is overfilled"
        status = self.sw.status()
        for name, m in status["models"].items():
            held = sum(
                r.model == name and (r.admitted and not r.released or r.queued and r.waiter.granted)
                for r in self.requests
            )
            assert m["in_flight"] == held, f"{name}: in flight {m['in_flight']}, tickets {held}"
        assert status["switching"] == bool(self.runner.steps), (
            f"switching={status['switching']} with procedures {self.runner.steps}"
        )
        for model, state in self._state_changes():
            before = self._states.get(model, ModelState.ASLEEP)
            assert ModelState(state) in TRANSITIONS[ModelState(before)] or state == before, (
                f"{model}: {before} -> {state} is not a transition"
            )
            self._states[model] = state
        for model in set(self._states) - set(status["models"]):
            del self._states[model]  # forgotten after a reload; a new one starts asleep

    def _state_changes(self):
        seen = getattr(self, "_seen", 0)
        changes = [a for n, a in self.events.events[seen:] if n == "state_changed"]
        self._seen = len(self.events.events)
        return changes


def storm(h: Harness, rng, models: str, steps: int = 300) -> None:
    """``steps`` random steps on ``h``: arrivals for ``models`` (40 %), releases (20 %),
    departures (5 %), hook outcomes (25 %, one in ten a failure) and clock moves."""
    for _ in range(steps):
        roll = rng.random()
        held = [r for r in h.requests if r.admitted and not r.released]
        queued = [r for r in h.requests if r.queued]
        if roll < 0.4:
            h.request(rng.choice(models))
        elif roll < 0.6 and held:
            h.release(rng.choice(held))
        elif roll < 0.65 and queued:
            h.cancel(rng.choice(queued))
        elif roll < 0.9 and h.hooks_pending():
            model, kind = rng.choice(h.hooks_pending())
            h.finish(model, kind, rc=0 if rng.random() < 0.9 else 1)
        else:
            h.advance(rng.choice([0.1, 1.0]))


def run_dry(h: Harness, passes: int = 1000) -> None:
    """Finish every hook and release every ticket until nobody waits (at most ``passes``
    rounds; a backoff may hold the next switch, so the clock moves when nothing else can)."""
    for _ in range(passes):
        held = [r for r in h.requests if r.admitted and not r.released]
        if held:
            h.release(*held)
        elif h.hooks_pending():
            h.finish(*h.hooks_pending()[0])
        elif any(r.queued for r in h.requests):
            h.advance(1.0)
        else:
            return
