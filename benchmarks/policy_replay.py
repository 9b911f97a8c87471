"""Replay a trace through a real llmux under each policy, and set it beside the simulator.

Usage::

    python -m benchmarks.policy_replay [--azure | TRACE...] [--window 1200] [--sample 0.25]
        [--seed 1] [--compress 10] [--switch-secs 10] [--concurrency 16]
        [--policies fifo,cost_aware] [--json]

The trace is time-compressed by ``--compress`` (arrival times, service times and
switch costs divided alike, so the load and every ratio stay as they are and every
wait divides by the factor; the policy's absolute settings are divided too). Each
model gets a backend of its own serving ``--concurrency`` streams at once (the rest
wait in its queue, as in vLLM), answering each request after its prefill and then
in ``tokens`` chunks 20 ms apart; its wake hook is ``sleep C/compress``. Every
request's queue wait is llmux's own ``X-Llmux-Queue-Wait-Ms``; switches are
``llmux_switch_total{result="success"}``.

The same compressed trace then runs through ``llmux simulate``'s simulator with the
same costs. Printed per policy: predicted and measured switches and waits (in
uncompressed seconds), and whether they agree (switches within 10 %, mean wait
within 20 %, the scheduling issue's criterion).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from llmux.sim.compare import Costs, compare, policy_settings
from llmux.sim.report import percentile
from llmux.sim.traces import AZURE_ATTRIBUTION, Trace, azure_two_models, load_trace

from .harness import Harness

TOKEN_MS = 20.0  # the gap between chunks: well above the proxy's cost per chunk


@dataclass
class Figures:
    policy: str
    source: str  # "simulated" | "measured"
    requests: int
    failed: int
    switches: int
    mean: float
    p50: float
    p99: float
    max: float


def _figures(policy: str, source: str, waits: list[float], failed: int, switches: int, scale):
    w = sorted(x * scale for x in waits)
    return Figures(
        policy,
        source,
        len(waits) + failed,
        failed,
        switches,
        sum(w) / len(w) if w else float("nan"),
        percentile(w, 0.5) if w else float("nan"),
        percentile(w, 0.99) if w else float("nan"),
        w[-1] if w else float("nan"),
    )


def measure(h: Harness, trace: Trace, policy: str, args) -> Figures:
    """One real run of ``trace`` (already compressed) under ``policy``."""
    cost = args.switch_secs / args.compress
    models = {
        m: {
            "port": h.backend(slots=args.concurrency).port,
            "wake": f"sleep {cost:.4f}",
            "sleep": "true",
            "alive": "true",
            "concurrency": args.concurrency,
        }
        for m in trace.models
    }
    settings = policy_settings(max_wait_secs=args.max_wait_secs / args.compress)
    extra = {
        "policy": {
            "policy_type": policy,
            "max_wait_secs": settings.max_wait_secs,
            "quantum_factor": settings.quantum_factor,
        },
        "proxy": {"idle_timeout": 600, "header_timeout": 600},
    }
    llmux = h.llmux(models, extra=extra, name=f"llmux-{policy}")
    url = f"http://127.0.0.1:{llmux.port}"
    got, failed = _drive(url, trace, stream_body)
    metrics = requests.get(f"http://127.0.0.1:{llmux.port}/metrics", timeout=10).text
    switches = _switches(metrics)
    h.stop(llmux)
    return _figures(policy, "measured", got, failed, switches, args.compress)


def stream_body(a) -> dict:
    """The bench backend's streamed request for arrival ``a``: its prefill, then its
    service time in chunks :data:`TOKEN_MS` apart."""
    chunks = max(1, round((a.service_secs - a.prefill_secs) * 1000 / TOKEN_MS))
    bench = {"chunks": chunks, "gap_ms": TOKEN_MS, "prefill_ms": a.prefill_secs * 1000}
    return {"model": a.model, "stream": True, "messages": [], "bench": bench}


REAL_MODELS = ("smollm2-py", "smollm2-cpp")  # conf/real-cpu.yaml


def measure_real(trace: Trace, policy: str, workdir: Path, max_tokens: int = 16) -> Figures:
    """One run of a two-model ``trace`` through llmux and the two real llama.cpp servers of
    ``conf/real-cpu.yaml`` (its models stand for the trace's, in order), under ``policy``.
    Needs ``conf/hooks/llama-cpp/install.sh`` to have run ($LLMUX_REAL_DIR)."""
    import yaml

    from .harness import ROOT, free_port

    names = dict(zip(trace.models, REAL_MODELS, strict=False))
    config = yaml.safe_load((ROOT / "conf" / "real-cpu.yaml").read_text())
    base = ROOT / "conf"
    for spec in config["models"].values():  # the hooks, from wherever this config is written
        for kind in ("wake", "sleep", "alive"):
            spec[kind] = str(base / spec[kind])
    config["port"] = free_port()
    config["policy"]["policy_type"] = policy
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"llmux-{policy}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "LLAMA_RUN_DIR": str(workdir / "run"),
           "LLMUX_RUNTIME_DIR": str(workdir / "rt")}  # fmt: skip
    with open(workdir / f"llmux-{policy}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmux", "serve", "-c", str(path)],
            stdout=log, stderr=log, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{config['port']}"
    try:
        _wait_healthy(url, proc)

        def body(a) -> dict:
            return {"model": names[a.model], "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": "Count to twenty."}]}  # fmt: skip

        waits, failed = _drive(url, trace, body)
        metrics = requests.get(url + "/metrics", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pidfile in (workdir / "run").glob("*.pid"):  # the model left awake, by design
            try:
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
            pidfile.unlink()
    return _figures(policy, "measured", waits, failed, _switches(metrics), 1.0)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llmux exited with {proc.returncode}")
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError("llmux did not become healthy")


def _drive(url: str, trace: Trace, body) -> tuple[list[float], int]:
    """Every arrival at its time, a thread each, with ``body(arrival)`` as its JSON; the
    answers read to their end: (waits in seconds, failures)."""
    waits: list[float | None] = [None] * len(trace.arrivals)
    start = time.monotonic() + 1.0

    def one(i: int) -> None:
        a = trace.arrivals[i]
        pause = start + a.at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        try:
            with requests.post(f"{url}/v1/chat/completions", json=body(a), stream=True,
                               timeout=600) as r:  # fmt: skip
                if r.status_code == 200:
                    for _ in r.iter_content(65536):
                        pass
                    waits[i] = int(r.headers["X-Llmux-Queue-Wait-Ms"]) / 1000
        except requests.RequestException:
            pass

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(trace.arrivals))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    got = [w for w in waits if w is not None]
    return got, len(waits) - len(got)


def _switches(metrics: str) -> int:
    ok = re.compile(r'^llmux_switch_total\{[^}]*result="success"[^}]*\} (\S+)', re.M)
    return sum(int(float(v)) for v in ok.findall(metrics))


def simulate(trace: Trace, policy: str, args) -> Figures:
    cost = args.switch_secs / args.compress
    costs = Costs(
        {m: cost for m in trace.models},
        concurrency={m: args.concurrency for m in trace.models},
    )
    settings = policy_settings(max_wait_secs=args.max_wait_secs / args.compress)
    ((result, summary),) = compare(trace, [policy], costs, settings=settings)
    waits = [r.admitted_at - r.arrival.at for r in result.requests if r.admitted_at is not None]
    return _figures(
        policy, "simulated", waits, summary.requests - summary.served, summary.switches,
        args.compress,
    )  # fmt: skip


def agree(sim: Figures, real: Figures) -> bool:
    """The scheduling issue's criterion: switch count within 10 %, mean wait within 20 %."""
    switches = abs(real.switches - sim.switches) <= 0.1 * max(sim.switches, 1)
    mean = abs(real.mean - sim.mean) <= 0.2 * max(sim.mean, 1e-9)
    return switches and mean


def load(args) -> Trace:
    if args.azure:
        trace = azure_two_models()
        if trace is None:
            sys.exit("the Azure trace is not on this machine (../shared/traces/azure-llm-2023)")
    else:
        trace = load_trace(args.traces)
    if args.window:
        trace = trace.window(args.window)
    if args.sample:
        trace = trace.sample(args.sample, args.seed)
    return trace.compress(args.compress)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("traces", nargs="*")
    parser.add_argument("--azure", action="store_true", help="the Azure 2023 code+conv trace")
    parser.add_argument("--window", type=float, default=1200.0)
    parser.add_argument("--sample", type=float)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compress", type=float, default=10.0)
    parser.add_argument("--switch-secs", type=float, default=10.0)
    parser.add_argument("--max-wait-secs", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--policies", default="fifo,cost_aware")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    trace = load(args)
    rows = []
    with Harness() as h:
        for policy in args.policies.split(","):
            sim = simulate(trace, policy, args)
            real = measure(h, trace, policy, args)
            rows.append((sim, real))
            if args.json:
                print(json.dumps({"simulated": asdict(sim), "measured": asdict(real)}))
    if args.json:
        return
    print(f"{trace.name}: {len(trace)} requests, {trace.source}; C = {args.switch_secs:g} s, "
          f"K = {args.concurrency}; waits in uncompressed seconds")  # fmt: skip
    print("| policy | | switches | mean wait s | p50 s | p99 s | max s | failed | agree |")
    print("|---|---|---|---|---|---|---|---|---|")
    for sim, real in rows:
        for f in (sim, real):
            mark = ("yes" if agree(sim, real) else "NO") if f is real else ""
            print(f"| {f.policy} | {f.source} | {f.switches} | {f.mean:.1f} | {f.p50:.1f} | "
                  f"{f.p99:.1f} | {f.max:.1f} | {f.failed} | {mark} |")  # fmt: skip
    if args.azure:
        print(f"Trace: {AZURE_ATTRIBUTION}")


if __name__ == "__main__":
    main()
