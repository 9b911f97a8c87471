"""The scheduling report: every policy on every trace, in simulation and through real llmux.

Usage::

    python -m benchmarks.scheduling [--quick | --replay | --real] [--out docs/scheduling.md]

Simulated (``llmux simulate``'s engine): the Azure 2023 code+conv trace (first
20 minutes; samples p = 0.10, 0.25, 0.35, seeds 1-5) at switch costs of 2, 5,
10, 20 and 30 s; a generated agent ping-pong trace and a bursty 8-model Zipf
trace (seeds 1-5); the two shipped traces. Cells are medians over the seeds.
Backends serve 16 requests at once. ``--replay`` runs instead the replays
through a real llmux (``benchmarks.policy_replay``; about 15 minutes), and
``--real`` the shipped agent trace through two real llama.cpp servers on CPU
(``conf/real-cpu.yaml``; needs ``conf/hooks/llama-cpp/install.sh``). Each fills
its own generated block of the Markdown file, with plots next to it; without
the Azure files those rows say so.
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
from llmux.sim.report import Summary, plot
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


def targets(results: dict[tuple[str, float], dict[str, dict]], micros: float) -> list[str]:
    """The scheduling issue's targets, each with what was measured."""
    rows = ["| target | measured | met |", "|---|---|---|"]

    def row(what: str, got: str, ok: bool) -> None:
        rows.append(f"| {what} | {got} | {'yes' if ok else '**no**'} |")

    for cost, bound in ((10.0, (0.1, 0.15, 0.3)), (30.0, (0.05, None, None))):
        by = results.get(("azure p=0.25", cost))
        if by is None:
            row(f"Azure two-model replay, C = {cost:g} s", "Azure trace absent", False)
            continue
        f, c = by["fifo"], by["cost_aware"]
        r = c["mean"] / f["mean"]
        row(f"Azure, C = {cost:g} s: mean ≤ {bound[0]:g}× FIFO's", f"{r:.2f}×", r <= bound[0])
        if bound[1] is not None:
            r = c["p99"] / f["p99"]
            row(f"Azure, C = {cost:g} s: p99 ≤ {bound[1]:g}× FIFO's", f"{r:.2f}×", r <= bound[1])
            r = c["switches"] / f["switches"]
            row(
                f"Azure, C = {cost:g} s: switches ≤ {bound[2]:g}× FIFO's",
                f"{r:.2f}×",
                r <= bound[2],
            )
            n = c["past_bound"]
            row(f"Azure, C = {cost:g} s: no request past the bound + one switch", f"{n:g}", n == 0)
    for (name, cost), by in results.items():
        if name != "azure p=0.25" or cost not in (2.0, 5.0, 10.0, 20.0):
            continue
        c, t = by["cost_aware"], by["time_slice"]
        ok = c["serving_fraction"] > t["serving_fraction"] and c["max"] < t["max"]
        got = (f"serving {c['serving_fraction']:.0%} vs {t['serving_fraction']:.0%}, "
               f"max {c['max']:.0f} s vs {t['max']:.0f} s")  # fmt: skip
        row(f"Azure, C = {cost:g} s: beats time slice (serving, max wait)", got, ok)
    worse = [
        f"{name} C={cost:g} ({k})"
        for (name, cost), by in results.items()
        for k in ("mean", "p99")
        if by["cost_aware"][k] > by["fifo"][k] * 1.0001
    ]
    row("never worse than FIFO on mean or p99 (every trace and cost, medians)",
        "; ".join(worse) or "never worse", not worse)  # fmt: skip
    row("a decision < 1 ms (50 models, 10,000 queued)", f"{micros:.0f} µs", micros < 1000)
    return rows


def replace_block(text: str, name: str, body: list[str]) -> str:
    """``text`` with the lines between ``<!-- name -->`` and ``<!-- /name -->`` replaced."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in text:
        return text + "\n".join(["", start, *body, end, ""])
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + "\n".join([start, *body, end]) + tail


def plots(directory: Path) -> list[str]:
    """One plot per trace family of note (seed 1, C = 10 s); their file names."""
    names = []
    fams = families(quick=True)
    for key, file in (
        ("azure p=0.25", "scheduling-azure.png"),
        ("ping-pong", "scheduling-pingpong.png"),
    ):
        if key not in fams:
            continue
        trace = fams[key][0](1)
        costs = Costs({m: 10.0 for m in trace.models}, concurrency={m: K for m in trace.models})
        runs = compare(trace, ALL, costs)
        plot([r for r, _ in runs], str(directory / file), title=f"{key}, seed 1, C = 10 s")
        names.append(file)
    return names


REPLAYS = (
    # (label, trace args, compress, switch secs)
    ("Azure p=0.25, 1200 s", {"azure": True, "sample": 0.25}, 10.0, 10.0),
    ("Azure p=0.25, 1200 s", {"azure": True, "sample": 0.25}, 10.0, 30.0),
    ("agent-2models", {"traces": ["benchmarks/traces/agent-2models.jsonl"]}, 1.0, 2.0),
    ("poisson-3models", {"traces": ["benchmarks/traces/poisson-3models.jsonl"]}, 1.0, 2.0),
)


def replays() -> list[str]:
    """Every REPLAYS entry through a real llmux per policy, beside the simulator."""
    from . import policy_replay as pr
    from .harness import Harness

    rows = [
        "| trace | C s | x | policy | switches sim / real | mean wait s sim / real | "
        "p99 s sim / real | failed | agree |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, trace_args, compress, cost in REPLAYS:
        defaults = dict(
            azure=False, traces=[], window=1200.0, sample=None, seed=1, compress=compress,
            switch_secs=cost, max_wait_secs=120.0, concurrency=K,
        )  # fmt: skip
        args = argparse.Namespace(**{**defaults, **trace_args})
        if args.azure and azure_two_models() is None:
            rows.append(f"| {label} | {cost:g} | | | Azure trace absent | | | | |")
            continue
        trace = pr.load(args)
        with Harness() as h:
            for policy in ("fifo", "cost_aware"):
                sim, real = pr.simulate(trace, policy, args), pr.measure(h, trace, policy, args)
                ok = "yes" if pr.agree(sim, real) else "**no**"
                rows.append(
                    f"| {label} | {cost:g} | {compress:g} | {policy} | {sim.switches} / "
                    f"{real.switches} | {sim.mean:.1f} / {real.mean:.1f} | {sim.p99:.1f} / "
                    f"{real.p99:.1f} | {real.failed} | {ok} |"
                )
                print(rows[-1], flush=True)
    return rows


def real_runs() -> list[str]:
    """agent-2models through the two real llama.cpp servers (conf/real-cpu.yaml), per
    policy; a note instead when they are not built."""
    import os
    import tempfile

    from . import policy_replay as pr

    real = Path(os.environ.get("LLMUX_REAL_DIR", Path.home() / ".cache" / "llmux-real"))
    if not (real / "model.path").exists():
        return ["(not run: the llama.cpp servers are not built; conf/hooks/llama-cpp/install.sh)"]
    trace = load_trace([ROOT / "benchmarks" / "traces" / "agent-2models.jsonl"])
    rows = ["| policy | requests | failed | switches | mean wait s | p50 s | p99 s | max s |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="llmux-real-policies-"))
    for policy in ("fifo", "cost_aware"):
        f = pr.measure_real(trace, policy, work / policy)
        rows.append(f"| {policy} | {f.requests} | {f.failed} | {f.switches} | {f.mean:.1f} | "
                    f"{f.p50:.1f} | {f.p99:.1f} | {f.max:.1f} |")  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three seeds, two costs")
    parser.add_argument("--out", type=Path, help="fill the generated blocks of this Markdown file")
    parser.add_argument("--replay", action="store_true", help="only the real-server replays")
    parser.add_argument("--real", action="store_true", help="only the real llama.cpp runs")
    args = parser.parse_args()
    if args.replay:
        started = time.monotonic()
        rows = replays()
        if args.out:
            took = time.monotonic() - started
            body = [f"Written by `python -m benchmarks.scheduling --replay --out {args.out}` "
                    f"in {took / 60:.1f} min.", "", *rows]  # fmt: skip
            args.out.write_text(replace_block(args.out.read_text(), "replayed", body))
        return
    if args.real:
        rows = real_runs()
        if args.out:
            body = [f"Written by `python -m benchmarks.scheduling --real --out {args.out}`.", "",
                    *rows]  # fmt: skip
            args.out.write_text(replace_block(args.out.read_text(), "real", body))
        return
    costs = (2.0, 10.0) if args.quick else (2.0, 5.0, 10.0, 20.0, 30.0)
    started = time.monotonic()
    out: list[str] = []
    verdicts: list[str] = []
    results: dict[tuple[str, float], dict[str, dict]] = {}
    for name, (make, seeds) in families(args.quick).items():
        for cost in costs:
            cells = run_family(make, seeds, cost)
            by = results[(name, cost)] = {c.policy: c.values for c in cells}
            n = f"{len(seeds)} seeds" if len(seeds) > 1 else "one trace"
            out += [f"#### {name}, C = {cost:g} s ({n}, medians)", ""]
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
    if not args.out:
        return
    head = ["| trace | C s | mean / FIFO | p99 / FIFO | switches / FIFO | worse than FIFO |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    figures = plots(args.out.parent)
    took = time.monotonic() - started
    body = [
        f"Written by `python -m benchmarks.scheduling --out {args.out}` in {took:.0f} s.", "",
        "### Targets", "", *targets(results, micros), "",
        "### cost_aware against FIFO (ratios of medians)", "", *head, *verdicts, "",
        *[f"![{f}]({f})" for f in figures], "",
        "### Every run", "", *out,
        f"Trace: {AZURE_ATTRIBUTION}",
    ]  # fmt: skip
    text = args.out.read_text() if args.out.exists() else "# Scheduling\n"
    args.out.write_text(replace_block(text, "simulated", body))


if __name__ == "__main__":
    main()
