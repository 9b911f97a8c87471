"""A stand-in for the hook runner: models that 'load' in a few milliseconds.

It records every hook call and checks the invariant that matters most: no two
models are ever up at once.
"""

from __future__ import annotations

import threading
import time

from llmux.engine.hooks import HookResult


class FakeHooks:
    """Hooks that keep the set of models up; ``overlaps`` records every set of models up
    at once that ``fits`` refuses (default: more than one), ``concurrent`` every moment
    two wake or sleep hooks ran at once, ``slept_while_up`` the models put to sleep
    while up."""

    def __init__(self, wake_secs=0.01, sleep_secs=0.005, ready_timeout=1.0, fits=None):
        self.fits = fits or (lambda up: len(up) <= 1)
        self.running = 0
        self.concurrent = 0
        self.slept_while_up: list[str] = []
        self.wake_secs = wake_secs
        self.sleep_secs = sleep_secs
        self._ready_timeout = ready_timeout
        self.lock = threading.Lock()
        self.up: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.overlaps: list[set[str]] = []
        # (model, kind) -> function() -> exit code; replaces the default behaviour
        self.override: dict[tuple[str, str], object] = {}

    def run(self, model: str, kind: str, stop=None) -> HookResult:
        start = time.monotonic()
        with self.lock:
            self.calls.append((model, kind))
        if kind in ("wake", "sleep"):
            with self.lock:
                self.running += 1
                self.concurrent += self.running > 1
        try:
            special = self.override.get((model, kind))
            if special is not None:
                rc = special()
            elif kind == "wake":
                time.sleep(self.wake_secs)
                with self.lock:
                    self.up.add(model)
                    if not self.fits(set(self.up)):
                        self.overlaps.append(set(self.up))
                rc = 0
            elif kind == "sleep":
                time.sleep(self.sleep_secs)
                with self.lock:
                    if model in self.up:
                        self.slept_while_up.append(model)
                    self.up.discard(model)
                rc = 0
            else:
                rc = 0 if model in self.up else 1
        finally:
            if kind in ("wake", "sleep"):
                with self.lock:
                    self.running -= 1
        return HookResult(kind, rc, time.monotonic() - start, stderr="" if rc == 0 else "boom")

    def ready_timeout(self, model: str) -> float:
        return self._ready_timeout

    def count(self, model: str, kind: str) -> int:
        with self.lock:
            return self.calls.count((model, kind))
