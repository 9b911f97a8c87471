"""Cost-aware eviction against LRU, in simulation: seconds spent waking models.

Usage::

    python -m benchmarks.residency [--quick]

Runs ``llmux simulate``'s engine (the real switcher on simulated time) with a memory
budget, once per policy (fifo, cost_aware) and eviction rule (cost_aware, lru), on:

- the issue's trace: four models with Zipf popularity (``zipf_bursty``, one hour,
  seeds 1-5, 0.2, 0.5 and 1.5 requests/s) and unequal wake costs, m0..m3 waking in
  2, 60, 10 and 20 s, each of the four orders of those costs over the popularity
  ranks; all models the same size, with room for three of them, then for two;
- every shipped trace (``benchmarks/traces``, the generated agent and 8-model Zipf
  traces, and the Azure 2023 code+conversation trace when ``../shared/traces`` has
  it), with room for all models but one, wake costs rising with the model's rank
  (2 s, then 60 s, then 10 s, 20 s, ... in turn);
- ``poisson-3models`` as a newcomer ran it: its own wake costs (1-3 s), models of
  10, 12 and 6 GiB in 24 GiB, backends serving one request at a time, then eight.

Prints, per case, the waking seconds of cost-aware eviction as a ratio to LRU's in the same runs
(total, and the worst single run), and the mean waits. ``--quick``: one seed, one
rate (the ``bench`` tox env's smoke run).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from llmux.engine.residency import Budget, ModelMemory
from llmux.sim.compare import Costs, compare, policy_settings
from llmux.sim.traces import (
    AZURE_ATTRIBUTION,
    Trace,
    TraceError,
    azure_dir,
    azure_two_models,
    load_trace,
    ping_pong,
    zipf_bursty,
)

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024**3
SIZE = 40 * GiB
COSTS = (2.0, 60.0, 10.0, 20.0)
POLICIES = ("fifo", "cost_aware")
CONCURRENCY = 8
# poisson-3models as a newcomer ran it (also benchmarks.residency_replay --newcomer)
NEWCOMER_TRACE = ROOT / "benchmarks" / "traces" / "poisson-3models.jsonl"
NEWCOMER_SIZES = {"llama": 10 * GiB, "qwen": 12 * GiB, "mistral": 6 * GiB}
NEWCOMER_BUDGET = 24 * GiB


def own_costs(trace: Trace) -> tuple[dict[str, float], dict[str, float]]:
    """The wake and sleep seconds a trace file declares for its models."""
    wake = {m: c["wake_secs"] for m, c in trace.costs.items()}
    return wake, {m: c.get("sleep_secs", 0.0) for m, c in trace.costs.items()}


def room_for(fit: int, models) -> Budget:
    """A budget with room for ``fit`` of ``models``, each of :data:`SIZE`."""
    return Budget(fit * SIZE, 0, {m: ModelMemory(SIZE) for m in models})


def run(
    trace: Trace,
    wake: dict[str, float],
    budget: Budget,
    *,
    sleep: dict[str, float] | None = None,
    concurrency: int = CONCURRENCY,
) -> dict[str, dict[str, list]]:
    """Per policy and rule: the (waking seconds, mean wait) of one run of ``trace``."""
    sleep = sleep if sleep is not None else {m: 1.0 for m in wake}
    costs = Costs(wake, sleep, {m: concurrency for m in wake})
    out: dict[str, dict[str, list]] = {}
    runs = compare(
        trace,
        POLICIES,
        costs,
        settings=policy_settings(max_wait_secs=120.0),
        budget=budget,
        evictions=("cost_aware", "lru"),
    )
    for _, summary in runs:
        policy, rule = summary.policy.split("/")
        out.setdefault(policy, {}).setdefault(rule, []).append((summary.wake_secs, summary.mean))
    return out


def merge(into: dict, part: dict) -> None:
    for policy, rules in part.items():
        for rule, values in rules.items():
            into.setdefault(policy, {}).setdefault(rule, []).extend(values)


def row(label: str, results: dict) -> list[str]:
    cells = [label]
    for policy in POLICIES:
        cost, lru = results[policy]["cost_aware"], results[policy]["lru"]
        total = sum(w for w, _ in cost) / max(sum(w for w, _ in lru), 1e-9)
        worst = max(g[0] / max(l_[0], 1e-9) for g, l_ in zip(cost, lru, strict=True))
        mean_g = sum(m or 0 for _, m in cost) / len(cost)
        mean_l = sum(m or 0 for _, m in lru) / len(lru)
        cells += [f"{total:.2f}", f"{worst:.2f}", f"{mean_g:.1f} / {mean_l:.1f}"]
    return cells


def costs_for(models) -> dict[str, float]:
    return {m: COSTS[i % len(COSTS)] for i, m in enumerate(models)}


def shipped() -> list[tuple[str, Trace | str]]:
    """The shipped traces, or why one is missing."""
    out: list[tuple[str, Trace | str]] = []
    for path in sorted((ROOT / "benchmarks" / "traces").glob("*.jsonl")):
        out.append((path.name, load_trace(path)))
    out.append(("agent ping-pong (generated, seed 1)", ping_pong(seconds=1200, seed=1)))
    out.append(("8-model Zipf (generated, seed 1)", zipf_bursty(seconds=1200, models=8, seed=1)))
    try:
        azure = azure_two_models()
    except (TraceError, OSError) as exc:
        azure = f"skipped: {exc}"
    if azure is None:
        azure = f"skipped: the Azure 2023 files are not in {azure_dir()}"
    if isinstance(azure, Trace):
        azure = azure.window(1200)
    out.append(("Azure 2023 code+conv, first 20 min", azure))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, one rate")
    args = parser.parse_args()
    seeds = (1,) if args.quick else (1, 2, 3, 4, 5)
    rates = (0.5,) if args.quick else (0.2, 0.5, 1.5)
    orders = [COSTS] if args.quick else sorted(set(itertools.permutations(COSTS)))[::6]
    head = ["case"] + [
        f"{p} {what}"
        for p in POLICIES
        for what in ("cost-aware/LRU waking", "worst run", "mean wait s")
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    models = ("m0", "m1", "m2", "m3")
    for fit in (3, 2):
        for order in orders:
            wake = dict(zip(models, order, strict=True))
            results: dict = {}
            for seed, rate in itertools.product(seeds, rates):
                trace = zipf_bursty(seconds=3600, models=4, rate=rate, seed=seed)
                merge(results, run(trace, wake, room_for(fit, trace.models)))
            label = f"4-model Zipf, room for {fit}, wakes {'/'.join(f'{c:g}' for c in order)} s"
            print("| " + " | ".join(row(label, results)) + " |")
    for name, trace in [] if args.quick else shipped():
        if isinstance(trace, str):
            print(f"| {name}: {trace} |" + " |" * (len(head) - 1))
            continue
        fit = max(len(trace.models) - 1, 1)
        results = run(trace, costs_for(trace.models), room_for(fit, trace.models))
        label = f"{name}, {len(trace.models)} models, room for {fit}"
        print("| " + " | ".join(row(label, results)) + " |")
    newcomer = load_trace(NEWCOMER_TRACE)
    wake, sleep = own_costs(newcomer)
    budget = Budget(NEWCOMER_BUDGET, 0, {m: ModelMemory(s) for m, s in NEWCOMER_SIZES.items()})
    for concurrency in (1,) if args.quick else (1, 8):
        results = run(newcomer, wake, budget, sleep=sleep, concurrency=concurrency)
        label = f"poisson-3models, own costs, 10/12/6 GiB in 24 GiB, concurrency {concurrency}"
        print("| " + " | ".join(row(label, results)) + " |")
    if not args.quick:
        print(f"\nAzure trace: {AZURE_ATTRIBUTION}")


if __name__ == "__main__":
    main()
