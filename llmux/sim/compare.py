"""Run one trace under several policies with the same costs: what ``llmux simulate`` does.

Usage::

    runs = compare(trace, ["fifo", "cost_aware"], Costs(wake_secs={"a": 10, "b": 10}))
    for result, summary in runs: ...

Policies are built as the server builds them (:func:`~llmux.engine.policies.make_policy`,
from a config's ``policy`` section and models when one is given), plus the
comparison baselines of :mod:`llmux.sim.baselines`.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

from llmux.engine.policies import POLICIES, make_policy
from llmux.engine.switcher import SwitchSettings

from .baselines import BASELINES
from .report import Summary, Yardstick, summarize
from .simulator import Backends, Result, Simulation
from .traces import Trace

ALL_POLICIES = (*POLICIES, *BASELINES)


@dataclass(frozen=True)
class Costs:
    """Per model: ``wake_secs`` and ``sleep_secs`` of its hooks, ``concurrency`` of its
    backend (default 1). A switch a -> b costs the drain of a, plus
    ``sleep_secs[a] + wake_secs[b]``."""

    wake_secs: Mapping[str, float]
    sleep_secs: Mapping[str, float] = field(default_factory=dict)
    concurrency: Mapping[str, int] = field(default_factory=dict)

    def yardstick(self, models: Sequence[str], policy) -> Yardstick:
        cost = {
            (a, b): self.sleep_secs.get(a, 0.0) + self.wake_secs.get(b, 0.0)
            for a in models
            for b in models
            if a != b
        }
        return Yardstick(cost, policy.max_wait_secs, policy.quantum_factor)


def measured_costs(url: str, models: Sequence[str], timeout: float = 10.0) -> dict[str, float]:
    """Model -> the mean measured cost of switches into it (seconds, drain and sleep
    included), read from a running llmux's ``GET {url}/llmux/status``. Raises
    OSError (urllib's URLError) when it does not answer, ValueError on an answer
    that is not llmux's status."""
    with urllib.request.urlopen(url.rstrip("/") + "/llmux/status", timeout=timeout) as resp:
        status = json.load(resp)
    into: dict[str, list[float]] = {}
    try:
        for row in status.get("switch_costs", []):
            into.setdefault(str(row["to"]), []).append(float(row["ema_secs"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ValueError("not an llmux /llmux/status answer (switch_costs)") from None
    return {m: sum(v) / len(v) for m, v in into.items() if m in models}


def policy_settings(config=None, **overrides):
    """The ``policy`` section to simulate: the config's (or the defaults), with
    ``overrides`` (max_wait_secs, quantum_factor, min_active_secs) that are not None."""
    if config is not None:
        base = config.policy
    else:
        from llmux.config import PolicyConfig

        base = PolicyConfig()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def build_policy(name: str, settings, models: Mapping):
    """The policy ``name`` with ``settings`` (a ``policy`` section) and per-model
    ``models`` (name -> weight/concurrency/wake_estimate_secs)."""
    if name in BASELINES:
        return BASELINES[name]()
    return make_policy(replace(settings, policy_type=name), models)


def model_settings(trace: Trace, costs: Costs, config=None) -> dict:
    """Per-model policy settings: the config's for the models it defines, else neutral
    ones with the simulated ``concurrency``."""
    out = {}
    for m in trace.models:
        if config is not None and m in config.models:
            out[m] = config.models[m]
        else:
            out[m] = SimpleNamespace(
                weight=1.0, concurrency=costs.concurrency.get(m, 1), wake_estimate_secs=None
            )
    return out


def compare(
    trace: Trace,
    policies: Sequence[str],
    costs: Costs,
    *,
    config=None,
    settings=None,
    patience_secs: float | None = None,
    budget=None,
    evictions: Sequence[str] = (),
) -> list[tuple[Result, Summary]]:
    """Simulate ``trace`` once per policy (each from the same start: nothing awake);
    ``settings``: the policy section (default :func:`policy_settings` of ``config``).
    With a memory ``budget`` (:class:`~llmux.engine.residency.Budget`; default the
    config's, if it has one), several models may be awake at once, and each policy
    runs once per eviction rule of ``evictions`` (default the budget's own), named
    ``policy/rule``."""
    settings = settings if settings is not None else policy_settings(config)
    models = model_settings(trace, costs, config)
    yard = costs.yardstick(trace.models, settings)
    if patience_secs is None:  # clients give up where llmux would time them out (504)
        patience_secs = settings.request_timeout_secs
    backends = Backends(costs.wake_secs, costs.sleep_secs, costs.concurrency, patience_secs)
    switch = SwitchSettings.from_policy(settings)
    runs = []
    yardstick = build_policy("cost_aware", settings, models)
    if budget is None and config is not None and config.memory.budget is not None:
        budget = config.budget()
    rules = list(evictions or ([budget.eviction] if budget is not None else [None]))
    for name in policies:
        for rule in rules:
            policy = build_policy(name, settings, models)
            rule_budget = None if budget is None else replace(budget, eviction=rule)
            label = name if budget is None else f"{name}/{rule}"
            sim = Simulation(
                trace, policy, backends, switch, yardstick=yardstick, budget=rule_budget, name=label
            )
            result = sim.simulate()
            runs.append((result, summarize(result, yard)))
    return runs
