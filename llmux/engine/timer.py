"""One timer for every deadline of the engine: the end of a failure backoff or of
``min_active_secs`` (the policy's ``WaitUntil``) and idle sleep.

:class:`Deadlines` is the :class:`~llmux.engine.switcher.Switcher`'s half that
keeps it: ``_reschedule`` (lock held) wakes the timer when a deadline moves
earlier; ``tick`` is one pass of it; ``_timer_loop`` is its thread, started the
first time a deadline exists.
"""

from __future__ import annotations

import logging

from .policy import Snapshot

log = logging.getLogger("llmux.switcher")

RETRY_AFTER_FAILED_PASS_SECS = 1.0
TIMER_MAX_WAIT_SECS = 60.0  # the longest sleep with no deadline (a bound, not a poll)


class Deadlines:
    """Mixed into :class:`~llmux.engine.switcher.Switcher`; uses its state under its lock."""

    def tick(self) -> float | None:
        """One pass of the timer: act on every deadline that has passed; when the next
        one falls (monotonic seconds), or None. The timer thread's body; a harness
        with a fake clock calls it itself."""
        with self._locked:
            self._timer_due = self._on_time(self.clock())
            return self._timer_due

    def _on_time(self, now: float) -> float | None:
        if self._closed:
            return None
        if self._wake_at is not None and now >= self._wake_at:
            self._kick()  # a backoff or residency wait is over
        model, due = self._idle_due()
        if model is not None and now >= due:
            self._take_slot("idle-sleep", self._retire(model, "idle"), spawn=True)
        return self._next_due()

    def _idle_due(self, snap: Snapshot | None = None) -> tuple[str | None, float | None]:
        """The model the policy would put to sleep for being idle, and when (lock held;
        ``snap``: a snapshot of the state as it is now, if the caller has one)."""
        if self._closed:
            return None, None
        due = self.policy.idle_due(snap or self._snapshot(self.clock()))
        return (None, None) if due is None else due

    def _next_due(self, snap: Snapshot | None = None) -> float | None:
        # while the slot is taken, a WaitUntil waits for it too: freeing it asks again
        dues = [None if self._switching else self._wake_at, self._idle_due(snap)[1]]
        return min((d for d in dues if d is not None), default=None)

    def _reschedule(self, snap: Snapshot | None = None) -> None:
        """Wake the timer if a deadline now falls before the one it sleeps for (lock held)."""
        due = self._next_due(snap)
        if due is None:
            return
        if not self._timer_started:
            self._timer_started = True
            self.runner.background("llmux-timer", self._timer_loop)
        elif self._timer_due is None or due < self._timer_due:
            self._timer_due = due
            self._timer.notify()

    def _timer_loop(self) -> None:
        while not self._closed:
            failed = False
            try:
                due = self.tick()
            except Exception:  # the one timer must outlive a bad policy answer
                log.exception("timer pass failed", extra={"event": "timer_failed"})
                failed = True
            with self._locked:
                if self._closed:
                    return
                if failed:
                    due = self._timer_due = self.clock() + RETRY_AFTER_FAILED_PASS_SECS
                pause = TIMER_MAX_WAIT_SECS if due is None else due - self.clock()
                if self._timer_due == due:  # else a new deadline came meanwhile: look now
                    self._wait(self._timer, min(max(pause, 0.001), TIMER_MAX_WAIT_SECS))
