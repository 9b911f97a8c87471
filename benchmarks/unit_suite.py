"""The unit suite's wall time, and each engine scenario's: issue 13's measure that
the suite must not grow and that the engine harness runs in milliseconds.

Runs pytest in a subprocess of this interpreter (which needs llmux's ``test``
extra); without pytest the result says it was skipped.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

from .scenarios import Check, Result, Settings

ROOT = Path(__file__).resolve().parents[1]
ENGINE = "tests/unit/engine/"
SLOWEST_SCENARIO_MS = 100.0  # "milliseconds each", with room for a busy machine
_DURATION = re.compile(r"^\s*([\d.]+)s (?:setup|call|teardown)\s+(.+?)\s*$", re.M)
_PASSED = re.compile(r"(\d+) passed")


def unit_suite(settings: Settings) -> Result:
    """Run ``settings.unit_suite`` (a path under tests/) once; report its wall time and
    the engine scenarios' times (setup, call and teardown added up, per test)."""
    result = Result(
        "Unit suite: wall time",
        ["path", "tests", "wall s", "engine scenarios", "engine ms mean", "engine ms max"],
    )
    if importlib.util.find_spec("pytest") is None:
        result.notes.append("skipped: pytest (llmux's test extra) is not installed here")
        return result
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["--durations=0", "--durations-min=0", settings.unit_suite]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        result.checks.append(Check("the unit suite passes", "still running after 900 s", False))
        return result
    wall = time.monotonic() - started
    per_test: dict[str, float] = {}
    for seconds, test in _DURATION.findall(done.stdout):
        if test.startswith(ENGINE):
            per_test[test] = per_test.get(test, 0.0) + float(seconds)
    passed = _PASSED.search(done.stdout)
    count = int(passed.group(1)) if passed else 0
    times = [s * 1000 for s in per_test.values()]
    mean = sum(times) / len(times) if times else float("nan")
    slowest = max(times, default=float("nan"))
    result.rows.append([settings.unit_suite, count, wall, len(times), mean, slowest])
    result.checks.append(Check("the unit suite passes", f"{count} passed", done.returncode == 0))
    result.checks.append(
        Check(
            f"engine scenarios run in milliseconds: slowest ≤ {SLOWEST_SCENARIO_MS:g} ms",
            f"{slowest:.1f} ms",
            bool(times) and slowest <= SLOWEST_SCENARIO_MS,
        )
    )
    result.notes.append(
        "Wall time includes pytest's start-up and collection; the engine scenarios "
        "(tests/unit/engine) drive the switcher with a fake clock and no threads."
    )
    return result
