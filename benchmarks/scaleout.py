"""Two llmux nodes behind the LiteLLM proxy: a four-model trace replayed through it with
llmux's routing strategy and with LiteLLM's default ``simple-shuffle``, in one run.

Usage::

    python -m benchmarks.scaleout [--seconds 600] [--rate 1.5] [--compress 10]
        [--switch-secs 10] [--seed 5] [--latency 200]

The trace is ``zipf_bursty`` with four models (Zipf popularity, bursty arrivals),
time-compressed by ``--compress``. Each node holds the four models, one awake at a time
(a wake hook of ``sleep C/compress``), each served by the lean backend answering after
the request's own service time. For each strategy the nodes and the proxy start afresh.

Printed per strategy: requests; how many were routed where their model was awake or
waking when they arrived, or found it so on no node (from each node's log, rebuilt by
``llmux timeline``'s reader); how many were admitted at once (``wait_secs`` 0 in the
node's ``request_finished``: awake and free on arrival); wakes (switches
that succeeded, summed over the nodes), the *oracle* wakes for the same split (on each
node, one wake per run of consecutive requests, in arrival order, for the same model: a
node that never wakes a model nobody waits for, and never leaves one while its requests
keep coming), and the queue waits. With ``--latency N``: N sequential requests for an
awake model through the proxy with each strategy, and straight to the node; the added
latency is the difference of medians.

LiteLLM runs from the virtualenv ``tox -e scaleout`` makes (``~/.cache/llmux-litellm``,
or ``$LLMUX_LITELLM_VENV``), which has ``llmux.integrations.litellm`` installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import requests
import yaml

from llmux.sim.traces import zipf_bursty
from llmux.timeline.reading import read_logs
from llmux.timeline.story import reconstruct

from .harness import Harness, free_port

VENV = Path(os.environ.get("LLMUX_LITELLM_VENV", Path.home() / ".cache/llmux-litellm/1.108"))
MASTER = "sk-llmux-bench-master-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]


def start_litellm(h: Harness, nodes, models, strategy: str):
    llmux = strategy == "llmux"
    config = {
        "model_list": [
            {
                "model_name": m,
                "litellm_params": {
                    "model": f"openai/{m}",
                    "api_base": f"http://127.0.0.1:{n.port}/v1",
                    "api_key": "none",
                },
                **({"model_info": {"llmux": True}} if llmux else {}),
            }
            for n in nodes
            for m in models
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
        "router_settings": {"num_retries": 1},
    }
    if llmux:
        config["litellm_settings"]["callbacks"] = [
            "llmux.integrations.litellm.proxy_handler_instance"
        ]
    port = free_port()
    path = h.dir / f"litellm-{strategy}-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        "LITELLM_MASTER_KEY": MASTER,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "NO_PROXY": "*",
        "LLMUX_LITELLM_POLL_SECS": "0.2",
    }
    cmd = [str(VENV / "bin/litellm"), "--config", str(path), "--host", "127.0.0.1",
           "--port", str(port), "--num_workers", "1"]  # fmt: skip
    return h._start(f"litellm-{strategy}", cmd, port, env=env, timeout=240)


def polled(node, proxy) -> bool:
    return f"llmux-litellm (pid {proxy.pid})" in node.log.read_text(errors="replace")


def finished(node) -> list[dict]:
    out = []
    for line in node.log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"request_finished"' in line:
            record = json.loads(line)
            if record.get("event") == "request_finished":
                out.append(record)
    return out


def switches(node) -> int:
    text = requests.get(f"http://127.0.0.1:{node.port}/metrics", timeout=10).text
    total = 0
    for line in text.splitlines():
        if line.startswith("llmux_switch_total{") and 'result="success"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def oracle_wakes(records: list[dict]) -> int:
    """One wake per run of consecutive requests for the same model, in arrival order."""
    order = sorted(records, key=lambda r: r["_arrived"])
    runs, last = 0, None
    for r in order:
        if r["model"] != last:
            runs, last = runs + 1, r["model"]
    return runs


def state_at(intervals: list[dict], t: float) -> str:
    return next((i["state"] for i in intervals if i["from"] <= t < i["to"]), "asleep")


def routed_right(record: dict, stories: list[dict]) -> bool:
    """Whether a request went to a node where its model was awake or waking when it
    arrived, or found it so on no node (then some node had to wake it)."""
    ready = ("awake", "waking")
    where = [
        n for n, states in enumerate(stories)
        if state_at(states.get(record["model"], []), record["_arrived"]) in ready
    ]  # fmt: skip
    return not where or record["_node"] in where


def drive(url: str, trace) -> list[str]:
    """Every arrival at its time, through the proxy; why each failed one failed."""
    failed: list[str] = []
    start = time.monotonic() + 1.0
    headers = {"Authorization": f"Bearer {MASTER}"}

    def one(a) -> None:
        pause = start + a.at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        body = {
            "model": a.model,
            "messages": [{"role": "user", "content": "hi"}],
            "bench": {"delay_ms": a.service_secs * 1000},
        }
        try:
            r = requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=600)
            if r.status_code != 200:
                failed.append(f"{a.model} at {a.at:.1f} s: {r.status_code} {r.text[:300]}")
        except requests.RequestException as exc:
            failed.append(f"{a.model} at {a.at:.1f} s: {exc}")

    threads = [threading.Thread(target=one, args=(a,)) for a in trace.arrivals]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    return failed


def run(strategy: str, trace, args) -> dict:
    cost = args.switch_secs / args.compress
    with Harness() as h:
        nodes = []
        for _ in range(2):
            models = {
                m: {"port": h.backend().port, "wake": f"sleep {cost:.4f}"} for m in trace.models
            }
            nodes.append(h.llmux(models, name="node"))
        proxy = start_litellm(h, nodes, trace.models, strategy)
        if strategy == "llmux":
            deadline = time.monotonic() + 60
            while not all(polled(n, proxy) for n in nodes):
                assert time.monotonic() < deadline, "the proxy never polled the nodes"
                time.sleep(0.1)
        failed = drive(f"http://127.0.0.1:{proxy.port}", trace)
        records, wakes, oracle, stories = [], 0, 0, []
        for node in nodes:
            mine = finished(node)
            for r in mine:  # its arrival: its end less its duration
                end = datetime.fromisoformat(r["timestamp"]).timestamp()
                r["_arrived"] = end - r["duration_secs"]
                r["_node"] = len(stories)
            records += mine
            wakes += switches(node)
            oracle += oracle_wakes(mine)
            stories.append(reconstruct(read_logs([node.log])).states)
        right = sum(routed_right(r, stories) for r in records)
        latency = measure_latency(h, nodes, proxy, args.latency) if args.latency else None
    waits = sorted(r["wait_secs"] * args.compress for r in records)
    return {
        "strategy": strategy,
        "requests": len(records),
        "failed": failed,
        "landed_awake": sum(r["wait_secs"] == 0 for r in records),
        "routed_right": right,
        "wakes": wakes,
        "oracle_wakes": oracle,
        "mean_wait": statistics.fmean(waits) if waits else float("nan"),
        "p99_wait": waits[min(len(waits) - 1, int(0.99 * len(waits)))] if waits else float("nan"),
        "latency": latency,
    }


def measure_latency(h: Harness, nodes, proxy, n: int) -> dict:
    """Median and p99 seconds of ``n`` sequential requests for an awake model, through the
    proxy and straight to the node that has it awake."""
    headers = {"Authorization": f"Bearer {MASTER}"}
    body = {"model": "m0", "messages": [{"role": "user", "content": "hi"}]}
    urls = {
        "proxy": f"http://127.0.0.1:{proxy.port}/v1/chat/completions",
        "direct": f"http://127.0.0.1:{nodes[0].port}/v1/chat/completions",
    }
    requests.post(urls["direct"], json=body, timeout=60)  # m0 awake on node 0
    out = {}
    with requests.Session() as s:
        for name, url in urls.items():
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = s.post(url, json=body, headers=headers, timeout=60)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            times.sort()
            out[name] = {"p50": statistics.median(times), "p99": times[int(0.99 * (n - 1))]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=1.5)
    parser.add_argument("--compress", type=float, default=10.0)
    parser.add_argument("--switch-secs", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--latency", type=int, default=0)
    args = parser.parse_args()
    if not (VENV / "bin/litellm").exists():
        raise SystemExit(f"no LiteLLM in {VENV}: run `tox -e scaleout` once (it makes it)")
    # this checkout's llmux in LiteLLM's virtualenv, as tests/scaleout does
    pip = [str(VENV / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
    subprocess.run([*pip, str(ROOT)], check=True, capture_output=True)
    # LiteLLM fetches its cost map from the network on import unless told not to
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    subprocess.run([str(VENV / "bin/python"), "-c", "import llmux.integrations.litellm"],
                   check=True, env=env)  # fmt: skip
    trace = zipf_bursty(seconds=args.seconds, models=4, rate=args.rate, seed=args.seed)
    trace = trace.compress(args.compress)
    print(
        f"{trace.name}: {len(trace)} requests over {args.seconds:g} s, {trace.source}; "
        f"C = {args.switch_secs:g} s; compressed x{args.compress:g}; waits in uncompressed s"
    )
    print("| strategy | requests | failed | routed where awake | admitted at once | wakes "
          "| oracle wakes | wakes/oracle | mean wait | p99 wait |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = [run(s, trace, args) for s in ("llmux", "simple-shuffle")]
    for r in rows:
        share = r["landed_awake"] / max(r["requests"], 1)
        right = r["routed_right"] / max(r["requests"], 1)
        failed = len(r["failed"])
        print(f"| {r['strategy']} | {r['requests']} | {failed} | {right:.1%} | {share:.1%} "
              f"| {r['wakes']} "
              f"| {r['oracle_wakes']} | {r['wakes'] / max(r['oracle_wakes'], 1):.2f} "
              f"| {r['mean_wait']:.1f} s | {r['p99_wait']:.1f} s |")  # fmt: skip
    for r in rows:
        for why in r["failed"]:
            print(f"failed ({r['strategy']}): {why}", file=sys.stderr)
    for r in rows:
        if r["latency"]:
            lat = r["latency"]
            added = (lat["proxy"]["p50"] - lat["direct"]["p50"]) * 1000
            print(
                f"{r['strategy']}: through LiteLLM p50 {lat['proxy']['p50'] * 1000:.1f} ms, "
                f"p99 {lat['proxy']['p99'] * 1000:.1f} ms; straight to llmux p50 "
                f"{lat['direct']['p50'] * 1000:.1f} ms; LiteLLM adds {added:.1f} ms at p50"
            )
    if any(r["failed"] for r in rows):
        raise SystemExit("requests failed: see the table and the reasons above")


if __name__ == "__main__":
    main()
