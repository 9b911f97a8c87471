"""What a switch procedure asks of the world, and the runner that does it.

The engine's slow procedures (a switch, putting a model to sleep, start-up, a
re-check) are generators. Everything in them that blocks is *yielded* as an
effect; the runner performs it outside the switcher's lock and sends the
result back (or throws the exception in). Everything else in them is a short
step under the lock. So the same procedure runs in a thread of its own in
production (:class:`ThreadRunner`) and step by step, with no thread and a fake
clock, in the engine harness (``tests/support/engine.py``).

Effects and what the runner sends back:

- :class:`RunHook` -> the :class:`~llmux.engine.hooks.HookResult`
- :class:`Call` -> what the function returned
- :class:`Pause` -> None, after ``seconds``
- :class:`AwaitDrain` -> True once drained (or ended early), False once past the deadline
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RunHook:
    """Run a hook; ``stop``: an event that, once set, ends it (its process group)."""

    model: str
    kind: str  # "wake" | "sleep" | "alive"
    stop: threading.Event | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Call:
    """A blocking call with no hook behind it (start-up's probe of what is awake)."""

    fn: Callable[[], Any]


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class AwaitDrain:
    """Wait until ``model`` has no request in flight, or ``deadline`` (monotonic
    seconds; None: never) passes. ``requested``: the drain of a switch a request
    asked for, which may end early (see ``Switcher._drain_outcome``)."""

    model: str
    requested: bool
    deadline: float | None


Effect = RunHook | Call | Pause | AwaitDrain
Procedure = Generator[Effect, Any, Any]


class Runner(Protocol):
    def spawn(self, name: str, procedure: Procedure) -> None:
        """Run ``procedure`` to its end without blocking the caller."""

    def run(self, procedure: Procedure) -> Any:
        """Run ``procedure`` to its end in the caller; return what it returned."""

    def background(self, name: str, loop: Callable[[], None]) -> None:
        """Run ``loop`` (the switcher's deadline timer) for the switcher's life."""

    def condition(self, lock: threading.Lock) -> threading.Condition:
        """A condition on the switcher's ``lock`` (the harness's records notifications)."""


class ThreadRunner:
    """Runs procedures in threads (greenlets under gevent), performing effects with
    ``perform(effect) -> result``, which may raise."""

    def __init__(self, perform: Callable[[Effect], Any]):
        self.perform = perform

    def spawn(self, name: str, procedure: Procedure) -> None:
        threading.Thread(target=self.run, args=(procedure,), name=name, daemon=True).start()

    def run(self, procedure: Procedure) -> Any:
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                effect = procedure.send(value) if error is None else procedure.throw(error)
            except StopIteration as stop:
                return stop.value
            try:
                value, error = self.perform(effect), None
            except Exception as exc:  # thrown into the procedure, which decides
                value, error = None, exc
            except BaseException:  # this thread is being killed: the procedure's
                procedure.close()  # finally blocks still free what it holds
                raise

    def background(self, name: str, loop: Callable[[], None]) -> None:
        threading.Thread(target=loop, name=name, daemon=True).start()

    def condition(self, lock: threading.Lock) -> threading.Condition:
        return threading.Condition(lock)
