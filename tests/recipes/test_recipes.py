"""The hook recipes in conf/hooks/, run as llmux runs them, against fakes of what they drive.

vLLM is a fake that speaks its sleep-mode API; systemctl, podman and
llama-server are stand-in executables in tests/recipes/bin put first on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from tests.support import free_port, process_alive, wait_for

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "conf" / "hooks"
FAKE_BIN = Path(__file__).parent / "bin"


def run_hook(recipe: str, kind: str, model="m", port=0, timeout=30, **env):
    """One hook run the way llmux does it: ``sh -c``, with LLMUX_* in the environment."""
    full = dict(
        os.environ,
        LLMUX_MODEL=model,
        LLMUX_PORT=str(port),
        LLMUX_HOOK=kind,
        LLMUX_PYTHON=sys.executable,
        **{k: str(v) for k, v in env.items()},
    )
    return subprocess.run(
        ["/bin/sh", "-c", str(HOOKS / recipe / f"{kind}.sh")],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- vLLM sleep mode ---


class FakeVllm:
    def __init__(self, tmp_path: Path, port: int | None = None, asleep=False):
        self.port = port or free_port()
        self.log = tmp_path / f"vllm-{self.port}.jsonl"
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--port", str(self.port), "--log", str(self.log)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.recipes.fake_vllm", *args, *(["--asleep"] * asleep)],
            cwd=ROOT,
        )
        wait_for(lambda: listening(self.port), timeout=10)

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def paths(self) -> list[str]:
        return [
            c["path"] + (f"?{c['query']}" if c["query"] else "")
            for c in self.calls()
            if "path" in c
        ]

    def violations(self) -> list[str]:
        return [c["violation"] for c in self.calls() if "violation" in c]

    def running(self) -> int:
        text = requests.get(self.url + "/metrics", timeout=5).text
        line = next(x for x in text.splitlines() if x.startswith("vllm:num_requests_running"))
        return int(float(line.split()[-1]))

    def is_sleeping(self) -> bool:
        return requests.get(self.url + "/is_sleeping", timeout=5).json()["is_sleeping"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def vllm(tmp_path):
    servers: list[FakeVllm] = []

    def start(**kw) -> FakeVllm:
        servers.append(FakeVllm(tmp_path, **kw))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_vllm_level_1_sleep_and_wake(vllm):
    v = vllm()
    assert run_hook("vllm", "alive", port=v.port).returncode == 0
    r = run_hook("vllm", "sleep", port=v.port)
    assert r.returncode == 0, r.stderr
    assert v.is_sleeping()
    r = run_hook("vllm", "alive", port=v.port)  # /health is 200, but it sleeps
    assert r.returncode == 1 and "asleep" in r.stderr
    assert run_hook("vllm", "wake", port=v.port).returncode == 0
    assert not v.is_sleeping() and run_hook("vllm", "alive", port=v.port).returncode == 0
    assert v.paths() == ["/sleep?level=1", "/wake_up"]
    # both hooks are idempotent: no second call to the engine
    assert run_hook("vllm", "wake", port=v.port).returncode == 0
    assert v.paths() == ["/sleep?level=1", "/wake_up"]


def test_vllm_level_2_wakes_weights_reloads_them_then_the_kv_cache(vllm):
    v = vllm()
    assert run_hook("vllm", "sleep", port=v.port, VLLM_SLEEP_LEVEL=2).returncode == 0
    r = run_hook("vllm", "wake", port=v.port, VLLM_SLEEP_LEVEL=2, VLLM_WARMUP_MODEL="m")
    assert r.returncode == 0, r.stderr
    assert v.paths() == [
        "/sleep?level=2",
        "/wake_up?tags=weights",
        "/collective_rpc",
        "/wake_up?tags=kv_cache",
        "/reset_prefix_cache",
        "/v1/completions",  # the 1-token warm-up
    ]
    assert v.violations() == []


def test_vllm_sleep_never_happens_with_requests_in_flight(vllm):
    v = vllm()
    done = {}
    slow = threading.Thread(
        target=lambda: done.update(
            r=requests.post(v.url + "/v1/chat/completions", json={"delay": 1.0}, timeout=10)
        )
    )
    slow.start()
    wait_for(lambda: v.running() == 1, timeout=5)
    r = run_hook("vllm", "sleep", port=v.port)
    slow.join(10)
    assert r.returncode == 0 and done["r"].status_code == 200
    assert v.violations() == []
    sleep_call = next(c for c in v.calls() if c.get("path") == "/sleep")
    assert sleep_call["running"] == 0


def test_vllm_sleep_gives_up_on_requests_that_never_end(vllm):
    v = vllm()

    def slow_request():
        try:
            requests.post(v.url + "/v1/chat/completions", json={"delay": 3}, timeout=10)
        except requests.RequestException:
            pass  # the fake may be stopped first

    threading.Thread(target=slow_request, daemon=True).start()
    wait_for(lambda: v.running() == 1, timeout=5)
    r = run_hook("vllm", "sleep", port=v.port, VLLM_DRAIN_SECS=1)
    assert r.returncode == 1
    assert "still has 1 requests after 1s; not sleeping" in r.stderr
    assert not v.is_sleeping()


def test_vllm_wake_starts_a_stopped_server_with_vllm_start(vllm, tmp_path):
    port = free_port()
    r = run_hook("vllm", "wake", port=port)
    assert r.returncode == 1 and "not running and VLLM_START is not set" in r.stderr
    start = (
        f"cd {ROOT} && setsid {sys.executable} -m tests.recipes.fake_vllm --port {port} "
        f"--asleep >/dev/null 2>&1 </dev/null & echo $! > {tmp_path}/started.pid"
    )
    r = run_hook("vllm", "wake", port=port, VLLM_START=start, VLLM_START_SECS=10)
    pid = int((tmp_path / "started.pid").read_text())
    try:
        assert r.returncode == 0, r.stderr
        assert run_hook("vllm", "alive", port=port).returncode == 0
    finally:
        os.kill(pid, signal.SIGTERM)


def test_vllm_recipe_through_llmux_switches_two_servers(vllm, llmux_factory):
    """Two vLLM servers that both start awake: adoption sleeps one, then requests switch."""
    a, b = vllm(), vllm()
    hooks = {kind: str(HOOKS / "vllm" / f"{kind}.sh") for kind in ("wake", "sleep", "alive")}
    server = llmux_factory(
        models={
            "a": {**hooks, "port": a.port},
            "b": {**hooks, "port": b.port, "env": {"VLLM_SLEEP_LEVEL": "2"}},
        },
        startup={"adopt": True},
    )
    wait_for(lambda: server.status()["active"] == "a", timeout=10)
    assert b.is_sleeping() and not a.is_sleeping()  # adoption kept one on the GPU
    for model in ("b", "a", "b", "a"):
        r = server.post(body={"model": model, "prompt": "hi"}, path="/v1/completions")
        assert r.status_code == 200, r.text
    assert a.violations() == [] and b.violations() == []
    # never both awake: order every sleep and wake of both engines in time
    changes = sorted(
        [(c["t"], name, c["path"], c["query"]) for name, v in (("a", a), ("b", b))
         for c in v.calls() if c.get("path") in ("/sleep", "/wake_up")]
    )  # fmt: skip
    up = {"a"}
    for _, name, path, query in changes:
        if path == "/sleep":
            up.discard(name)
        elif query in ("", "tags=weights"):
            assert not up - {name}, f"woke {name} while {up} was awake"
            up.add(name)
    assert [p for p in b.paths() if p != "/v1/completions"][:5] == [
        "/sleep?level=2",
        "/wake_up?tags=weights",
        "/collective_rpc",
        "/wake_up?tags=kv_cache",
        "/reset_prefix_cache",
    ]


# --- llama-server by pidfile and process group ---


def llama_env(tmp_path, **extra) -> dict:
    """The llama-cpp recipe's settings, with the stand-in llama-server."""
    return {
        "LLAMA_SERVER_BIN": FAKE_BIN / "llama-server",
        "LLAMA_GGUF": tmp_path / "model.gguf",
        "LLAMA_RUN_DIR": tmp_path / "run",
        "LLAMA_STOP_GRACE": 2,
        **extra,
    }


def test_llama_server_recipe_starts_and_stops_the_whole_group(tmp_path):
    port = free_port()
    env = llama_env(tmp_path, LLAMA_ARGS="-ngl 99")
    r = run_hook("llama-cpp", "wake", port=port, **env)
    assert r.returncode == 0, r.stderr
    pid = int((tmp_path / "run" / f"llama-{port}.pid").read_text())
    members = [p for p in _group(pid)]
    assert len(members) >= 2  # the server and the helper it started
    assert run_hook("llama-cpp", "alive", port=port, **env).returncode == 0
    assert run_hook("llama-cpp", "wake", port=port, **env).returncode == 0  # idempotent
    assert int((tmp_path / "run" / f"llama-{port}.pid").read_text()) == pid
    r = run_hook("llama-cpp", "sleep", port=port, **env)
    assert r.returncode == 0, r.stderr
    assert not any(process_alive(p) for p in members)
    assert run_hook("llama-cpp", "alive", port=port, **env).returncode != 0


def test_llama_server_recipe_can_run_the_server_in_a_scope_of_its_own(tmp_path):
    """LLAMA_SCOPE=1: out of llmux's cgroup, so a stop of llmux's unit leaves it running."""
    port = free_port()
    env = llama_env(tmp_path, LLAMA_SCOPE=1, PATH=f"{FAKE_BIN}:{os.environ['PATH']}")
    (tmp_path / "run").mkdir()
    r = run_hook("llama-cpp", "wake", port=port, **env)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "run" / "calls.log").read_text().splitlines()
    assert calls == [
        f"systemd-run --scope --quiet --collect --unit=llmux-llama-{port} "
        f"{FAKE_BIN / 'llama-server'} -m {tmp_path / 'model.gguf'} --alias m "
        f"--host 127.0.0.1 --port {port} -c 2048 --parallel 2 -t 2"
    ]
    pid = int((tmp_path / "run" / f"llama-{port}.pid").read_text())
    assert process_alive(pid)  # systemd-run execs the server: the pidfile names it
    assert run_hook("llama-cpp", "sleep", port=port, **env).returncode == 0
    assert not process_alive(pid)


def _group(pgid: int) -> list[int]:
    from llmux.engine.hooks import group_members

    return [pid for pid, state in group_members(pgid) if state not in (b"Z", b"X")]


# --- systemd and containers, through stand-in executables ---


@pytest.fixture
def fake_bin_env(tmp_path):
    (tmp_path / "containers").mkdir()
    return {"PATH": f"{FAKE_BIN}:{os.environ['PATH']}", "FAKE_STATE_DIR": tmp_path}


def calls(tmp_path) -> list[str]:
    path = tmp_path / "calls.log"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("user", [False, True])
def test_systemd_recipe(tmp_path, fake_bin_env, user):
    port = free_port()
    env = dict(fake_bin_env, START_SECS=10, **({"SYSTEMD_USER": 1} if user else {}))
    assert run_hook("systemd", "alive", "qwen", port, **env).returncode == 1
    r = run_hook("systemd", "wake", "qwen", port, **env)
    assert r.returncode == 0, r.stderr
    assert listening(port)
    assert run_hook("systemd", "alive", "qwen", port, **env).returncode == 0
    r = run_hook("systemd", "sleep", "qwen", port, **env)
    assert r.returncode == 0, r.stderr
    assert not listening(port)
    prefix = "systemctl --user" if user else "systemctl"
    assert f"{prefix} start llmux-model@qwen.service" in calls(tmp_path)
    assert f"{prefix} stop llmux-model@qwen.service" in calls(tmp_path)


def test_container_recipe(tmp_path, fake_bin_env):
    port = free_port()
    env = dict(fake_bin_env, CONTAINER_ENGINE="podman", START_SECS=10, CONTAINER_STOP_SECS=7)
    r = run_hook("container", "wake", "qwen", port, **env)
    assert r.returncode != 0 and "no such container" in r.stderr  # not created yet
    (tmp_path / "containers" / "llmux-qwen").write_text("")
    r = run_hook("container", "wake", "qwen", port, **env)
    assert r.returncode == 0, r.stderr
    assert run_hook("container", "alive", "qwen", port, **env).returncode == 0
    r = run_hook("container", "sleep", "qwen", port, **env)
    assert r.returncode == 0, r.stderr
    assert run_hook("container", "alive", "qwen", port, **env).returncode == 1
    assert "podman stop -t 7 llmux-qwen" in calls(tmp_path)


# --- the scripts themselves, and llmux's own unit ---


def test_recipes_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "the recipe tests need shellcheck: apt-get install shellcheck"
    scripts = sorted(str(p) for p in HOOKS.glob("*/*.sh"))
    r = subprocess.run(
        [shellcheck, "-x", "-P", "SCRIPTDIR", *scripts], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout


def test_the_systemd_units_are_valid():
    units = sorted((ROOT / "conf" / "systemd").glob("*.service"))
    assert [u.name for u in units] == ["llmux-model@.service", "llmux.service"]
    text = (ROOT / "conf" / "systemd" / "llmux.service").read_text()
    assert "KillSignal=SIGTERM" in text and "ExecReload=" in text
    analyze = shutil.which("systemd-analyze")
    if analyze:  # checks syntax and directives; a missing binary is only a warning
        r = subprocess.run(
            [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
        )
        bad = [
            line
            for line in r.stderr.splitlines()
            if "is not executable" not in line
            and "No such file" not in line
            and "Failed to" not in line
            and line.strip()
        ]
        assert bad == [], r.stderr
