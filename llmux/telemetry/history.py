"""What happened lately: switches, sleeps and hook failures, for the admin API and the page.

Usage::

    history = History()
    switcher = Switcher(..., observer=Observers(LogObserver(), metrics, history))
    history.timeline()          # the last hour's switches and sleeps, oldest first
    history.hook_failures()     # the most recent failed hooks, newest first

Wall-clock times (Unix seconds) are kept, since people read them. The lists
are bounded both by age and by count, so a flapping model cannot grow them.
"""

from __future__ import annotations

import time
from collections import deque

from ..engine.events import Observer
from ..engine.hooks import HookResult

TIMELINE_SECS = 3600.0
MAX_TIMELINE = 1000
MAX_FAILURES = 50
STDERR_TAIL_CHARS = 2000


class History(Observer):
    def __init__(self, clock=time.time):
        self.clock = clock
        self._timeline: deque[dict] = deque(maxlen=MAX_TIMELINE)
        self._failures: deque[dict] = deque(maxlen=MAX_FAILURES)
        self._evicted: list[str] = []  # put to sleep by the switch running now

    def model_evicted(self, model, for_model, reason):
        self._evicted.append(model)

    def switch_finished(self, from_model, to_model, ok, seconds, error="", ema=None, phases=None):
        result = "success" if ok else "failure"
        evicted, self._evicted = self._evicted, []
        self._add(
            "switch", from_model, to_model, ok, seconds, error, phases=phases or {}, result=result,
            evicted=evicted,
        )  # fmt: skip

    def switch_abandoned(self, from_model, to_model, reason, seconds):
        evicted, self._evicted = self._evicted, []
        self._add(
            "switch", from_model, to_model, False, seconds, reason, phases={}, result="abandoned",
            evicted=evicted,
        )  # fmt: skip

    def model_put_to_sleep(self, model, reason, ok, seconds, error=""):
        self._add("sleep", model, None, ok, seconds, error, reason=reason)

    def _add(self, kind, from_model, to_model, ok, seconds, error, **extra) -> None:
        now = self.clock()
        self._timeline.append(
            {
                "kind": kind,
                "from": from_model,
                "to": to_model,
                "ok": ok,
                "error": error,
                "started_at": now - seconds,
                "finished_at": now,
                "duration_secs": seconds,
                **extra,
            }
        )

    def hook_finished(self, model, result: HookResult):
        if result.ok or result.aborted:  # a stopped wake is llmux's doing, not the hook's
            return
        self._failures.appendleft(
            {
                "at": self.clock(),
                "model": model,
                "hook": result.hook,
                "error": result.describe(),
                "exit_code": result.returncode,
                "timed_out": result.timed_out,
                "duration_secs": result.duration,
                "stderr_tail": result.stderr[-STDERR_TAIL_CHARS:],
            }
        )

    def timeline(self, window: float = TIMELINE_SECS) -> list[dict]:
        since = self.clock() - window
        return [dict(e) for e in self._timeline if e["finished_at"] >= since]

    def hook_failures(self) -> list[dict]:
        return [dict(f) for f in self._failures]

    def last_hook_failure(self, model: str) -> dict | None:
        return next((dict(f) for f in self._failures if f["model"] == model), None)
