"""A stand-in for the hook runner: models that 'load' in a few milliseconds.

It records every hook call and checks the invariant that matters most: no two
models are ever up at once.
"""

from __future__ import annotations

import threading
import time

from llmux.engine.hooks import HookResult


class FakeHooks:
    def __init__(self, wake_secs=0.01, sleep_secs=0.005, ready_timeout=1.0):
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
        special = self.override.get((model, kind))
        if special is not None:
            rc = special()
        elif kind == "wake":
            time.sleep(self.wake_secs)
            with self.lock:
                self.up.add(model)
                if len(self.up) > 1:
                    self.overlaps.append(set(self.up))
            rc = 0
        elif kind == "sleep":
            time.sleep(self.sleep_secs)
            with self.lock:
                self.up.discard(model)
            rc = 0
        else:
            rc = 0 if model in self.up else 1
        return HookResult(kind, rc, time.monotonic() - start, stderr="" if rc == 0 else "boom")

    def ready_timeout(self, model: str) -> float:
        return self._ready_timeout

    def count(self, model: str, kind: str) -> int:
        with self.lock:
            return self.calls.count((model, kind))
