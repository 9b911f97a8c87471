"""``llmux timeline`` on hand-made logs: rotated files in order, lost lines, restarts, missing
events, and the three outputs."""

from __future__ import annotations

import gzip
import io
import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from llmux.ops.cli import main
from llmux.timeline.reading import read_logs
from llmux.timeline.render import html_page, text
from llmux.timeline.story import reconstruct

T0 = 1_800_000_000.0
WORKER, MASTER = 200, 100
# what the four-switch logs of several tests hold
FOUR_SWITCHES = [("idle", "a"), ("a", "b"), ("b", "a"), ("a", "b")]


class Log:
    """Writes records as llmux does: JSON lines numbered per process."""

    def __init__(self):
        self.seq = {WORKER: 0, MASTER: 0}
        self.lines: list[str] = []

    def add(self, t: float, pid: int = WORKER, logger="llmux.switcher", skip=0, **fields):
        self.seq[pid] += 1 + skip
        stamp = datetime.fromtimestamp(T0 + t, UTC).isoformat()
        record = {"level": "INFO", "logger": logger, "message": "m", "timestamp": stamp}
        record.update(pid=pid, seq=self.seq[pid], **fields)
        self.lines.append(json.dumps(record))
        return self

    def boot(self, t: float, worker: int = WORKER):
        self.seq.setdefault(worker, 0)
        return self.add(t, MASTER, "gunicorn.error", message=f"Booting worker with pid: {worker}")

    def hook_failed(self, t, model, hook, stderr, exit_code=1):
        return self.add(
            t,
            event="hook_failed",
            model=model,
            hook=hook,
            exit_code=exit_code,
            timed_out=False,
            duration_secs=0.1,
            stderr=stderr,
        )

    def state(self, t, model, state, **kw):
        return self.add(t, event="model_state_changed", model=model, state=state, **kw)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def a_switch(log: Log, t: float, source: str, target: str) -> Log:
    """A successful switch source -> target over 1 s from ``t``, hooks and states included."""
    log.add(t, event="switch_started", **{"from": source, "to": target})
    if source != "idle":
        log.state(t, source, "draining").state(t + 0.1, source, "sleeping")
        log.add(t + 0.2, event="hook_completed", model=source, hook="sleep", duration_secs=0.1)
        log.state(t + 0.2, source, "asleep")
    log.state(t + 0.2, target, "waking")
    log.add(t + 0.9, event="hook_completed", model=target, hook="wake", duration_secs=0.7)
    log.state(t + 1.0, target, "awake")
    phases = {"wake": 0.8} if source == "idle" else {"drain": 0.1, "sleep": 0.1, "wake": 0.8}
    return log.add(
        t + 1.0,
        event="model_activated",
        model=target,
        duration_secs=1.0,
        phases=phases,
        **{"from": source},
    )


def story_of(log: Log):
    return reconstruct(read_logs(["-"], stdin=io.StringIO(log.text())))


def test_a_whole_run_has_states_switches_hooks_requests_and_no_gap():
    log = Log().boot(0)
    log.add(0.5, event="request_queued", model="a", request_id="r1", priority_weight=1.0)
    a_switch(log, 0.5, "idle", "a")
    log.add(1.5, event="request_admitted", model="a", request_id="r1", wait_secs=1.0)
    log.add(
        2.0,
        logger="llmux.request",
        event="request_finished",
        model="a",
        request_id="r1",
        status=200,
        outcome="completed",
        duration_secs=1.5,
        wait_secs=1.0,
    )
    a_switch(log, 3.0, "a", "b")
    story = story_of(log)
    assert story.gaps == []
    assert [(i["state"], round(i["from"] - T0, 3)) for i in story.states["a"]] == [
        ("asleep", 0.0), ("waking", 0.7), ("awake", 1.5), ("draining", 3.0),
        ("sleeping", 3.1), ("asleep", 3.2),
    ]  # fmt: skip
    assert story.final_states() == {"a": "asleep", "b": "awake"}
    first, second = story.switches
    assert (first["from"], first["to"], first["result"]) == ("idle", "a", "success")
    assert round(first["started_at"] - T0, 3) == 0.5 and first["phases"] == {"wake": 0.8}
    assert (second["from"], second["to"]) == ("a", "b")
    assert [(h["model"], h["hook"]) for h in story.hooks] == [
        ("a", "wake"),
        ("a", "sleep"),
        ("b", "wake"),
    ]
    (request,) = story.requests
    assert round(request["arrived_at"] - T0, 3) == 0.5
    assert round(request["admitted_at"] - T0, 3) == 1.5
    assert (request["status"], request["outcome"], request["wait_secs"]) == (200, "completed", 1.0)


def test_rotated_files_are_read_in_the_order_they_were_written(tmp_path: Path):
    log = Log().boot(0)
    for i, (source, target) in enumerate(FOUR_SWITCHES):
        a_switch(log, 2.0 * i, source, target)
    lines = log.lines
    third = len(lines) // 3
    # what logrotate leaves: .2.gz the oldest, .1 the middle, the live file the newest
    with gzip.open(tmp_path / "llmux.log.2.gz", "wt") as f:
        f.write("\n".join(lines[:third]) + "\n")
    (tmp_path / "llmux.log.1").write_text("\n".join(lines[third : 2 * third]) + "\n")
    (tmp_path / "llmux.log").write_text("\n".join(lines[2 * third :]) + "\n")
    paths = sorted(tmp_path.iterdir())  # a shell glob's order: live, .1, .2.gz
    story = reconstruct(read_logs([*paths, tmp_path / "llmux.log"]))  # the live one twice
    assert story.gaps == []
    assert [(s["from"], s["to"]) for s in story.switches] == FOUR_SWITCHES
    assert story.lines == len(lines)


def test_lost_lines_a_restart_and_a_missing_event_are_said_plainly():
    log = Log().boot(0)
    a_switch(log, 0.0, "idle", "a")
    log.add(2.0, event="switch_started", skip=3, **{"from": "a", "to": "b"})  # 3 lines lost
    log.state(2.2, "a", "sleeping")  # awake -> sleeping: draining is missing
    log.boot(3.0, worker=300)  # a new worker: the switch above never ended
    log.add(3.5, pid=300, event="ownership_acquired")
    # the old worker still finishes a stream: its line is no second restart
    log.add(3.6, logger="llmux.request", event="request_finished", request_id="old", model="a")
    log.add(3.7, pid=300, event="ownership_acquired")
    story = story_of(log)
    kinds = [(g.kind, g.detail) for g in story.gaps]
    assert kinds[0][0] == "lines_lost" and "3 lines of process 200 lost" in kinds[0][1]
    assert ("missing_event", "a went from awake to sleeping") in kinds
    assert any(k == "no_end" and "switch a -> b has no end" in d for k, d in kinds)
    assert any(k == "restart" for k, _ in kinds)
    assert story.restarts == [T0 + 3.0]
    assert [g.kind for g in story.gaps].count("restart") == 1
    assert story.final_states() == {"a": "asleep"}  # a restart starts asleep


def test_a_log_that_starts_mid_run_has_unknown_states_and_unnumbered_lines_are_flagged():
    lines = Log()
    a_switch(lines, 5.0, "a", "b")
    plain = "\n".join(
        json.dumps({k: v for k, v in json.loads(line).items() if k not in ("pid", "seq")})
        for line in lines.lines
    )
    story = reconstruct(read_logs(["-"], stdin=io.StringIO(plain + "\nnot json\n")))
    assert story.states["a"][0]["state"] == "unknown"
    kinds = {g.kind for g in story.gaps}
    assert kinds == {"unknown_start", "lines_lost", "unparsable"}


def test_text_json_and_html_outputs(tmp_path: Path):
    log = Log().boot(0)
    a_switch(log, 0.0, "idle", "a")
    log.hook_failed(1.5, "b", "wake", "<b>no GPU</b>\n", exit_code=3)
    path = tmp_path / "llmux.log"
    path.write_text(log.text())
    story = reconstruct(read_logs([path]))
    chart = text(story, width=40)
    assert "a     |" in chart and "=" in chart
    assert "idle -> a  success  1.000 s (wake 0.800)" in chart
    assert "b wake  exit 3 (0.100 s): <b>no GPU</b>" in chart
    page = html_page(story)
    assert "&lt;b&gt;no GPU&lt;/b&gt;" in page and "<b>no GPU" not in page
    runner = CliRunner()
    result = runner.invoke(
        main, ["timeline", "--json", "--html", str(tmp_path / "t.html"), str(path)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["final_states"] == {"a": "awake"}
    assert (tmp_path / "t.html").read_text().startswith("<!doctype html>")
    result = runner.invoke(main, ["timeline", str(tmp_path / "missing.log")])
    assert result.exit_code == 1 and "cannot read" in result.output
    result = runner.invoke(main, ["timeline"], input=log.text())  # stdin by default
    assert result.exit_code == 0 and "switches (1)" in result.output


def test_a_window_keeps_what_overlaps_it_with_states_known_from_before():
    log = Log().boot(0)
    a_switch(log, 0.0, "idle", "a")
    a_switch(log, 10.0, "a", "b")
    a_switch(log, 20.0, "b", "a")
    story = story_of(log)
    part = story.window(T0 + 5.0, T0 + 10.5)
    assert [(s["from"], s["to"]) for s in part.switches] == [("a", "b")]
    assert [i["state"] for i in part.states["a"]] == ["awake", "draining", "sleeping", "asleep"]
    assert part.states["a"][0]["from"] == T0 + 5.0  # awake since before the window
    assert [i["state"] for i in part.states["b"]] == ["asleep", "waking"]
    assert part.start == T0 + 5.0 and part.end == T0 + 10.5
    runner = CliRunner()
    since = datetime.fromtimestamp(T0 + 5.0, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    result = runner.invoke(main, ["timeline", "--since", since], input=log.text())
    assert result.exit_code == 0 and "switches (2)" in result.output  # a -> b, b -> a
    result = runner.invoke(main, ["timeline", "--until", "03:12 yesterday"], input=log.text())
    assert result.exit_code == 2 and "not an ISO 8601 time" in result.output


def test_a_truncated_gz_file_is_a_gap_not_a_crash(tmp_path: Path):
    log = Log().boot(0)
    a_switch(log, 0.0, "idle", "a")
    packed = gzip.compress(log.text().encode())
    (tmp_path / "llmux.log.2.gz").write_bytes(packed[: len(packed) * 2 // 3])
    story = reconstruct(read_logs([tmp_path / "llmux.log.2.gz"]))
    (gap,) = [g for g in story.gaps if g.kind == "unparsable"]
    assert "unreadable after line" in gap.detail
    assert story.lines > 0


def test_stdin_with_files_in_the_wrong_order_is_put_back_in_order():
    log = Log().boot(0)
    for i, (source, target) in enumerate(FOUR_SWITCHES):
        a_switch(log, 5.0 * i, source, target)
    half = len(log.lines) // 2
    # zcat -f llmux.log* | ...: the newest file first
    newest_first = "\n".join(log.lines[half:] + log.lines[:half]) + "\n"
    story = reconstruct(read_logs(["-"], stdin=io.StringIO(newest_first)))
    assert story.gaps == []
    assert [(s["from"], s["to"]) for s in story.switches] == FOUR_SWITCHES
    assert story.sources == ["<stdin, part 2>", "<stdin, part 1>"]


def test_a_stop_makes_states_unknown_until_llmux_starts_again():
    log = Log().boot(0)
    a_switch(log, 0.0, "idle", "a")
    log.add(5.0, MASTER, "gunicorn.error", message="Shutting down: Master")
    log.boot(100.0, worker=300)
    log.add(100.5, pid=300, event="model_state_changed", model="a", state="awake")
    story = story_of(log)
    assert [i["state"] for i in story.states["a"]] == [
        "asleep", "waking", "awake", "unknown", "asleep", "awake",
    ]  # fmt: skip
    assert [g.kind for g in story.gaps] == ["stopped", "restart"]


def test_what_cannot_be_shown_is_a_clear_error(tmp_path: Path):
    runner = CliRunner()
    text_log = "2026-11-30 06:00:00 INFO    llmux.switcher: switch idle -> a started\n"
    result = runner.invoke(main, ["timeline"], input=text_log)
    assert result.exit_code == 1
    assert "no llmux JSON log lines read (<stdin>:1: not a JSON log line)" in result.output
    result = runner.invoke(main, ["timeline"], input="")
    assert result.exit_code == 1 and "the input is empty" in result.output
    log = Log().boot(0)
    a_switch(log, 0.0, "idle", "a")
    result = runner.invoke(main, ["timeline", "--since", "2020-01-01T00:00"], input=log.text())
    assert result.exit_code == 0  # the window is clipped to the log
    outside = ["timeline", "--since", "2020-01-01T00:00", "--until", "2020-01-01T01:00"]
    result = runner.invoke(main, outside, input=log.text())
    assert result.exit_code == 1 and "the log covers" in result.output
    backwards = ["timeline", "--since", "2020-01-02T00:00", "--until", "2020-01-01T00:00"]
    result = runner.invoke(main, backwards, input=log.text())
    assert result.exit_code == 2 and "later than --until" in result.output
    result = runner.invoke(main, ["timeline", "--html", str(tmp_path)], input=log.text())
    assert result.exit_code == 1 and "cannot write" in result.output
    (tmp_path / "fake.gz").write_text(log.text())  # not gzip at all
    result = runner.invoke(main, ["timeline", str(tmp_path / "fake.gz")])
    assert result.exit_code == 1 and "unreadable" in result.output
    assert "Traceback" not in result.output


def test_the_terminal_gets_no_control_characters_and_narrow_charts_still_read():
    log = Log().boot(0)
    a_switch(log, 0.0, "idle", "a")
    log.hook_failed(2.0, "a", "sleep", "progress 50%\rdone\x1b[2J\n")
    chart = text(story_of(log), width=20)
    assert "\r" not in chart and "\x1b" not in chart
    assert ": done\\x1b[2J" in chart  # its last line, escaped
    assert "|" + " " * 20 + "|" in chart  # no overlapping times on a narrow chart


def test_a_glob_of_many_rotated_files_piped_in_is_read_in_write_order():
    log = Log().boot(0)
    for i in range(13):
        a_switch(log, 5.0 * i, "idle" if i == 0 else "ab"[(i + 1) % 2], "ab"[i % 2])
    size = len(log.lines) // 13 + 1
    files = [log.lines[i : i + size] for i in range(0, len(log.lines), size)]  # oldest first
    numbered = {len(files) - k: chunk for k, chunk in enumerate(files)}  # .1 is the newest
    # what `zcat -f llmux.log*` gives: llmux.log.1, .10, .11, .12, .13, .2, .3, ...
    order = sorted(numbered, key=lambda n: f"llmux.log.{n}")
    piped = "".join("\n".join(numbered[n]) + "\n" for n in order)
    story = reconstruct(read_logs(["-"], stdin=io.StringIO(piped)))
    assert story.gaps == []
    assert len(story.switches) == 13
    assert [s["to"] for s in story.switches] == ["ab"[i % 2] for i in range(13)]


def test_odd_input_on_stdin_is_read_or_named_never_a_traceback():
    log = Log().boot(0)
    a_switch(log, 0.0, "idle", "a")
    later = Log()
    later.seq = dict(log.seq)
    a_switch(later, 10.0, "a", "b")
    runner = CliRunner()
    # the newest piece first, with a stray line before it
    piped = "stray text\n" + later.text() + log.text()
    result = runner.invoke(main, ["timeline", "--json"], input=piped)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(s["from"], s["to"]) for s in data["switches"]] == [("idle", "a"), ("a", "b")]
    assert [g["kind"] for g in data["gaps"]] == ["unparsable"]
    # bytes that are not UTF-8 (a .gz piped without zcat)
    result = runner.invoke(main, ["timeline"], input=gzip.compress(log.text().encode()))
    assert result.exit_code == 1 and "no llmux JSON log lines read" in result.output


def test_records_of_a_shape_llmux_never_writes_are_gaps():
    log = Log().boot(0)
    a_switch(log, 0.0, "idle", "a")
    odd = [
        {"logger": None},
        {"event": "model_state_changed", "state": "awake"},  # no model
        {"event": "hook_completed", "model": "a", "hook": "wake", "duration_secs": None},
        {"event": "model_activated", "model": 5, "duration_secs": 1.0},
        {"event": "switch_failed", "model": "a", "phases": [1], "duration_secs": 1.0},
        {"event": "hook_failed", "model": "a", "hook": "wake", "duration_secs": 1, "stderr": 5},
    ]
    for i, fields in enumerate(odd):
        log.add(2.0 + i, **fields)
    story = story_of(log)
    gaps = [g for g in story.gaps if g.kind == "unparsable"]
    assert len(gaps) == len(odd), [g.detail for g in story.gaps]
    assert text(story) and html_page(story)  # and they render


def test_pids_repeating_after_a_restart_are_no_lost_lines():
    first = Log().boot(0)
    a_switch(first, 0.0, "idle", "a")
    first.add(5.0, MASTER, "gunicorn.error", message="Shutting down: Master")
    second = Log()  # a container: the same pids, numbered from 1 again
    second.add(9.0, MASTER, "gunicorn.error", message="Starting gunicorn 27.0.1")
    second.boot(10.0)
    a_switch(second, 10.0, "idle", "a")
    story = reconstruct(read_logs(["-"], stdin=io.StringIO(first.text() + second.text())))
    assert [g.kind for g in story.gaps] == ["stopped", "restart"]
    assert len(story.switches) == 2
