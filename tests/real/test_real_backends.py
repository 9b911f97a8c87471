"""llmux switching two real llama.cpp servers on CPU, driven by the official openai clients.

Needs conf/hooks/llama-cpp/install.sh to have run (tox -e real does it first).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, install_node_client, process_alive, run_node_client

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "conf" / "real-cpu.yaml"
PY, CPP = "smollm2-py", "smollm2-cpp"
PORTS = {PY: 18181, CPP: 18182}
PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def real_llmux(tmp_path_factory):
    real_dir = Path(os.environ.get("LLMUX_REAL_DIR", Path.home() / ".cache" / "llmux-real"))
    assert (real_dir / "model.path").exists(), "run conf/hooks/llama-cpp/install.sh first"
    work = tmp_path_factory.mktemp("real")
    port = free_port()
    env = dict(
        os.environ,
        LLAMA_RUN_DIR=str(work / "run"),
        LLMUX_RUNTIME_DIR=str(work / "rt"),
        LLMUX_REAL_DIR=str(real_dir),
    )
    log = open(work / "llmux.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmux", "serve", "-c", str(CONFIG), "--port", str(port)],
        stdout=log,
        stderr=log,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url + "/health", timeout=1)
            break
        except requests.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, (
                work / "llmux.log"
            ).read_text()
            time.sleep(0.1)
    yield url, work
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    log.close()
    for pidfile in (work / "run").glob("*.pid"):  # the model left awake
        pid = int(pidfile.read_text())
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def server_pid(work: Path, model: str) -> int | None:
    path = work / "run" / f"llama-{PORTS[model]}.pid"
    return int(path.read_text()) if path.exists() else None


def served_by_llama_server(extra: dict) -> bool:
    """llama-server stamps a fingerprint and timings; llama_cpp.server does neither."""
    return bool(extra.get("system_fingerprint")) or "timings" in extra


def test_alternating_between_two_real_servers(real_llmux):
    url, work = real_llmux
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    answers: dict[str, list[tuple[str, str]]] = {PY: [], CPP: []}
    previous = None
    for _ in range(3):
        for model in (PY, CPP):
            slept_pid = server_pid(work, previous) if previous else None
            plain = client.chat.completions.create(
                model=model, messages=PROMPT, temperature=0, max_tokens=24
            )
            text = plain.choices[0].message.content
            assert text and text.strip(), "empty answer"
            assert plain.model == model
            extra = plain.model_dump()
            assert served_by_llama_server(extra) == (model == CPP), extra
            chunks = list(
                client.chat.completions.create(
                    model=model, messages=PROMPT, temperature=0, max_tokens=24, stream=True
                )
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert streamed.strip()
            assert any(served_by_llama_server(c.model_dump()) for c in chunks) == (model == CPP)
            answers[model].append((text, streamed))
            if slept_pid is not None:
                assert not process_alive(slept_pid), f"{previous}'s server is still running"
            previous = model
    for model, runs in answers.items():
        assert len(set(runs)) == 1, f"{model} answered differently: {runs}"
    # back-to-back streams on one model: llama-server closes each streamed connection
    for _ in range(10):
        chunks = list(
            client.chat.completions.create(
                model=CPP, messages=PROMPT, temperature=0, max_tokens=4, stream=True
            )
        )
        assert chunks
    metrics = requests.get(url + "/metrics", timeout=5).text
    switches = {}
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name in (
                "llmux_switch_duration_seconds_sum",
                "llmux_switch_duration_seconds_count",
            ):
                key = (s.labels["from"], s.labels["to"])
                switches.setdefault(key, {})[s.name.rsplit("_", 1)[1]] = s.value
            if s.name == "llmux_switch_total" and s.value > 0:  # every pair starts at 0
                assert s.labels["result"] == "success", s
    mean = {f"{a}->{b}": round(v["sum"] / v["count"], 3) for (a, b), v in switches.items()}
    counts = {f"{a}->{b}": int(v["count"]) for (a, b), v in switches.items()}
    print("mean switch seconds:", json.dumps(mean), "switches:", json.dumps(counts))
    assert (PY, CPP) in switches and (CPP, PY) in switches


def test_the_node_openai_client_works_unchanged(real_llmux, tmp_path):
    url, _ = real_llmux
    install_node_client(tmp_path, Path(__file__).with_name("client.mjs"))
    result = run_node_client(tmp_path, 300, BASE_URL=url + "/v1")
    assert result["plain"].strip() and result["streamed"].strip()
    assert "Paris" in result["plain"] + result["streamed"]
