"""Write the two shipped traces (seeded, so the files are reproducible).

Usage::

    python benchmarks/traces/make_traces.py

agent-2models: four agents, each alternating a short planner call and a long
coder call with think time between, the way a coding agent drives two models.
poisson-3models: three models with Poisson arrivals at 0.5, 0.3 and 0.2
requests per second and answer lengths from 20 to 200 tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
TOKEN_MS = 20


def agent_two_models(seconds=60.0, agents=4, seed=7) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(agents):
        t = rng.uniform(0, 3)
        while t < seconds:
            for model, lo, hi in (("planner", 20, 60), ("coder", 100, 250)):
                tokens = rng.randint(lo, hi)
                rows.append({"at": round(t, 3), "model": model, "tokens": tokens})
                t += tokens * TOKEN_MS / 1000 + rng.uniform(0.3, 2.0)  # answer, then think
    return sorted(rows, key=lambda r: r["at"])


def poisson_three_models(seconds=90.0, seed=11) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for model, rate in (("llama", 0.5), ("qwen", 0.3), ("mistral", 0.2)):
        t = rng.expovariate(rate)
        while t < seconds:
            rows.append({"at": round(t, 3), "model": model, "tokens": rng.randint(20, 200)})
            t += rng.expovariate(rate)
    return sorted(rows, key=lambda r: r["at"])


def write(name: str, costs: dict, rows: list[dict]) -> None:
    head = {"trace": name, "token_ms": TOKEN_MS, "models": costs}
    lines = [json.dumps(head)] + [json.dumps(r) for r in rows]
    (HERE / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write(
        "agent-2models",
        {
            "planner": {"wake_secs": 1.5, "sleep_secs": 0.5},
            "coder": {"wake_secs": 3.0, "sleep_secs": 1.0},
        },
        agent_two_models(),
    )
    write(
        "poisson-3models",
        {
            "llama": {"wake_secs": 2.0, "sleep_secs": 0.5},
            "qwen": {"wake_secs": 3.0, "sleep_secs": 0.5},
            "mistral": {"wake_secs": 1.0, "sleep_secs": 0.5},
        },
        poisson_three_models(),
    )
