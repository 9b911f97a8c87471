"""Replay a workload trace against llmux with fake backends and simulated hook costs.

Usage::

    python -m benchmarks.replay benchmarks/traces/agent-2models.jsonl [--secs 30]
        [--cost planner=1.5,0.5]

A trace is JSON lines: a header ``{"trace": NAME, "token_ms": 20, "models":
{"a": {"wake_secs": 2, "sleep_secs": 0.5}}}``, then one line per request,
``{"at": seconds, "model": "a", "tokens": 120}``. Each model's hooks sleep
for its simulated cost; the backend streams ``tokens`` chunks ``token_ms``
apart. Reported: mean and p99 latency (arrival to last chunk) and time to
first token, the number of switches, and the fraction of the replay during
which some model was streaming an answer. This is the yardstick for
scheduling policies: replay the same trace with another policy and compare.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from .harness import Harness
from .stats import pct


@dataclass
class Trace:
    name: str
    token_ms: float
    costs: dict[str, dict[str, float]]
    requests: list[dict]

    @classmethod
    def load(cls, path: Path, secs: float | None = None) -> Trace:
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        head, rows = lines[0], lines[1:]
        if secs is not None:
            rows = [r for r in rows if r["at"] < secs]
        return cls(head["trace"], head["token_ms"], head["models"], rows)


@dataclass
class ReplayResult:
    trace: str
    requests: int
    failed: int
    latency_mean: float
    latency_p99: float
    ttft_mean: float
    ttft_p99: float
    switches: int
    serving_fraction: float
    seconds: float


def replay(h: Harness, trace: Trace) -> ReplayResult:
    models = {
        name: {
            "port": h.backend().port,  # a backend each: llmux refuses two models on one port
            "wake": f"sleep {cost['wake_secs']}",
            "sleep": f"sleep {cost['sleep_secs']}",
            "alive": "true",
        }
        for name, cost in trace.costs.items()
    }
    llmux = h.llmux(models, name=f"llmux-{trace.name}")
    url = f"http://127.0.0.1:{llmux.port}/v1/chat/completions"
    outcomes: list[dict | None] = [None] * len(trace.requests)
    start = time.monotonic() + 0.5

    def one(i: int, row: dict) -> None:
        pause = start + row["at"] - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sent = time.monotonic()
        body = {
            "model": row["model"],
            "stream": True,
            "messages": [],
            "bench": {"chunks": row["tokens"], "gap_ms": trace.token_ms},
        }
        first = None
        try:
            with requests.post(url, json=body, stream=True, timeout=600) as r:
                if r.status_code != 200:
                    return
                for line in r.iter_lines():
                    if first is None and line.startswith(b"data: {"):
                        first = time.monotonic()
                    if line == b"data: [DONE]":
                        outcomes[i] = {"sent": sent, "first": first, "end": time.monotonic()}
        except requests.RequestException:
            return

    threads = [threading.Thread(target=one, args=(i, row)) for i, row in enumerate(trace.requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    done = [o for o in outcomes if o is not None]
    status = requests.get(f"http://127.0.0.1:{llmux.port}/llmux/status", timeout=10).json()
    switches = sum(1 for e in status["timeline"] if e["kind"] == "switch" and e["ok"])
    latency = [o["end"] - o["sent"] for o in done]
    ttft = [o["first"] - o["sent"] for o in done]
    begin = min(o["sent"] for o in done)
    end = max(o["end"] for o in done)
    return ReplayResult(
        trace=trace.name,
        requests=len(trace.requests),
        failed=len(trace.requests) - len(done),
        latency_mean=sum(latency) / len(latency),
        latency_p99=pct(latency, 99),
        ttft_mean=sum(ttft) / len(ttft),
        ttft_p99=pct(ttft, 99),
        switches=switches,
        serving_fraction=_union([(o["first"], o["end"]) for o in done]) / (end - begin),
        seconds=end - begin,
    )


def _union(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, None
    for lo, hi in sorted(intervals):
        if reach is None or lo > reach:
            total += hi - lo
            reach = hi
        elif hi > reach:
            total += hi - reach
            reach = hi
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--secs", type=float, help="replay only the first SECS of the trace")
    parser.add_argument(
        "--cost", action="append", default=[], metavar="MODEL=WAKE,SLEEP",
        help="override a model's simulated hook cost, in seconds",
    )  # fmt: skip
    args = parser.parse_args()
    trace = Trace.load(args.trace, args.secs)
    for item in args.cost:
        model, _, secs = item.partition("=")
        wake, _, sleep = secs.partition(",")
        trace.costs[model] = {"wake_secs": float(wake), "sleep_secs": float(sleep or 0)}
    with Harness() as h:
        print(json.dumps(replay(h, trace).__dict__, indent=2))


if __name__ == "__main__":
    main()
