"""The switcher's events as structured log records (SPEC §7).

Usage::

    switcher = Switcher(..., observer=Observers(LogObserver(), metrics))
"""

from __future__ import annotations

import logging

from ..engine.events import Observer
from ..engine.policy import IDLE
from ..engine.residency import OVER_DECLARED, format_bytes

UNDER_DECLARED = 0.5  # a wake measured below this share of the declared size is reported

log = logging.getLogger("llmux.switcher")


class LogObserver(Observer):
    """Writes the switch and hook events of SPEC §7 as structured log records.

    Records about a request carry its ``request_id`` through the logging filter
    of :mod:`llmux.telemetry.logs`, since they are logged in that request's greenlet.
    """

    def request_queued(self, model, weight=1.0):
        log.info(
            "request for %s queued",
            model,
            extra={"event": "request_queued", "model": model, "priority_weight": round(weight, 3)},
        )

    def request_admitted(self, model, waited, queued):
        if queued:  # a request admitted at once shows in request_finished alone
            log.info(
                "request for %s admitted after %.3fs",
                model,
                waited,
                extra={"event": "request_admitted", "model": model, "wait_secs": round(waited, 6)},
            )

    def request_left_queue(self, model, reason, waited):
        log.info(
            "request left the queue of %s: %s",
            model,
            reason,
            extra={
                "event": "request_dequeued",
                "model": model,
                "reason": reason,
                "wait_secs": round(waited, 6),
            },
        )

    def request_timeout(self, model, timeout_secs):
        log.warning(
            "request for %s waited %ss in the queue and timed out",
            model,
            timeout_secs,
            extra={"event": "request_timeout", "model": model, "timeout_secs": timeout_secs},
        )

    def state_changed(self, model, state):
        log.info(
            "%s is %s",
            model,
            state,
            extra={"event": "model_state_changed", "model": model, "state": str(state)},
        )

    def model_evicted(self, model, for_model, reason):
        log.info(
            "%s put to sleep to make room for %s (%s)",
            model,
            for_model,
            reason,
            extra={"event": "model_evicted", "model": model, "for_model": for_model,
                   "reason": reason},
        )  # fmt: skip

    def memory_measured(self, model, took_bytes, declared_bytes, measured_bytes):
        over = measured_bytes > OVER_DECLARED * declared_bytes
        # far less than declared: the probe may read another device than the hooks use
        under = took_bytes < UNDER_DECLARED * declared_bytes
        event, note = "memory_measured", ""
        if over:
            event, note = "memory_over_declared", ": more than 10% over its declared memory"
        elif under:
            event = "memory_under_declared"
            note = ": far below its declared memory; does the probe read the model's GPU?"
        log.log(
            logging.WARNING if over or under else logging.INFO,
            "%s took %s on waking (declared %s, measured %s)%s",
            model,
            format_bytes(took_bytes),
            format_bytes(declared_bytes),
            format_bytes(measured_bytes),
            note,
            extra={
                "event": event,
                "model": model,
                "took_bytes": took_bytes,
                "declared_bytes": declared_bytes,
                "measured_bytes": measured_bytes,
            },
        )

    def wake_retried(self, model, evicted, error):
        log.warning(
            "waking %s failed for lack of memory; %s was put to sleep and the wake tried again",
            model,
            evicted,
            extra={"event": "wake_retried", "model": model, "evicted": evicted, "error": error},
        )

    def switch_started(self, from_model, to_model):
        log.info(
            "switch %s -> %s started",
            from_model or IDLE,
            to_model,
            extra={"event": "switch_started", "from": from_model or IDLE, "to": to_model},
        )

    def drain_started(self, from_model, to_model, in_flight):
        log.info(
            "draining %s: %d requests in flight",
            from_model,
            in_flight,
            extra={
                "event": "drain_started",
                "model": from_model,
                "to": to_model,
                "in_flight": in_flight,
            },
        )

    def alive_probe_failed(self, model, result):
        log.debug(
            "alive probe of %s failed: %s",
            model,
            result.describe(),
            extra={
                "event": "alive_probe_failed",
                "model": model,
                "exit_code": result.returncode,
                "timed_out": result.timed_out,
            },
        )

    def drain_finished(self, from_model, to_model, seconds, completed):
        log.info(
            "drain of %s %s after %.3fs",
            from_model,
            "finished" if completed else "timed out",
            seconds,
            extra={
                "event": "drain_finished",
                "model": from_model,
                "to": to_model,
                "duration_secs": round(seconds, 6),
                "completed": completed,
            },
        )

    def hook_finished(self, model, result):
        if result.ok:
            log.info(
                "%s hook of %s completed in %.3fs",
                result.hook,
                model,
                result.duration,
                extra={
                    "event": "hook_completed",
                    "model": model,
                    "hook": result.hook,
                    "duration_secs": round(result.duration, 6),
                },
            )
        elif result.aborted:
            log.info(
                "%s hook of %s stopped after %.3fs: nobody waits for the model any more",
                result.hook,
                model,
                result.duration,
                extra={
                    "event": "hook_stopped",
                    "model": model,
                    "hook": result.hook,
                    "duration_secs": round(result.duration, 6),
                },
            )
        else:
            log.warning(
                "%s hook of %s failed: %s",
                result.hook,
                model,
                result.describe(),
                extra={
                    "event": "hook_failed",
                    "model": model,
                    "hook": result.hook,
                    "exit_code": result.returncode,
                    "timed_out": result.timed_out,
                    "duration_secs": round(result.duration, 6),
                    "stderr": result.stderr[-2000:],
                },
            )

    def sleep_hook_failed(self, model, to_model, error, still_alive):
        log.warning(
            "sleep hook of %s failed (%s); %s",
            model,
            error,
            "it is still alive, switch abandoned" if still_alive else "it is not alive, going on",
            extra={
                "event": "sleep_hook_failed",
                "model": model,
                "to": to_model,
                "error": error,
                "still_alive": still_alive,
            },
        )

    def switch_retargeted(self, from_model, to_model, new_target):
        log.info(
            "switch %s -> %s now goes to %s: the policy chose again",
            from_model or IDLE,
            to_model,
            new_target,
            extra={
                "event": "switch_retargeted",
                "from": from_model or IDLE,
                "to": to_model,
                "new_to": new_target,
            },
        )

    def switch_abandoned(self, from_model, to_model, reason, seconds):
        log.info(
            "switch %s -> %s abandoned: %s",
            from_model or IDLE,
            to_model,
            reason,
            extra={
                "event": "switch_abandoned",
                "from": from_model or IDLE,
                "to": to_model,
                "reason": reason,
                "duration_secs": round(seconds, 6),
            },
        )

    def sleep_abandoned(self, model, reason, why):
        log.info(
            "%s stays awake (%s sleep abandoned): %s",
            model,
            reason,
            why,
            extra={"event": "sleep_abandoned", "model": model, "reason": reason, "why": why},
        )

    def model_put_to_sleep(self, model, reason, ok, seconds, error=""):
        fields = {"model": model, "reason": reason, "duration_secs": round(seconds, 6)}
        if ok:
            log.info(
                "%s put to sleep (%s) after %.3fs",
                model,
                reason,
                seconds,
                extra={"event": "model_put_to_sleep", **fields},
            )
        else:
            log.warning(
                "%s could not be put to sleep (%s): %s",
                model,
                reason,
                error,
                extra={"event": "model_sleep_failed", "error": error, **fields},
            )

    def switch_finished(self, from_model, to_model, ok, seconds, error="", ema=None, phases=None):
        if ok:
            log.info(
                "model %s activated after %.3fs",
                to_model,
                seconds,
                extra={
                    "event": "model_activated",
                    "model": to_model,
                    "from": from_model or IDLE,
                    "duration_secs": round(seconds, 6),
                    "phases": _rounded(phases),
                },
            )
        else:
            log.warning(
                "switch %s -> %s failed: %s",
                from_model or IDLE,
                to_model,
                error,
                extra={
                    "event": "switch_failed",
                    "model": to_model,
                    "from": from_model or IDLE,
                    "error": error,
                    "duration_secs": round(seconds, 6),
                    "phases": _rounded(phases),
                },
            )


def _rounded(phases: dict | None) -> dict:
    """A switch's phases (drain, sleep, wake: seconds), to the microsecond."""
    return {name: round(secs, 6) for name, secs in (phases or {}).items()}
