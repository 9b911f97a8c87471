"""What the switcher reports as it works: events as frozen values.

Usage::

    switcher = Switcher(..., observer=Observers(LogObserver(), metrics))

The switcher records each event as it happens, under its lock, and delivers
them, in the order they happened, once the lock is released (see
``Switcher._deliver``): an observer may be slow (it may write a file) without
holding anyone up. Each is delivered in the :mod:`contextvars` context of the
request it is about, when there is one, so its log line carries the request id.

An observer implements :meth:`Observer.emit`; the base class hands each event
to the method named by its ``kind``, with its fields as arguments, so
telemetry classes (:mod:`llmux.telemetry`) define only the methods for the
events they record. An observer that raises is logged and skipped; it never
fails a switch. Observers must not call back into the switcher.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from .hooks import HookResult

log = logging.getLogger("llmux.switcher")


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = ""

    def values(self) -> list[Any]:
        """The fields, in declaration order (not copied, unlike ``dataclasses.astuple``)."""
        return [getattr(self, name) for name in _field_names(type(self))]


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


EVENTS: list[type[Event]] = []  # every kind, in declaration order


def _event(kind: str):
    def register(cls):
        cls.kind = kind
        EVENTS.append(cls)
        return dataclass(frozen=True)(cls)

    return register


@_event("request_queued")
class RequestQueued(Event):
    model: str
    weight: float = 1.0  # its priority weight (from its Priority header's urgency)


@_event("request_admitted")
class RequestAdmitted(Event):
    model: str
    waited: float  # seconds in the queue
    queued: bool


@_event("request_left_queue")
class RequestLeftQueue(Event):
    model: str
    reason: str  # timeout | client_gone | cancelled | failed | removed | shutdown
    waited: float


@_event("queue_depth_changed")
class QueueDepthChanged(Event):
    model: str
    depth: int


@_event("request_timeout")
class RequestTimeout(Event):
    model: str
    timeout_secs: float


@_event("in_flight_changed")
class InFlightChanged(Event):
    model: str
    in_flight: int


@_event("state_changed")
class StateChanged(Event):
    model: str
    state: str  # a ModelState


@_event("switch_started")
class SwitchStarted(Event):
    from_model: str | None
    to_model: str


@_event("drain_started")
class DrainStarted(Event):
    from_model: str
    to_model: str
    in_flight: int


@_event("drain_finished")
class DrainFinished(Event):
    from_model: str
    to_model: str
    seconds: float
    completed: bool


@_event("alive_probe_failed")
class AliveProbeFailed(Event):
    model: str
    result: HookResult


@_event("hook_finished")
class HookFinished(Event):
    model: str
    result: HookResult


@_event("sleep_hook_failed")
class SleepHookFailed(Event):
    model: str
    to_model: str
    error: str
    still_alive: bool


@_event("model_deactivated")
class ModelDeactivated(Event):
    model: str
    active_seconds: float


@_event("switch_retargeted")
class SwitchRetargeted(Event):
    from_model: str | None
    to_model: str
    new_target: str


@_event("switch_abandoned")
class SwitchAbandoned(Event):
    from_model: str | None
    to_model: str
    reason: str
    seconds: float


@_event("sleep_abandoned")
class SleepAbandoned(Event):
    model: str
    reason: str
    why: str


@_event("model_put_to_sleep")
class ModelPutToSleep(Event):
    model: str
    reason: str  # admin | idle | reload | shutdown
    ok: bool
    seconds: float
    error: str = ""


@_event("switch_finished")
class SwitchFinished(Event):
    from_model: str | None
    to_model: str
    ok: bool
    seconds: float
    error: str = ""
    ema: float | None = None  # the pair's switch-cost average after this one
    phases: dict | None = None  # drain / sleep / wake seconds


@_event("model_evicted")
class ModelEvicted(Event):
    model: str
    for_model: str
    reason: str  # room | exclusive | out_of_memory


@_event("memory_probed")
class MemoryProbed(Event):
    used_bytes: int  # the device's memory in use, as the probe printed it


@_event("memory_measured")
class MemoryMeasured(Event):
    model: str
    took_bytes: int  # what this wake took (after minus before, plus what it held asleep)
    declared_bytes: int
    measured_bytes: int  # the high percentile over its recent wakes


@_event("wake_retried")
class WakeRetried(Event):
    model: str
    evicted: str  # put to sleep to make room for the retry
    error: str  # the out-of-memory failure of the first attempt


class Observer:
    """Receives events; the default :meth:`emit` calls the method named ``event.kind``
    (a no-op unless a subclass defines it)."""

    def emit(self, event: Event) -> None:
        method = getattr(self, event.kind, None)
        if method is not None:
            method(*event.values())


class Observers(Observer):
    """Fans every event out to several observers, in order; one that raises is logged
    and the others still get the event."""

    def __init__(self, *observers: Observer):
        self.observers = observers

    def emit(self, event: Event) -> None:
        for observer in self.observers:
            try:
                observer.emit(event)
            except Exception:
                log.exception(
                    "%s failed on %s",
                    type(observer).__name__,
                    event.kind,
                    extra={"event": "observer_failed"},
                )
