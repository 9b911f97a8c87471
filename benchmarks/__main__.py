"""Run every benchmark scenario, print the results and write docs/performance.md.

Usage::

    python -m benchmarks                 # the full run, about 10 minutes
    python -m benchmarks --smoke         # a few seconds, targets not judged (CI)
    python -m benchmarks --only streaming,scale --out /tmp/perf.md

(``benchmarks/run.sh`` installs what this needs first.)
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import scenarios
from .harness import Harness
from .replay import Trace, replay
from .report import machine, markdown, plot
from .unit_suite import unit_suite

ROOT = Path(__file__).resolve().parents[1]
TRACES = sorted((ROOT / "benchmarks" / "traces").glob("*.jsonl"))
ALL = ("non_streaming", "streaming", "scale", "switch_overhead", "waiting", "unit_suite", "replay")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--no-peers", action="store_true", help="direct and llmux only")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--out", type=Path, help="default: docs/performance.md (full runs)")
    args = parser.parse_args()
    settings = scenarios.SMOKE if args.smoke else scenarios.FULL
    if args.no_peers:
        settings = replace(settings, peers=False)
    chosen = args.only.split(",") if args.only else list(ALL)
    out = args.out or (None if args.smoke else ROOT / "docs" / "performance.md")
    _raise_file_limit(8192)  # 1,000 streams: client, llmux and backend sockets

    started = time.monotonic()
    results, replays = [], []
    with Harness() as h:
        if {"non_streaming", "streaming", "scale"} & set(chosen):
            servers = scenarios.paths(h, settings)
            for name in ("non_streaming", "streaming", "scale"):
                if name in chosen:
                    results.append(_show(getattr(scenarios, name)(h, settings, servers)))
            for server in list(h.servers):
                h.stop(server)
        if "switch_overhead" in chosen:
            results.append(_show(scenarios.switch_overhead(h, settings)))
        if "waiting" in chosen:
            results.append(_show(scenarios.waiting(h, settings)))
        if "unit_suite" in chosen:
            results.append(_show(unit_suite(settings)))
        if "replay" in chosen:
            for path in TRACES:
                result = replay(h, Trace.load(path, settings.replay_secs))
                replays.append(result)
                print(f"replay {result.trace}: {result.__dict__}", flush=True)
    seconds = time.monotonic() - started

    failed = [c for r in results for c in r.checks if not c.ok]
    broken = _broken(results, replays)
    if out is not None:
        command = "benchmarks/run.sh" + (" --smoke" if args.smoke else "")
        png = out.with_suffix(".png")
        plot(results, png)
        out.write_text(markdown(results, replays, machine(), command, seconds, png.name))
        print(f"wrote {out} and {png}")
    print(f"{len(failed)} target(s) not met; {seconds:.0f} s")
    if broken:
        print("BROKEN: " + "; ".join(broken))
        return 1
    return 0


def _show(result: scenarios.Result) -> scenarios.Result:
    print(f"\n== {result.name}")
    print("  " + " | ".join(result.columns))
    for row in result.rows:
        print("  " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row))
    for check in result.checks:
        print(f"  [{'ok' if check.ok else 'NOT MET'}] {check.target}: {check.measured}")
    sys.stdout.flush()
    return result


def _broken(results, replays) -> list[str]:
    """What makes even a smoke run fail: lost requests or streams, not slowness."""
    problems = []
    for r in results:
        for c in r.checks:
            if ("complete" in c.target) and not c.ok:
                problems.append(f"{r.name}: {c.target}: {c.measured}")
        if r.name.startswith("Non-streaming"):
            errors = sum(
                row[-1] for row in r.rows if row[1] == "llmux" and isinstance(row[-1], int)
            )
            if errors:
                problems.append(f"{r.name}: llmux answered {errors} requests with errors")
    problems += [f"replay {x.trace}: {x.failed} requests failed" for x in replays if x.failed]
    return problems


def _raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


if __name__ == "__main__":
    sys.exit(main())
