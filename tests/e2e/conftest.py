"""Real llmux processes for end-to-end tests.

``llmux_factory(models=..., policy=...)`` writes a config into the test's
temporary directory, starts ``llmux serve`` on a free loopback port, waits for
``/health``, and returns a :class:`Llmux` handle. At teardown it sends SIGTERM,
waits for the exit, stops every backend the hooks started (by pidfile) and
checks that none is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.support import free_port, process_alive

HOOK = Path(__file__).parent / "hooks" / "hook.sh"

pytestmark = pytest.mark.e2e


class Llmux:
    def __init__(
        self,
        directory: Path,
        config: dict,
        extra_args=(),
        env=None,
        log_name="llmux.log",
        prestart=(),
    ):
        self.dir = directory
        self.port = config["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = directory / "llmux.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        (directory / "faults").mkdir(exist_ok=True)
        self.stderr_path = directory / log_name
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - lives as long as llmux
        full_env = dict(os.environ, LLMUX_TEST_DIR=str(directory), **(env or {}))
        if prestart:  # backends already up before llmux starts (adoption); their wakes unlogged
            for model in prestart:
                self._run_hook_by_hand(model, "wake", full_env, config)
            (directory / "events.log").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmux", "serve", "-c", str(self.config_path), *extra_args],
            stdout=self._stderr,
            stderr=self._stderr,
            env=full_env,
            cwd=directory,
        )
        self.session = requests.Session()
        self._wait_healthy()

    def _run_hook_by_hand(self, model, kind, env, config) -> None:
        spec = config["models"][model]
        hook_env = dict(
            env,
            LLMUX_MODEL=model,
            LLMUX_PORT=str(spec["port"]),
            LLMUX_PYTHON=sys.executable,
            **spec.get("env", {}),
        )
        subprocess.run([str(HOOK), kind], env=hook_env, cwd=self.dir, check=True, timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", spec["port"])) == 0:
                    return
            time.sleep(0.02)
        raise AssertionError(f"backend of {model} did not start")

    def admin(self, method, path, token=None, headers=None, **kw):
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        kw.setdefault("timeout", 30)
        return requests.request(method, self.url + "/llmux" + path, headers=headers, **kw)

    def status(self, token=None) -> dict:
        r = self.admin("GET", "/status", token)
        assert r.status_code == 200, r.text
        return r.json()

    def rewrite_config(self, change) -> None:
        """Edit the config file in place: ``change(config_dict)``."""
        config = yaml.safe_load(self.config_path.read_text())
        change(config)
        self.config_path.write_text(yaml.safe_dump(config))

    def _wait_healthy(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"llmux exited early:\n{self.log_text()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise AssertionError(f"llmux did not become healthy:\n{self.log_text()}")

    # --- talking to it ---

    def post(self, path="/v1/chat/completions", body=None, **kw):
        kw.setdefault("timeout", 30)
        return self.session.post(self.url + path, json=body, **kw)

    def stream(self, model, **extra):
        """A streamed chat completion, left open for the caller to read; its connection
        closes with it (an idle keep-alive one would hold llmux's shutdown ~4 s)."""
        return requests.post(
            self.url + "/v1/chat/completions",
            json={"model": model, "stream": True, **extra},
            headers={"Connection": "close"},
            stream=True,
            timeout=30,
        )

    def chat(self, model, **extra):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return self.post(body=body)

    # --- what happened ---

    def events(self) -> list[tuple[float, str, str, str, str]]:
        """Hook events: (time, start|end, kind, model, rc)."""
        path = self.dir / "events.log"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            parts = line.split() + [""]
            rows.append((float(parts[0]), parts[1], parts[2], parts[3], parts[4]))
        return rows

    def hook_runs(self, kind=None, model=None) -> list[tuple[str, str]]:
        return [
            (k, m)
            for _, phase, k, m, _ in self.events()
            if phase == "start" and k != "alive" and kind in (None, k) and model in (None, m)
        ]

    def backend_hits(self, model: str) -> list[dict]:
        """What the backend of ``model`` received, over all its lives."""
        path = self.dir / f"access-{model}.log"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def port_of(self, model: str) -> int:
        return yaml.safe_load(self.config_path.read_text())["models"][model]["port"]

    def worker_pid(self) -> int:
        import psutil

        children = psutil.Process(self.proc.pid).children()
        assert len(children) == 1, children
        return children[0].pid

    def fault(self, kind: str, model: str, snippet: str | None) -> None:
        path = self.dir / "faults" / f"{kind}-{model}"
        if snippet is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(snippet + "\n")

    def log_text(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        """The JSON log lines written so far; a last line still being written is left out."""
        text = self.log_text()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def backend_pids(self) -> list[int]:
        run = self.dir / "run"
        return [int(p.read_text()) for p in run.glob("*.pid")] if run.exists() else []

    # --- stopping ---

    def terminate(self, timeout=15.0) -> int:
        self.session.close()  # an idle keep-alive connection would hold the shutdown
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.terminate()
        for pid in self.backend_pids():  # the awake model is left running, by design
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.survivors() and time.monotonic() < deadline:
            time.sleep(0.02)
        survivors = self.survivors()
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        assert not survivors, f"processes of this test outlived it: {survivors}"

    def survivors(self) -> list[int]:
        """Live processes started for this test: they all inherit LLMUX_TEST_DIR."""
        marker = f"LLMUX_TEST_DIR={self.dir}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    env = fh.read().split(b"\0")
            except OSError:
                continue
            if marker in env and process_alive(int(entry)):
                found.append(int(entry))
        return found


def assert_one_awake(events) -> None:
    """INV-1 from the hook log: a wake starts only when every other model has slept."""
    up: set[str] = set()
    for _, phase, kind, model, _ in events:
        if kind == "wake" and phase == "start":
            assert not up - {model}, f"woke {model} while {up} was up"
            up.add(model)
        elif kind == "sleep" and phase == "end":
            up.discard(model)


def model_entry(port: int, **env) -> dict:
    entry = {
        "port": port,
        "wake": f"{HOOK} wake",
        "sleep": f"{HOOK} sleep",
        "alive": f"{HOOK} alive",
    }
    if env:
        entry["env"] = {k: str(v) for k, v in env.items()}
    return entry


@pytest.fixture
def llmux_factory(tmp_path):
    started: list[Llmux] = []

    def start(
        models=("a", "b", "c"), *, model_env=None, extra_args=(), env=None, prestart=(), **sections
    ):
        if isinstance(models, dict):  # given entries, ports included
            taken = {entry["port"] for entry in models.values()}
            listen = next(p for p in iter(free_port, None) if p not in taken)
            entries = models
        else:
            ports: set[int] = set()
            while len(ports) < len(models) + 1:  # two picks of a free port may coincide
                ports.add(free_port())
            listen, *backends = sorted(ports)
            entries = {
                name: model_entry(port, **(model_env or {}))
                for name, port in zip(models, backends, strict=True)
            }
        config = {
            "port": listen,
            "models": entries,
            "hooks": {
                "wake_timeout": 10,
                "sleep_timeout": 10,
                "alive_timeout": 2,
                "ready_timeout": 10,
                "kill_grace": 1,
            },
            "policy": {"failure_backoff_secs": 0.2},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key].update(value)
            else:
                config[key] = value
        directory = tmp_path / f"llmux{len(started)}"
        directory.mkdir()
        server = Llmux(directory, config, extra_args, env, prestart=prestart)
        started.append(server)
        return server

    yield start
    for server in started:
        server.cleanup()


@pytest.fixture
def llmux(llmux_factory):
    return llmux_factory()
