"""Cost-aware eviction against LRU through a real llmux: the residency benchmark's case, replayed.

Usage::

    python -m benchmarks.residency_replay [--seconds 1200] [--rate 0.5] [--seed 1]
        [--compress 10] [--fit 3] [--policy cost_aware]
    python -m benchmarks.residency_replay --newcomer [--policy fifo]

One trace of ``benchmarks.residency`` (four models, Zipf popularity, ``zipf_bursty``),
time-compressed by ``--compress`` (arrivals, services and wake costs alike), through a
real llmux (gunicorn, gevent, hook subprocesses) with a memory budget for ``--fit``
of the four equal models, once with ``eviction: cost_aware`` and once with ``lru``, then
through the simulator with the same costs. Each model's wake hook is ``sleep C/compress``
with C = 2, 10, 20 and 60 s for m0..m3 (m0 the most popular); its backend serves 8
streams at once. Waking time is llmux's own ``llmux_hook_duration_seconds`` for wake
hooks (uncompressed seconds); waits are its ``X-Llmux-Queue-Wait-Ms``.
``--newcomer``: ``poisson-3models`` instead, uncompressed, as ``benchmarks.residency``
runs it (its own wake and sleep costs, models of 10, 12 and 6 GiB in 24 GiB).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

import requests

from llmux.engine.residency import Budget, ModelMemory
from llmux.sim.compare import Costs, compare, policy_settings
from llmux.sim.traces import Trace, load_trace, zipf_bursty

from .harness import Harness
from .policy_replay import _drive, stream_body
from .residency import NEWCOMER_BUDGET, NEWCOMER_SIZES, NEWCOMER_TRACE, SIZE, own_costs

COSTS = {"m0": 2.0, "m1": 10.0, "m2": 20.0, "m3": 60.0}
CONCURRENCY = 8


@dataclass
class Case:
    """A trace and the models it runs on; costs in (compressed) seconds, sizes in bytes."""

    trace: Trace
    wake: dict[str, float]
    sleep: dict[str, float]
    sizes: dict[str, int]
    budget: int
    concurrency: int
    policy: str
    compress: float


def waking(metrics: str, compress: float) -> tuple[int, float]:
    """(wake hooks run, their seconds uncompressed) from a /metrics text."""
    sums = re.findall(
        r'^llmux_hook_duration_seconds_sum\{[^}]*hook="wake"[^}]*\} (\S+)', metrics, re.M
    )
    counts = re.findall(
        r'^llmux_hook_duration_seconds_count\{[^}]*hook="wake"[^}]*\} (\S+)', metrics, re.M
    )
    return int(sum(float(c) for c in counts)), sum(float(s) for s in sums) * compress


def measure(h: Harness, case: Case, rule: str) -> dict:
    models = {
        m: {
            "port": h.backend(slots=case.concurrency).port,
            "wake": f"sleep {case.wake[m]:.4f}",
            "sleep": f"sleep {case.sleep[m]:.4f}" if case.sleep[m] else "true",
            "memory": case.sizes[m],
            "concurrency": case.concurrency,
        }
        for m in case.trace.models
    }
    extra = {
        "memory": {"budget": case.budget, "eviction": rule},
        "policy": {"policy_type": case.policy, "max_wait_secs": 120.0 / case.compress},
        "proxy": {"idle_timeout": 600, "header_timeout": 600},
    }
    llmux = h.llmux(models, extra=extra, name=f"llmux-{rule}")
    url = f"http://127.0.0.1:{llmux.port}"
    waits, failed = _drive(url, case.trace, stream_body)
    wakes, secs = waking(requests.get(url + "/metrics", timeout=10).text, case.compress)
    h.stop(llmux)
    mean = sum(waits) / len(waits) * case.compress if waits else float("nan")
    return {"wakes": wakes, "waking": secs, "mean": mean, "failed": failed}


def simulate(case: Case, rule: str) -> dict:
    models = case.trace.models
    costs = Costs(case.wake, case.sleep, concurrency={m: case.concurrency for m in models})
    budget = Budget(case.budget, 0, {m: ModelMemory(case.sizes[m]) for m in models})
    settings = policy_settings(max_wait_secs=120.0 / case.compress)
    ((result, s),) = compare(
        case.trace, [case.policy], costs, settings=settings, budget=budget, evictions=(rule,)
    )
    c = case.compress
    return {"wakes": s.wakes, "waking": s.wake_secs * c, "mean": s.mean * c}


def zipf_case(args) -> Case:
    trace = zipf_bursty(seconds=args.seconds, models=4, rate=args.rate, seed=args.seed)
    trace = trace.compress(args.compress)
    print(f"{trace.name}: {len(trace)} requests, {trace.source}; "
          f"room for {args.fit} of 4; wakes m0..m3 = 2/10/20/60 s; {args.policy}; "
          "seconds uncompressed")  # fmt: skip
    return Case(
        trace,
        wake={m: COSTS[m] / args.compress for m in trace.models},
        sleep={m: 0.0 for m in trace.models},
        sizes={m: SIZE for m in trace.models},
        budget=args.fit * SIZE,
        concurrency=CONCURRENCY,
        policy=args.policy,
        compress=args.compress,
    )


def newcomer_case(args) -> Case:
    """``poisson-3models`` as a newcomer ran it: its own costs, 10/12/6 GiB in 24 GiB."""
    trace = load_trace(NEWCOMER_TRACE)
    wake, sleep = own_costs(trace)
    print(f"{trace.name}: {len(trace)} requests, its own wake and sleep costs; "
          f"llama/qwen/mistral = 10/12/6 GiB in 24 GiB; one request at a time; "
          f"{args.policy}")  # fmt: skip
    return Case(
        trace,
        wake=wake,
        sleep=sleep,
        sizes=NEWCOMER_SIZES,
        budget=NEWCOMER_BUDGET,
        concurrency=1,
        policy=args.policy,
        compress=1.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1200.0)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compress", type=float, default=10.0)
    parser.add_argument("--fit", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--policy", default="cost_aware", choices=("fifo", "cost_aware"))
    parser.add_argument(
        "--newcomer", action="store_true", help="poisson-3models instead (see newcomer_case)"
    )
    args = parser.parse_args()
    case = newcomer_case(args) if args.newcomer else zipf_case(args)
    print("| eviction | | wakes | waking s | mean wait s | failed |")
    print("|---|---|---|---|---|---|")
    rows = {}
    with Harness() as h:
        for rule in ("cost_aware", "lru"):
            rows[rule] = (simulate(case, rule), measure(h, case, rule))
    for rule, (sim, real) in rows.items():
        print(f"| {rule} | simulated | {sim['wakes']} | {sim['waking']:.0f} | "
              f"{sim['mean']:.1f} | - |")  # fmt: skip
        print(f"| {rule} | measured | {real['wakes']} | {real['waking']:.0f} | "
              f"{real['mean']:.1f} | {real['failed']} |")  # fmt: skip
    for source, i in (("simulated", 0), ("measured", 1)):
        ratio = rows["cost_aware"][i]["waking"] / max(rows["lru"][i]["waking"], 1e-9)
        print(f"{source}: cost-aware / LRU waking time = {ratio:.2f}")


if __name__ == "__main__":
    main()
