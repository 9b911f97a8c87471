"""The scheduling report: every policy on every trace, in simulation and through real llmux.

Usage::

    python -m benchmarks.scheduling [--quick] [--replay] [--out docs/scheduling.md]

Simulated (``llmux simulate``'s engine): the Azure 2023 code+conv trace (first
20 minutes; samples p = 0.10, 0.25, 0.35, seeds 1-5) at switch costs of 2, 5,
10, 20 and 30 s; a generated agent ping-pong trace and a bursty 8-model Zipf
trace (seeds 1-5); the two shipped traces. Cells are medians over the seeds.
Backends serve 16 requests at once. ``--replay`` adds runs through a real
llmux (``benchmarks.policy_replay``; minutes each). Writes a Markdown report
with its plots next to it; without the Azure files those rows say so.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmux.engine.cost_aware import CostAwarePolicy
from llmux.engine.policies import POLICIES
from llmux.engine.policy import Snapshot
from llmux.sim.baselines import BASELINES
from llmux.sim.compare import Costs, compare
from llmux.sim.report import Summary
from llmux.sim.traces import (
    AZURE_ATTRIBUTION,
    Trace,
    azure_two_models,
    load_trace,
    ping_pong,
    zipf_bursty,
)

ROOT = Path(__file__).resolve().parents[1]
ALL = (*POLICIES, *BASELINES)
K = 16
FIELDS = ("mean", "p50", "p99", "max", "worst_model_p99", "switches", "serving_fraction",
          "past_bound", "thrash", "wasted_wakes")  # fmt: skip


@dataclass
class Cell:
    """Medians over seeds of one policy's figures on one trace family at one cost."""

    policy: str
    values: dict[str, float]
    runs: int


def run_family(make: Callable[[int], Trace], seeds, cost: float, policies=ALL) -> list[Cell]:
    per: dict[str, list[Summary]] = {p: [] for p in policies}
    for seed in seeds:
        trace = make(seed)
        costs = Costs({m: cost for m in trace.models}, concurrency={m: K for m in trace.models})
        for _, s in compare(trace, policies, costs):
            per[s.policy].append(s)
    return [
        Cell(p, {f: statistics.median(getattr(s, f) or 0.0 for s in ss) for f in FIELDS}, len(ss))
        for p, ss in per.items()
    ]


def families(quick: bool) -> dict[str, tuple[Callable[[int], Trace], list[int]]]:
    seeds = [1, 2, 3] if quick else [1, 2, 3, 4, 5]
    out: dict[str, tuple[Callable[[int], Trace], list[int]]] = {}
    azure = azure_two_models()
    if azure is not None:
        window = azure.window(1200)
        for p in (0.10, 0.25, 0.35):
            out[f"azure p={p:.2f}"] = (lambda seed, p=p: window.sample(p, seed), seeds)
    out["ping-pong"] = (lambda seed: ping_pong(seconds=1200, seed=seed), seeds)
    out["zipf 8 models"] = (lambda seed: zipf_bursty(seconds=1200, rate=1.0, seed=seed), seeds)
    for name in ("agent-2models", "poisson-3models"):
        path = ROOT / "benchmarks" / "traces" / f"{name}.jsonl"
        out[name] = (lambda seed, path=path: load_trace([path]), [1])
    return out


def decision_micros(models: int = 50, queued: int = 10_000, rounds: int = 200) -> float:
    """Median microseconds of one CostAwarePolicy.decide with ``models`` models and
    ``queued`` waiters spread over them, the awake model busy (the slowest branch)."""
    from llmux.engine.policy import ArrivalRates, SwitchCosts

    names = [f"m{i}" for i in range(models)]
    costs = SwitchCosts()
    for a in names:
        for b in names:
            if a != b:
                costs.observe(a, b, 10.0)
    per = queued // (models - 1)
    queues = {m: tuple(100.0 + i * 0.001 for i in range(per)) for m in names[1:]}
    weights = {m: (per, float(per), sum(queues[m])) for m in names[1:]}
    snap = Snapshot(
        now=200.0, active="m0", awake_since=150.0, in_flight={"m0": 4}, queues=queues,
        costs=costs.view(), states={"m0": "awake"}, queue_weights=weights, came_from="m1",
        service_secs={m: 1.0 for m in names}, arrivals=ArrivalRates(),
    )  # fmt: skip
    policy = CostAwarePolicy(max_wait_secs=1000.0)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        policy.decide(snap)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def fmt(field: str, v: float) -> str:
    if field == "serving_fraction":
        return f"{v:.0%}"
    if field in ("switches", "past_bound", "thrash", "wasted_wakes"):
        return f"{v:g}"
    return f"{v:.1f}"


def table(cells: list[Cell]) -> list[str]:
    head = ["policy", "mean s", "p50 s", "p99 s", "max s", "worst model p99 s", "switches",
            "serving", "past bound+C", "thrash", "wasted wakes"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        lines.append("| " + " | ".join([c.policy, *(fmt(f, c.values[f]) for f in FIELDS)]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three seeds, two costs")
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    args = parser.parse_args()
    costs = (2.0, 10.0) if args.quick else (2.0, 5.0, 10.0, 20.0, 30.0)
    out: list[str] = []
    verdicts: list[str] = []
    for name, (make, seeds) in families(args.quick).items():
        for cost in costs:
            cells = run_family(make, seeds, cost)
            by = {c.policy: c.values for c in cells}
            out += [f"### {name}, C = {cost:g} s (medians of {len(seeds)} seeds)", ""]
            out += table(cells) + [""]
            f, c = by["fifo"], by["cost_aware"]
            worse = [k for k in ("mean", "p99") if c[k] > f[k] * 1.0001]
            verdicts.append(
                f"| {name} | {cost:g} | {c['mean'] / f['mean']:.2f} | {c['p99'] / f['p99']:.2f} | "
                f"{c['switches'] / max(f['switches'], 1):.2f} | {', '.join(worse) or '-'} |"
            )
            print(verdicts[-1], flush=True)
    micros = decision_micros()
    print(f"decide(): {micros:.0f} us with 50 models and 10,000 queued")
    if args.out:
        head = ["| trace | C s | mean / FIFO | p99 / FIFO | switches / FIFO | worse than FIFO |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        text = ["## Ratios to FIFO (cost_aware / fifo, medians)", "", *head, *verdicts, "",
                "## Every run", "", *out,
                f"One cost_aware decision: {micros:.0f} µs (50 models, 10,000 queued).", "",
                f"Trace: {AZURE_ATTRIBUTION}", ""]  # fmt: skip
        args.out.write_text("\n".join(text))


if __name__ == "__main__":
    main()
