"""GDSF against LRU through a real llmux: the residency benchmark's case, replayed.

Usage::

    python -m benchmarks.residency_replay [--seconds 1200] [--rate 0.5] [--seed 1]
        [--compress 10] [--fit 3]

One trace of ``benchmarks.residency`` (four models, Zipf popularity, ``zipf_bursty``),
time-compressed by ``--compress`` (arrivals, services and wake costs alike), through a
real llmux (gunicorn, gevent, hook subprocesses) with a memory budget for ``--fit``
of the four equal models, once with ``eviction: gdsf`` and once with ``lru``, then
through the simulator with the same costs. Each model's wake hook is ``sleep C/compress``
with C = 2, 10, 20 and 60 s for m0..m3 (m0 the most popular); its backend serves 8
streams at once. Waking time is llmux's own ``llmux_hook_duration_seconds`` for wake
hooks (uncompressed seconds); waits are its ``X-Llmux-Queue-Wait-Ms``.
"""

from __future__ import annotations

import argparse
import re

import requests

from llmux.engine.residency import Budget, ModelMemory
from llmux.sim.compare import Costs, compare, policy_settings
from llmux.sim.traces import zipf_bursty

from .harness import Harness
from .policy_replay import _drive, stream_body

COSTS = {"m0": 2.0, "m1": 10.0, "m2": 20.0, "m3": 60.0}
CONCURRENCY = 8
SIZE = "40GiB"


def waking(metrics: str, compress: float) -> tuple[int, float]:
    """(wake hooks run, their seconds uncompressed) from a /metrics text."""
    sums = re.findall(
        r'^llmux_hook_duration_seconds_sum\{[^}]*hook="wake"[^}]*\} (\S+)', metrics, re.M
    )
    counts = re.findall(
        r'^llmux_hook_duration_seconds_count\{[^}]*hook="wake"[^}]*\} (\S+)', metrics, re.M
    )
    return int(sum(float(c) for c in counts)), sum(float(s) for s in sums) * compress


def measure(h: Harness, trace, rule: str, args) -> dict:
    models = {
        m: {
            "port": h.backend(slots=CONCURRENCY).port,
            "wake": f"sleep {COSTS[m] / args.compress:.4f}",
            "memory": SIZE,
            "concurrency": CONCURRENCY,
        }
        for m in trace.models
    }
    extra = {
        "memory": {"budget": f"{40 * args.fit}GiB", "eviction": rule},
        "policy": {"policy_type": "cost_aware", "max_wait_secs": 120.0 / args.compress},
        "proxy": {"idle_timeout": 600, "header_timeout": 600},
    }
    llmux = h.llmux(models, extra=extra, name=f"llmux-{rule}")
    url = f"http://127.0.0.1:{llmux.port}"
    waits, failed = _drive(url, trace, stream_body)
    wakes, secs = waking(requests.get(url + "/metrics", timeout=10).text, args.compress)
    h.stop(llmux)
    mean = sum(waits) / len(waits) * args.compress if waits else float("nan")
    return {"wakes": wakes, "waking": secs, "mean": mean, "failed": failed}


def simulate(trace, rule: str, args) -> dict:
    costs = Costs(
        {m: COSTS[m] / args.compress for m in trace.models},
        concurrency={m: CONCURRENCY for m in trace.models},
    )
    gib = 1024**3
    budget = Budget(40 * args.fit * gib, 0, {m: ModelMemory(40 * gib) for m in trace.models})
    settings = policy_settings(max_wait_secs=120.0 / args.compress)
    ((result, s),) = compare(
        trace, ["cost_aware"], costs, settings=settings, budget=budget, evictions=(rule,)
    )
    return {"wakes": s.wakes, "waking": s.wake_secs * args.compress, "mean": s.mean * args.compress}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1200.0)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compress", type=float, default=10.0)
    parser.add_argument("--fit", type=int, default=3, choices=(1, 2, 3))
    args = parser.parse_args()
    trace = zipf_bursty(seconds=args.seconds, models=4, rate=args.rate, seed=args.seed)
    trace = trace.compress(args.compress)
    print(f"{trace.name}: {len(trace)} requests, {trace.source}; compressed x{args.compress:g}; "
          f"room for {args.fit} of 4; wakes m0..m3 = 2/10/20/60 s; cost_aware; "
          "seconds uncompressed")  # fmt: skip
    print("| eviction | | wakes | waking s | mean wait s | failed |")
    print("|---|---|---|---|---|---|")
    rows = {}
    with Harness() as h:
        for rule in ("gdsf", "lru"):
            rows[rule] = (simulate(trace, rule, args), measure(h, trace, rule, args))
    for rule, (sim, real) in rows.items():
        print(f"| {rule} | simulated | {sim['wakes']} | {sim['waking']:.0f} | "
              f"{sim['mean']:.1f} | - |")  # fmt: skip
        print(f"| {rule} | measured | {real['wakes']} | {real['waking']:.0f} | "
              f"{real['mean']:.1f} | {real['failed']} |")  # fmt: skip
    for source, i in (("simulated", 0), ("measured", 1)):
        ratio = rows["gdsf"][i]["waking"] / max(rows["lru"][i]["waking"], 1e-9)
        print(f"{source}: GDSF / LRU waking time = {ratio:.2f}")


if __name__ == "__main__":
    main()
