"""What the switcher reports as it works: one method per event.

Usage::

    switcher = Switcher(..., observer=Observers(LogObserver(), metrics))

:class:`Observer` is a no-op base; telemetry subclasses (:mod:`llmux.telemetry`)
override the events they record. The switcher calls them with its lock held, so
they must be quick and must never call back into the switcher.
"""

from __future__ import annotations

from .hooks import HookResult


class Observer:
    def request_queued(self, model: str) -> None: ...

    def request_admitted(self, model: str, waited: float, queued: bool) -> None: ...

    def request_left_queue(self, model: str, reason: str, waited: float) -> None: ...

    def queue_depth_changed(self, model: str, depth: int) -> None: ...

    def request_timeout(self, model: str, timeout_secs: float) -> None: ...

    def in_flight_changed(self, model: str, in_flight: int) -> None: ...

    def state_changed(self, model: str, state: str) -> None: ...

    def switch_started(self, from_model: str | None, to_model: str) -> None: ...

    def drain_started(self, from_model: str, to_model: str, in_flight: int) -> None: ...

    def drain_finished(
        self, from_model: str, to_model: str, seconds: float, completed: bool
    ) -> None: ...

    def alive_probe_failed(self, model: str, result: HookResult) -> None: ...

    def hook_finished(self, model: str, result: HookResult) -> None: ...

    def sleep_hook_failed(
        self, model: str, to_model: str, error: str, still_alive: bool
    ) -> None: ...

    def model_deactivated(self, model: str, active_seconds: float) -> None: ...

    def switch_retargeted(self, from_model: str | None, to_model: str, new_target: str) -> None: ...

    def switch_abandoned(
        self, from_model: str | None, to_model: str, reason: str, seconds: float
    ) -> None: ...

    def sleep_abandoned(self, model: str, reason: str, why: str) -> None: ...

    def model_put_to_sleep(
        self, model: str, reason: str, ok: bool, seconds: float, error: str = ""
    ) -> None: ...

    def switch_finished(
        self,
        from_model: str | None,
        to_model: str,
        ok: bool,
        seconds: float,
        error: str = "",
        ema: float | None = None,
        phases: dict | None = None,
    ) -> None: ...


class Observers(Observer):
    """Fans every event out to several observers, in order."""

    def __init__(self, *observers: Observer):
        self.observers = observers


def _fan_out(name: str):
    def method(self, *args, **kwargs):
        for observer in self.observers:
            getattr(observer, name)(*args, **kwargs)

    method.__name__ = name
    return method


for _name in [n for n in vars(Observer) if not n.startswith("_")]:
    setattr(Observers, _name, _fan_out(_name))
