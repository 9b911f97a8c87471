"""``llmux simulate``: what would each policy do with my models, costs and traffic?

Usage::

    llmux simulate TRACE... [-c llmux.yaml] [--switch-secs 10 | --wake-secs a=30,b=5
        | --costs-from http://127.0.0.1:3000] [--concurrency 16] [--window 1200]
        [--sample 0.25 --seed 1] [--policies fifo,cost_aware,time_slice,collate]
        [--memory-budget 80GiB --memory a=40GiB,b=30GiB --evictions cost_aware,lru]
        [--plot waits.png] [--json]

Reads the trace (Azure CSV, a CSV or JSON lines; see :mod:`llmux.sim.traces`),
simulates it once per policy with the real engine (:mod:`llmux.sim.simulator`)
and prints a table per policy. Costs come, in this order, from ``--wake-secs``,
``--switch-secs``, a running llmux's measured averages (``--costs-from``), the
config's ``wake_estimate_secs``, the trace's own header; a model with none is an
error. With a memory budget (``--memory-budget`` and ``--memory``, or the config's
``memory`` block) several models may be awake at once, and each policy runs once
per eviction rule (``--evictions``), so that cost-aware eviction and LRU are
compared on the same trace. Exits 2 on a bad argument or trace.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from ..config import ConfigError, load_config
from ..engine.residency import Budget, ModelMemory, never_fits, parse_size
from .compare import ALL_POLICIES, Costs, compare, measured_costs, policy_settings
from .report import plot, table
from .traces import AZURE_ATTRIBUTION, Trace, TraceError, load_trace

MAX_SECS = 1e6  # a switch longer than 11 days is a typo, not a cost
EVICTIONS = ("cost_aware", "lru")


def _per_model(text: str | None, option: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(
                f"expected MODEL=SECONDS, got {item!r}", param_hint=option
            ) from None
        if not sep or not 0 <= out[name.strip()] <= MAX_SECS:
            raise click.BadParameter(
                f"expected MODEL=SECONDS (0-{MAX_SECS:g}), got {item!r}", param_hint=option
            )
    return out


def _budget(trace: Trace, config, budget_text: str | None, sizes_text: str | None):
    """The memory budget to simulate: ``--memory-budget`` with each model's size from
    ``--memory`` or the config; else the config's; else None (one model awake)."""
    if budget_text is None:
        if sizes_text:
            raise click.UsageError("--memory needs --memory-budget")
        return config.budget() if config is not None and config.memory.budget else None
    try:
        total = parse_size(budget_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--memory-budget") from None
    sizes: dict[str, int] = {}
    for item in (sizes_text or "").split(","):
        if item.strip():
            name, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"expected M=SIZE, got {item!r}", param_hint="--memory")
            try:
                sizes[name.strip()] = parse_size(value.strip())
            except ValueError as exc:
                raise click.BadParameter(f"{item!r}: {exc}", param_hint="--memory") from None
    unknown = sorted(set(sizes) - set(trace.models))
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)} not in the trace (its models: {', '.join(trace.models)})",
            param_hint="--memory",
        )
    for m in trace.models:
        declared = config.models[m].memory if config is not None and m in config.models else None
        if m not in sizes and declared is not None:
            sizes[m] = declared
    missing = [m for m in trace.models if m not in sizes]
    if missing:
        raise click.UsageError(f"no memory size for {', '.join(missing)}: give --memory M=SIZE")
    budget = Budget(total, 0, {m: ModelMemory(sizes[m]) for m in trace.models})
    too_big = never_fits(budget)
    if too_big:
        raise click.UsageError("; ".join(f"{m} {why}" for m, why in too_big.items()))
    return budget


def _costs(trace: Trace, config, opts) -> Costs:
    models = trace.models
    wake: dict[str, float] = {}
    sleep = {m: c.get("sleep_secs", 0.0) for m, c in trace.costs.items()}
    for m, c in trace.costs.items():
        wake[m] = c.get("wake_secs", 0.0)
    if config is not None:
        wake.update(
            {m: c.wake_estimate_secs for m, c in config.models.items() if c.wake_estimate_secs}
        )
    if opts["costs_from"]:
        try:
            measured = measured_costs(opts["costs_from"], models)
        except (OSError, ValueError, KeyError) as exc:
            url = opts["costs_from"]
            raise click.ClickException(f"cannot read costs from {url}: {exc}") from None
        wake.update(measured)
        sleep = {m: 0.0 for m in models}  # a measured switch holds its drain and sleep
    if opts["switch_secs"] is not None:
        wake = {m: opts["switch_secs"] for m in models}
        sleep = {m: 0.0 for m in models}
    for option, costs in (("--wake-secs", wake), ("--sleep-secs", sleep)):
        given = _per_model(opts[option[2:].replace("-", "_")], option)
        unknown = sorted(set(given) - set(models))
        if unknown:
            raise click.BadParameter(
                f"{', '.join(unknown)} not in the trace (its models: {', '.join(models)})",
                param_hint=option,
            )
        costs.update(given)
    missing = [m for m in models if m not in wake]
    if missing:
        raise click.UsageError(
            f"no switch cost for {', '.join(missing)}: give --switch-secs, --wake-secs, "
            "--costs-from, or wake_estimate_secs in the config"
        )
    concurrency = {}
    for m in models:
        if opts["concurrency"] is not None:
            concurrency[m] = opts["concurrency"]
        elif config is not None and m in config.models and config.models[m].concurrency:
            concurrency[m] = config.models[m].concurrency
        else:
            concurrency[m] = 1
    return Costs(wake, sleep, concurrency)


@click.command()
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@click.option("-c", "--config", "config_file", metavar="PATH", help="llmux config: policy, models")
@click.option(
    "--switch-secs", type=click.FloatRange(0, MAX_SECS), help="every wake takes this (sleep 0)"
)
@click.option("--wake-secs", metavar="M=S,...", help="per-model wake seconds")
@click.option("--sleep-secs", metavar="M=S,...", help="per-model sleep seconds")
@click.option("--costs-from", metavar="URL", help="a running llmux: its measured switch costs")
@click.option("--concurrency", type=click.IntRange(1), help="requests a backend serves at once")
@click.option("--window", type=click.FloatRange(0, min_open=True), help="first SECS of the trace")
@click.option("--sample", type=click.FloatRange(0, 1, min_open=True), help="keep rows with prob P")
@click.option("--seed", type=int, default=1, show_default=True, help="of --sample")
@click.option("--patience", type=click.FloatRange(0, min_open=True), help="clients leave after")
@click.option("--max-wait-secs", type=click.FloatRange(0, min_open=True))
@click.option("--quantum-factor", type=click.FloatRange(0))
@click.option("--min-active-secs", type=click.FloatRange(0))
@click.option(
    "--policies",
    default=",".join(ALL_POLICIES),
    show_default=True,
    help="comma-separated: " + ", ".join(ALL_POLICIES),
)
@click.option(
    "--memory-budget", metavar="SIZE", help="several models awake within SIZE (e.g. 80GiB)"
)
@click.option("--memory", "memory_sizes", metavar="M=SIZE,...", help="each model's memory")
@click.option(
    "--evictions",
    metavar="RULES",
    help="with a memory budget, run each policy once per eviction rule: cost_aware, lru "
    "(default: cost_aware,lru)",
)
@click.option("--plot", "plot_path", metavar="PNG", help="write a plot (needs matplotlib)")
@click.option("--json", "as_json", is_flag=True, help="print JSON, one object per policy")
def simulate(
    traces, config_file, plot_path, as_json, policies, memory_budget, memory_sizes, evictions,
    **opts,
):  # fmt: skip
    """Simulate TRACE under each policy with the real engine, in simulated time."""
    names = [p.strip() for p in policies.split(",") if p.strip()]
    unknown = [p for p in names if p not in ALL_POLICIES]
    if unknown or not names:
        raise click.BadParameter(f"unknown policy {', '.join(unknown)}", param_hint="--policies")
    config = None
    if config_file:
        try:
            config = load_config(config_file)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(f"{exc.path}: {problem}", err=True)
            sys.exit(2)
    try:
        trace = load_trace(list(traces))
    except TraceError as exc:
        raise click.ClickException(str(exc)) from None
    if opts["window"] is not None:
        trace = trace.window(opts["window"])
    if opts["sample"] is not None:
        trace = trace.sample(opts["sample"], opts["seed"])
    if not trace.arrivals:
        raise click.ClickException("the trace holds no request (after --window/--sample)")
    costs = _costs(trace, config, opts)
    settings = policy_settings(
        config,
        max_wait_secs=opts["max_wait_secs"],
        quantum_factor=opts["quantum_factor"],
        min_active_secs=opts["min_active_secs"],
    )
    budget = _budget(trace, config, memory_budget, memory_sizes)
    if evictions and budget is None:
        raise click.UsageError("--evictions needs a memory budget: --memory-budget, or -c a config")
    rules = [r.strip() for r in (evictions or "cost_aware,lru").split(",") if r.strip()]
    if any(r not in EVICTIONS for r in rules) or not rules:
        expected = f"expected some of {', '.join(EVICTIONS)}"
        raise click.BadParameter(expected, param_hint="--evictions")
    runs = compare(
        trace,
        names,
        costs,
        config=config,
        settings=settings,
        patience_secs=opts["patience"],
        budget=budget,
        evictions=rules if budget is not None else (),
    )
    if as_json:
        for _, summary in runs:
            click.echo(json.dumps(dataclasses.asdict(summary)))
    else:
        click.echo(
            f"{trace.name}: {len(trace)} requests over {trace.duration:.0f} s, "
            f"models {', '.join(trace.models)} ({trace.source})"
        )
        click.echo(
            "costs: "
            + ", ".join(f"{m} wake {costs.wake_secs[m]:g}s" for m in trace.models)
            + f"; concurrency {', '.join(str(costs.concurrency[m]) for m in trace.models)}"
        )
        click.echo(table([s for _, s in runs]))
        for result, summary in runs:
            queued = sum(
                1 for r in result.requests if r.started_at and r.started_at > r.admitted_at
            )
            if queued > 0.1 * max(summary.served, 1):
                click.echo(
                    f"note: under {summary.policy}, {queued} of {summary.served} requests "
                    "queued in their backend after admission (its --concurrency is too small "
                    "for the traffic): that wait is not in these figures"
                )
        if any("AzureLLMInferenceTrace" in t for t in traces):
            click.echo(f"Trace: {AZURE_ATTRIBUTION}")
    if plot_path:
        try:
            plot([r for r, _ in runs], plot_path, title=f"{trace.name}, {len(trace)} requests")
        except (RuntimeError, OSError, ValueError) as exc:  # no matplotlib, a bad path or format
            raise click.ClickException(f"cannot write the plot {plot_path}: {exc}") from None
