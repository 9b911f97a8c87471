"""``llmux timeline`` run on a test llmux's log, as an operator would, and held against what
``/llmux/status`` says about the same run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _switch_key(entry: dict) -> tuple:
    return (
        entry["kind"],
        entry["from"] or "idle",
        entry["to"],
        entry.get("result"),
        entry["ok"],
        entry["error"],
        round(entry["duration_secs"], 6),
        tuple(sorted((k, round(v, 6)) for k, v in (entry.get("phases") or {}).items())),
        entry.get("reason"),
    )


def timeline_matches_status(server, html: Path) -> dict:
    """Run ``llmux timeline --json --html`` on ``server``'s log; assert that it rebuilt the
    same switches, sleeps and current states as ``/llmux/status`` shows, and that the page
    was written. Returns the timeline's JSON."""
    status = server.status()
    run = subprocess.run(
        [sys.executable, "-m", "llmux", "timeline", "--json", "--html", str(html)]
        + [str(server.stderr_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    story = json.loads(run.stdout)
    want = [_switch_key(e) for e in status["timeline"]]
    # both in the order they ended: the status API appends as they end, the log says when
    ended = sorted(story["switches"] + story["sleeps"], key=lambda e: e["finished_at"])
    got = [_switch_key(e) for e in ended]
    assert got == want, (got, want)
    states = {m: v["state"] for m, v in status["models"].items()}
    for model, state in states.items():
        assert story["final_states"].get(model, "asleep") == state, (model, story["final_states"])
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page
    return story
