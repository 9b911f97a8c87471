"""What happened, rebuilt from llmux's log records: model states, switches, sleeps, hook
runs and requests.

Usage::

    story = reconstruct(read_logs(paths))
    story.as_dict()        # the --json output

The records are the events :mod:`llmux.telemetry.log_events` and the request
boundary write; their names and fields are documented in the README (Telemetry).
Switches and sleeps come out as ``/llmux/status``'s ``timeline`` has them (same
fields, same durations), so the two can be compared. Times are Unix seconds;
a switch's start is its end minus its logged duration, as the status API has it.
Whatever the log cannot tell is a :class:`~llmux.timeline.reading.Gap`: a state
change the engine never makes (an event is missing), a switch or request with no
end, a restart (states start again from asleep), a log that starts mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.states import TRANSITIONS, ModelState
from .reading import Gap, Lines, booted_worker

UNKNOWN = "unknown"
IDLE = "idle"


@dataclass
class Story:
    """The rebuilt run: ``start``/``end`` (Unix seconds) and, per kind, plain dicts."""

    start: float | None = None
    end: float | None = None
    states: dict[str, list[dict]] = field(default_factory=dict)  # model -> intervals
    switches: list[dict] = field(default_factory=list)
    sleeps: list[dict] = field(default_factory=list)
    hooks: list[dict] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    lines: int = 0

    def window(self, since: float | None, until: float | None) -> Story:
        """The part of the story between ``since`` and ``until`` (Unix seconds; None: the
        log's start or end): states clipped to it, what overlaps it kept. States inside
        the window come from the whole log, so they are known even at its first second."""
        start = self.start if since is None else max(since, self.start or since)
        end = self.end if until is None else min(until, self.end or until)
        if start is None or end is None or start > end:
            return Story(sources=self.sources, lines=0)

        def overlaps(a: float, b: float) -> bool:
            return a <= end and b >= start

        states = {}
        for model, intervals in self.states.items():
            kept = [
                {**i, "from": max(i["from"], start), "to": min(i["to"], end)}
                for i in intervals
                if overlaps(i["from"], i["to"])
            ]
            if kept:
                states[model] = kept
        return Story(
            start=start,
            end=end,
            states=states,
            switches=[s for s in self.switches if overlaps(s["started_at"], s["finished_at"])],
            sleeps=[s for s in self.sleeps if overlaps(s["started_at"], s["finished_at"])],
            hooks=[h for h in self.hooks if overlaps(h["started_at"], h["finished_at"])],
            requests=[r for r in self.requests if overlaps(r["arrived_at"], r["finished_at"])],
            restarts=[t for t in self.restarts if start <= t <= end],
            gaps=[g for g in self.gaps if g.at is None or start <= g.at <= end],
            sources=self.sources,
            lines=self.lines,
        )

    def final_states(self) -> dict[str, str]:
        return {m: intervals[-1]["state"] for m, intervals in self.states.items() if intervals}

    def as_dict(self) -> dict:
        return {
            "start": self.start,
            "end": self.end,
            "sources": self.sources,
            "lines": self.lines,
            "gaps": [g.as_dict() for g in self.gaps],
            "restarts": self.restarts,
            "states": self.states,
            "final_states": self.final_states(),
            "switches": self.switches,
            "sleeps": self.sleeps,
            "hooks": self.hooks,
            "requests": self.requests,
        }


def _text(r: dict, key: str, default: str | None = "") -> str | None:
    """Field ``key`` of record ``r``, which must be a string (or absent: ``default``)."""
    value = r.get(key, default)
    if value is not default and not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def _phases(r: dict) -> dict[str, float]:
    """A switch's phases, name -> seconds; TypeError/ValueError/AttributeError if not."""
    return {str(name): float(secs) for name, secs in (r.get("phases") or {}).items()}


def reconstruct(lines: Lines, since: float | None = None, until: float | None = None) -> Story:
    """Rebuild a :class:`Story` from records in write order (:func:`read_logs`), one at a
    time. Requests that end before ``since`` or begin after ``until`` (Unix seconds) are
    not kept, so a long log needs memory for its window only; states, switches and
    hooks are kept whole (:meth:`Story.window` cuts them)."""
    builder = _Builder(lines, since, until)
    for record in lines.records:
        builder.feed(record)
    return builder.finish()


class _Builder:
    def __init__(self, lines: Lines, since: float | None, until: float | None):
        self.lines = lines
        self.since = float("-inf") if since is None else since
        self.until = float("inf") if until is None else until
        self.story = Story(sources=lines.sources)
        self.worker: int | None = None  # the pid whose records are llmux's
        self.retired: set[int] = set()  # workers replaced (one may still finish its streams)
        self.stops = 0
        self.started = False  # the log shows the worker starting: states known from there
        self.switch: dict | None = None
        self.requests: dict[str, dict] = {}  # by request_id, until they end

    def gap(self, at, kind: str, detail: str) -> None:
        self.story.gaps.append(Gap(at, kind, detail))

    def feed(self, r: dict) -> None:
        """Take one record; one of a shape llmux never writes (another program's JSON,
        a field of the wrong type) is a gap, not an error."""
        try:
            self._feed(r)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.gap(r["_t"], "unparsable", f"{r['_where']}: not an llmux record ({exc!r})")

    def _feed(self, r: dict) -> None:
        t = r["_t"]
        logger, message = r.get("logger", ""), r.get("message", "")
        if not isinstance(logger, str) or not isinstance(message, str):
            raise TypeError("logger and message must be strings")
        if self.story.start is None:
            self.story.start = t
        self.story.end = t
        if logger == "gunicorn.error" and message.startswith("Booting worker"):
            self.restart(t, "worker started" if not self.started else "worker restarted")
            worker = booted_worker(r)
            if worker is not None:  # a container's pids repeat from run to run
                self.retired.discard(worker)
            return
        if logger == "gunicorn.error" and message.startswith("Shutting down: Master"):
            self.stopped(t)
            return
        pid = r.get("pid")
        if logger.startswith("llmux.") and isinstance(pid, int) and pid not in self.retired:
            if self.worker is not None and pid != self.worker:  # its boot line is lost
                self.restart(t, f"records from a new process ({pid})")
            self.worker = pid
        event = r.get("event")
        handler = getattr(self, "on_" + event, None) if isinstance(event, str) else None
        if handler is not None:
            handler(r, t)

    def restart(self, t: float, why: str) -> None:
        if self.started or self.worker is not None or self.story.restarts or self.stops:
            self.gap(t, "restart", f"llmux restarted ({why}): what was in flight is cut")
            self.story.restarts.append(t)
        self.started = True
        if self.worker is not None:
            self.retired.add(self.worker)
        self.worker = None
        if self.switch is not None:
            self.no_end_switch(t)
        for model in self.story.states:
            self.set_state(model, ModelState.ASLEEP, t, check=False)
        for rid, request in list(self.requests.items()):
            self.gap(t, "no_end", f"request {rid} ({request['model']}) has no end: restart")
            del self.requests[rid]

    def stopped(self, t: float) -> None:
        """llmux exited: until it starts again nobody watched the models."""
        self.gap(t, "stopped", "llmux stopped: model states unknown until it starts again")
        self.stops += 1
        if self.switch is not None:
            self.no_end_switch(t)
        for model in self.story.states:
            self.set_state(model, UNKNOWN, t, check=False)
        if self.worker is not None:
            self.retired.add(self.worker)
        self.worker, self.started = None, False

    # --- model states ---

    def set_state(self, model: str, state: str, t: float, check: bool = True) -> None:
        intervals = self.story.states.setdefault(model, [])
        if not intervals:
            if self.started:
                intervals.append({"state": str(ModelState.ASLEEP), "from": self.story.start})
            else:
                intervals.append({"state": UNKNOWN, "from": self.story.start})
                self.gap(t, "unknown_start", f"{model}: state unknown until this first change")
        current = intervals[-1]
        if current["state"] == state:
            return
        if check and current["state"] != UNKNOWN and state != UNKNOWN:
            allowed = TRANSITIONS[ModelState(current["state"])]
            if ModelState(state) not in allowed:
                self.gap(t, "missing_event", f"{model} went from {current['state']} to {state}")
        current["to"] = t
        intervals.append({"state": str(state), "from": t})

    def on_model_state_changed(self, r, t):
        if r.get("state") in set(ModelState):
            model = _text(r, "model", None)
            if not model:
                raise KeyError("model")
            self.set_state(model, r["state"], t)

    # --- switches and sleeps, as /llmux/status's timeline has them ---

    def on_switch_started(self, r, t):
        if self.switch is not None:
            self.no_end_switch(t)
        self.switch = {"from": _text(r, "from", IDLE), "to": _text(r, "to"), "seen_at": t}

    def on_switch_retargeted(self, r, t):
        if self.switch is None:
            self.gap(
                t, "missing_event", f"switch_retargeted with no switch_started ({r['_where']})"
            )
            return
        self.switch.setdefault("retargeted_from", []).append(self.switch["to"])
        self.switch["to"] = _text(r, "new_to")

    def end_switch(self, r, t, to: str, result: str, error: str, phases: dict) -> None:
        source = _text(r, "from", IDLE)
        opened = self.switch
        if opened is None:
            self.gap(t, "missing_event", f"a switch to {to} ended with no switch_started")
        elif (opened["from"], opened["to"]) != (source, to):
            began = f"{opened['from']} -> {opened['to']}"
            self.gap(t, "missing_event", f"switch {began} ended as {source} -> {to}")
        seconds = float(r.get("duration_secs", 0.0))
        entry = {
            "kind": "switch",
            "from": source,
            "to": to,
            "ok": result == "success",
            "result": result,
            "error": error,
            "started_at": t - seconds,
            "finished_at": t,
            "duration_secs": seconds,
            "phases": phases,
        }
        if opened is not None and opened.get("retargeted_from"):
            entry["retargeted_from"] = opened["retargeted_from"]
        self.story.switches.append(entry)
        self.switch = None

    def on_model_activated(self, r, t):
        self.end_switch(r, t, _text(r, "model"), "success", "", _phases(r))

    def on_switch_failed(self, r, t):
        self.end_switch(r, t, _text(r, "model"), "failure", _text(r, "error"), _phases(r))

    def on_switch_abandoned(self, r, t):
        self.end_switch(r, t, _text(r, "to"), "abandoned", _text(r, "reason"), {})

    def no_end_switch(self, t: float) -> None:
        s = self.switch
        self.gap(s["seen_at"], "no_end", f"switch {s['from']} -> {s['to']} has no end in the log")
        self.switch = None

    def sleep(self, r, t, ok: bool, error: str) -> None:
        seconds = float(r.get("duration_secs", 0.0))
        self.story.sleeps.append(
            {
                "kind": "sleep",
                "from": _text(r, "model"),
                "to": None,
                "ok": ok,
                "error": error,
                "started_at": t - seconds,
                "finished_at": t,
                "duration_secs": seconds,
                "reason": _text(r, "reason"),
            }
        )

    def on_model_put_to_sleep(self, r, t):
        self.sleep(r, t, True, "")

    def on_model_sleep_failed(self, r, t):
        self.sleep(r, t, False, _text(r, "error"))

    # --- hooks ---

    def hook(self, r, t, result: str) -> None:
        seconds = float(r.get("duration_secs", 0.0))
        entry = {
            "model": _text(r, "model"),
            "hook": _text(r, "hook"),
            "result": result,
            "started_at": t - seconds,
            "finished_at": t,
            "duration_secs": seconds,
        }
        if result == "failed":
            entry.update(
                exit_code=r.get("exit_code"),
                timed_out=r.get("timed_out", False),
                stderr=_text(r, "stderr"),
            )
        self.story.hooks.append(entry)

    def on_hook_completed(self, r, t):
        self.hook(r, t, "ok")

    def on_hook_failed(self, r, t):
        self.hook(r, t, "failed")

    def on_hook_stopped(self, r, t):
        self.hook(r, t, "stopped")

    # --- requests, by request_id ---

    def request(self, r, t) -> dict | None:
        rid = r.get("request_id")
        if not isinstance(rid, str):
            return None
        if rid not in self.requests:
            self.requests[rid] = {"request_id": rid, "model": _text(r, "model"), "first_at": t}
        return self.requests[rid]

    def on_request_queued(self, r, t):
        entry = self.request(r, t)
        if entry is not None:
            entry["queued_at"] = t
            entry["priority_weight"] = r.get("priority_weight", 1.0)

    def on_request_admitted(self, r, t):
        entry = self.request(r, t)
        if entry is not None:
            entry["admitted_at"] = t

    def on_request_dequeued(self, r, t):
        entry = self.request(r, t)
        if entry is not None:
            entry["left_queue"] = _text(r, "reason")

    def on_request_timeout(self, r, t):
        self.request(r, t)

    def on_request_finished(self, r, t):
        entry = self.request(r, t)
        if entry is None:
            return
        seconds = float(r.get("duration_secs", 0.0))
        wait = float(r.get("wait_secs", 0.0))
        entry.update(
            arrived_at=t - seconds,
            admitted_at=entry.get("admitted_at", t - seconds + wait),
            finished_at=t,
            duration_secs=seconds,
            wait_secs=wait,
            status=r.get("status"),
            outcome=r.get("outcome"),
        )
        for key in ("ttfb_secs", "code", "alias", "path"):
            if key in r:
                entry[key] = r[key]
        del self.requests[entry["request_id"]]
        del entry["first_at"]
        if t >= self.since and entry["arrived_at"] <= self.until:
            self.story.requests.append(entry)

    def finish(self) -> Story:
        story = self.story
        story.lines = self.lines.count
        story.gaps[:0] = self.lines.gaps
        if story.lines and not self.lines.numbered:
            self.gap(story.start, "lines_lost", "lines carry no numbers: lost lines go unseen")
        if self.switch is not None:
            self.no_end_switch(self.story.end)
        for rid, entry in self.requests.items():
            at = entry["first_at"]
            self.gap(at, "no_end", f"request {rid} ({entry['model']}) has no end in the log")
        for intervals in self.story.states.values():
            intervals[-1]["to"] = self.story.end
        self.story.requests.sort(key=lambda r: r["arrived_at"])
        self.story.gaps.sort(key=lambda g: (g.at is None, g.at or 0.0))
        return self.story
