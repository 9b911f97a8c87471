"""Events recorded under the switcher's lock and delivered, in order, after it.

:class:`EventDelivery` is the :class:`~llmux.engine.switcher.Switcher`'s half
that does this (``_emit``, ``_deliver``, ``_wait``); ``with switcher._locked:``
(a :class:`Section`) takes the lock and, on the way out, delivers. See
:mod:`llmux.engine.events` for the events and docs/architecture.md ("Events")
for the rules.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import TYPE_CHECKING

from . import events as ev

if TYPE_CHECKING:
    from .switcher import Switcher

log = logging.getLogger("llmux.switcher")


class Section:
    """``with switcher._locked:``: the lock held; on the way out, released, then the
    events recorded meanwhile delivered."""

    __slots__ = ("_switcher",)

    def __init__(self, switcher: Switcher):
        self._switcher = switcher

    def __enter__(self) -> None:
        self._switcher._lock.acquire()

    def __exit__(self, *exc) -> None:
        self._switcher._lock.release()
        self._switcher._deliver()


class EventDelivery:
    """Mixed into :class:`~llmux.engine.switcher.Switcher`; uses its ``_lock``,
    ``_outbox``, ``_delivering`` and ``observer``."""

    def _emit(self, event: ev.Event, context: contextvars.Context | None = None) -> None:
        """Record ``event`` (lock held), to be delivered in ``context`` (default: the
        caller's) once the lock is released."""
        if context is None:
            context = contextvars.copy_context()
        self._outbox.append((context, event))

    def _deliver(self) -> None:
        """Hand every recorded event to the observer, oldest first (lock not held).

        One deliverer at a time, so order is kept. A caller that finds another
        delivering leaves its events to it and goes on: the deliverer looks at
        the outbox again after letting go, so none is left behind, and a slow
        observer holds up only the one delivering.
        """
        while self._outbox:
            if not self._delivering.acquire(blocking=False):
                return
            try:
                while self._outbox:
                    context, event = self._outbox.popleft()
                    try:
                        context.run(self.observer.emit, event)
                    except Exception:
                        log.exception(
                            "observer failed on %s", event.kind, extra={"event": "observer_failed"}
                        )
            finally:
                self._delivering.release()

    def _wait(self, condition: threading.Condition, timeout: float) -> None:
        """Wait on ``condition`` (lock held) for up to ``timeout`` seconds; but if events
        wait to be delivered and nobody delivers them, deliver them instead and
        return at once, for the caller to look again."""
        if self._outbox and not self._delivering.locked():
            self._lock.release()
            try:
                self._deliver()
            finally:
                self._lock.acquire()
            return
        condition.wait(timeout)
