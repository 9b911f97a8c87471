"""docs/performance.md and its plot, from the scenarios' results.

Usage::

    text = markdown(results, replays, machine, command)
    plot(results, Path("docs/performance.png"))
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from .stats import ms, pct


def machine() -> dict[str, str]:
    import gevent
    import gunicorn
    import psutil

    import llmux

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "llmux": llmux.__version__,
        "gunicorn / gevent": f"{gunicorn.__version__} / {gevent.__version__}",
    }
    for name, cmd in (("nginx", ["nginx", "-v"]), ("wrk", ["wrk", "-v"])):
        if shutil.which(cmd[0]):
            out = subprocess.run(cmd, capture_output=True, text=True)
            info[name] = (out.stderr or out.stdout).strip().splitlines()[0]
    from .harness import LITELLM_VENV

    pip = LITELLM_VENV / "bin" / "pip"
    if pip.exists():
        out = subprocess.run([str(pip), "show", "litellm"], capture_output=True, text=True)
        version = next(
            (x.split()[-1] for x in out.stdout.splitlines() if x.startswith("Version")), "?"
        )
        info["LiteLLM proxy"] = f"{version} (own virtualenv, 1 worker)"
    return info


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def _table(columns, rows) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def markdown(results, replays, info: dict, command: str, seconds: float, plot_name: str) -> str:
    out = [
        "# Performance",
        "",
        f"Written by `{command}` in {seconds / 60:.1f} min; every figure below comes from that one",
        "run on one machine, with llmux, the peers, the backend and the load generators sharing",
        "its cores. Compare ratios within the run, not absolute numbers across machines.",
        "",
        "## Targets",
        "",
    ]
    checks = [(r.name, c) for r in results for c in r.checks]
    out += _table(
        ["scenario", "target", "measured", "met"],
        [[name, c.target, c.measured, "yes" if c.ok else "**no**"] for name, c in checks],
    )
    out += ["", f"![latency and chunk delay]({plot_name})", ""]
    out += ["## What the figures say", ""] + analysis(results) + [""]
    out += [
        "The profiles behind each data-plane change, what each one measured, and why the",
        "targets still not met are out of reach in this runtime shape: `docs/data-plane.md`.",
        "",
    ]
    for r in results:
        out += [f"## {r.name}", ""]
        out += [f"{note}" for note in r.notes] + [""]
        out += _table(r.columns, r.rows) + [""]
    if replays:
        out += [
            "## Trace replay",
            "",
            "`python -m benchmarks.replay TRACE` replays a workload trace against llmux with fake",
            "backends and hooks that sleep for each model's simulated cost (the traces and their",
            "generator are in `benchmarks/traces/`). Latency is arrival to last chunk; serving is",
            "the share of the replay during which some model was streaming an answer.",
            "",
        ]
        out += _table(
            ["trace", "requests", "failed", "latency mean s", "latency p99 s", "TTFT mean s",
             "TTFT p99 s", "switches", "serving"],
            [[x.trace, x.requests, x.failed, x.latency_mean, x.latency_p99, x.ttft_mean,
              x.ttft_p99, x.switches, f"{x.serving_fraction:.0%}"] for x in replays],
        )  # fmt: skip
        out.append("")
    out += ["## Machine and versions", ""]
    out += [f"- {k}: {v}" for k, v in info.items()]
    out += ["", "## Command lines", ""]
    out += [
        "- one command for everything: `benchmarks/run.sh` (installs nginx, wrk and the LiteLLM",
        "  proxy in its own virtualenv when missing, then runs `python -m benchmarks`);",
        "  `benchmarks/run.sh --smoke` is the few-second version CI runs",
        "- non-streaming: `wrk -t2 -cN -dSs --latency -s post.lua URL` (POST of a chat body)",
        "- streaming and scale: `benchmarks/sse_client.py`, one thread, raw non-blocking sockets",
        "- backend: `python -m benchmarks.backend` (raw gevent sockets, no WSGI layer)",
        "- llmux: `python -m llmux serve -c CONFIG` (one gevent worker, JSON logs, access log on)",
        "- nginx: `worker_processes 1`, `proxy_buffering off`, upstream keepalive",
        "- LiteLLM: `litellm --config CONFIG --num_workers 1`",
        f"- Python: `{sys.executable}`",
        "",
    ]
    return "\n".join(out)


def analysis(results) -> list[str]:
    """Sentences that read the run's own figures: where llmux stands against its floor."""
    by_name = {r.name: r for r in results}
    lines = []
    ns = by_name.get("Non-streaming chat completions")
    if ns is not None and "floor" in ns.series.get("cpu_per_request", {}):
        cpu = ns.series["cpu_per_request"]
        lines.append(
            f"- CPU per request, saturated: llmux {cpu['llmux']:.2f} ms, the floor of its runtime "
            f"shape (gunicorn gevent worker + requests, no logic) {cpu['floor']:.2f} ms, nginx "
            f"{cpu.get('nginx', math.nan):.3f} ms. One worker therefore serves at most about "
            f"{1000 / cpu['llmux']:.0f} requests/s; the floor about {1000 / cpu['floor']:.0f}."
        )
        for (clients, shape, name), (a50, a99) in sorted(ns.series.get("added", {}).items()):
            if name == "floor":
                mine = ns.series["added"].get((clients, shape, "llmux"), (math.nan, math.nan))
                lines.append(
                    f"- {clients} clients, answers {shape}: the floor adds {a50:.1f} ms at p50 "
                    f"and {a99:.1f} ms at p99; llmux adds {mine[0]:.1f} and {mine[1]:.1f} ms."
                )
        lines.append(
            "- A request's own processing is serial in the one worker, so when N answers arrive "
            "together the last waits for the N-1 before it: the added p50 grows with concurrency "
            "times CPU per request. Where the floor already adds more than a target allows, no "
            "code inside this runtime shape can meet it on this machine."
        )
    st = by_name.get("Streaming")
    if st is not None:
        cpu = st.series.get("cpu_per_1000_chunks", {})
        for (streams, name), value in sorted(cpu.items()):
            if name != "llmux" or not value:
                continue
            floor = cpu.get((streams, "floor"), math.nan)
            need = streams * 1000 / 20.0
            lines.append(
                f"- {streams} streams: llmux spends {value:.0f} ms of CPU per 1,000 chunks "
                f"(floor {floor:.0f}), so one worker carries at most about "
                f"{1_000_000 / value:,.0f} chunks/s; these streams send about {need:,.0f}."
            )
    return lines


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_name = {r.name: r for r in results}
    latency = by_name.get("Non-streaming chat completions")
    if latency is not None:
        rows = latency.series.get("latency", [])
        base = {c: (p50, p99) for c, name, p50, p99 in rows if name == "direct"}
        clients = sorted(base)
        names = [n for n in ("llmux", "floor", "nginx", "litellm") if any(r[1] == n for r in rows)]
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            p50 = [
                next(r[2] for r in rows if r[0] == c and r[1] == name) - base[c][0] for c in clients
            ]
            p99 = [
                next(r[3] for r in rows if r[0] == c and r[1] == name) - base[c][1] for c in clients
            ]
            xs = [j + i * width for j in range(len(clients))]
            left.bar(xs, [max(v, 0.01) for v in p50], width, label=name)
            left.scatter(xs, [max(v, 0.01) for v in p99], marker="_", s=200, color="black")
        left.set_yscale("log")
        left.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(clients))])
        left.set_xticklabels([f"{c} clients" for c in clients])
        left.set_ylabel("added over direct, ms (bar p50, dash p99; log)")
        left.set_title("Non-streaming, answers of varied length: latency added")
        left.axhline(1.5, color="grey", linestyle=":", linewidth=1)
        left.legend(fontsize=8)
    streaming = by_name.get("Streaming")
    if streaming is not None:
        for name, values in streaming.series.get("chunk_latency", {}).items():
            if not values:
                continue
            xs = sorted(ms(v) for v in values)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            right.plot(xs, ys, label=f"{name} (p99 {ms(pct(values, 99)):.1f} ms)")
        right.set_xscale("log")
        right.set_xlabel("chunk delay, backend send to client arrival, ms (log)")
        right.set_ylabel("fraction of chunks")
        right.set_title("Streaming, most streams: per-chunk delay")
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
