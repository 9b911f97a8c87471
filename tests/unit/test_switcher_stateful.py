"""A hypothesis state machine drives the switcher through requests, releases and hook faults.

After every step: never two models up (under a memory budget: the models up fit it,
no exclusive pair is up, a pinned model is never put to sleep for room, no two hooks
run at once), in-flight counts match the tickets held, queues are empty once nobody
waits, and a healthy model can always be reached.
"""

from __future__ import annotations

import threading
import time

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from llmux.engine.residency import Budget, ModelMemory
from llmux.engine.switcher import Switcher, SwitchSettings
from llmux.errors import LlmuxError

from .fakes import FakeHooks

MODELS = ("a", "b", "c")
GiB = 1024**3


class SwitcherMachine(RuleBasedStateMachine):
    budget = None

    def __init__(self):
        super().__init__()
        fits = None
        if self.budget is not None:
            fits = self.budget.fits
        self.hooks = FakeHooks(wake_secs=0.001, sleep_secs=0.001, ready_timeout=0.2, fits=fits)
        self.sw = Switcher(
            MODELS, self.hooks, SwitchSettings(failure_backoff_secs=0.0), budget=self.budget
        )
        self.tickets = []
        self.pending = []

    def _acquire(self, model, timeout):
        box = {}

        def body():
            try:
                box["ticket"] = self.sw.acquire(model, timeout=timeout)
            except LlmuxError as exc:
                box["error"] = exc

        t = threading.Thread(target=body, daemon=True)
        t.start()
        return t, box

    @rule(model=st.sampled_from(MODELS))
    def request_and_wait(self, model):
        t, box = self._acquire(model, 0.2)  # held tickets of another model block it
        t.join(10)
        assert not t.is_alive()
        if "ticket" in box:
            self.tickets.append(box["ticket"])
            assert model in self.hooks.up, "admitted to a model that is not up"

    @rule(model=st.sampled_from(MODELS), timeout=st.sampled_from([0.001, 0.05]))
    def request_in_background(self, model, timeout):
        self.pending.append(self._acquire(model, timeout))

    # the index is drawn whatever the state: how many tickets exist depends on timing,
    # and hypothesis needs the same draws when it replays a case
    @rule(index=st.integers(0, 1000))
    def release(self, index):
        if self.tickets:
            self.tickets.pop(index % len(self.tickets)).release()

    @rule(model=st.sampled_from(MODELS), kind=st.sampled_from(["wake", "sleep"]))
    def break_hook(self, model, kind):
        self.hooks.override[(model, kind)] = lambda: 1

    @rule()
    def heal(self):
        self.hooks.override.clear()

    @rule()
    def settle(self):
        for t, box in self.pending:
            t.join(10)
            assert not t.is_alive()
            if "ticket" in box:
                self.tickets.append(box["ticket"])
        self.pending.clear()

    @invariant()
    def never_two_models_up(self):
        assert not self.hooks.overlaps
        assert not self.hooks.concurrent, "two wake or sleep hooks ran at once"
        if self.budget is not None:
            pinned = [m for m in self.hooks.slept_while_up if self.budget.pinned(m)]
            assert not pinned, f"pinned {pinned} put to sleep"

    def teardown(self):
        self.settle()
        for ticket in self.tickets:
            ticket.release()
        status = self.sw.status()
        deadline = time.monotonic() + 5
        while status["switching"] and time.monotonic() < deadline:
            time.sleep(0.01)
            status = self.sw.status()
        for name, m in status["models"].items():
            assert m["in_flight"] == 0, (name, m)
            assert m["queued"] == 0, (name, m)
        self.hooks.override.clear()
        self.sw.acquire("b", timeout=5).release()  # no wedged state: still reachable


TestSwitcherMachine = SwitcherMachine.TestCase
TestSwitcherMachine.settings = settings(
    max_examples=30, stateful_step_count=20, deadline=None, derandomize=True
)


class BudgetMachine(SwitcherMachine):
    """The same steps under a memory budget: a and b fit together, c is exclusive with
    a, and b is pinned, so every kind of eviction happens."""

    budget = Budget(
        50 * GiB,
        0,
        {
            "a": ModelMemory(25 * GiB),
            "b": ModelMemory(15 * GiB, pin=True),
            "c": ModelMemory(30 * GiB, exclusive_with=frozenset({"a"})),
        },
    )


TestBudgetMachine = BudgetMachine.TestCase
TestBudgetMachine.settings = settings(
    max_examples=30, stateful_step_count=20, deadline=None, derandomize=True
)
