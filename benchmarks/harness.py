"""The processes a benchmark runs: backends, llmux, nginx, the LiteLLM proxy, wrk.

Usage::

    with Harness(workdir) as h:
        backend = h.backend()                         # the lean gevent backend
        llmux = h.llmux({"a": backend.port})          # one awake model
        nginx = h.nginx(backend.port)
        stats = wrk(llmux.port, connections=32, seconds=5, body=...)

Every process is started here, on a free loopback port, and stopped by PID
(SIGTERM, then SIGKILL) when the harness closes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# LiteLLM lives in a virtualenv of its own (benchmarks/run.sh makes it), never llmux's
LITELLM_VENV = Path(
    os.environ.get("LLMUX_BENCH_LITELLM", Path.home() / ".cache/llmux-bench/litellm")
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:g}s")


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pid(self) -> int:
        """llmux and the floor: the gunicorn worker (the only child of the master)."""
        import psutil

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = psutil.Process(self.pid).children()
            if len(children) == 1:
                return children[0].pid
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no single worker process")


class Harness:
    def __init__(self, workdir: Path | None = None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="llmux-bench-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.servers: list[Server] = []

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, name, cmd, port, *, env=None, timeout=30.0, cwd=None) -> Server:
        log = self.dir / f"{name}-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd or self.dir,
                start_new_session=True,
            )
        server = Server(name, port, proc, log)
        self.servers.append(server)
        wait_listening(port, proc, timeout, name)
        return server

    def stop(self, server: Server) -> None:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait()
        if server in self.servers:
            self.servers.remove(server)

    def close(self) -> None:
        for server in reversed(list(self.servers)):
            self.stop(server)

    # --- what runs ---

    def backend(self, slots: int = 0) -> Server:
        """The lean backend; ``slots``: streams it serves at once (0: any number)."""
        port = free_port()
        cmd = [sys.executable, "-m", "benchmarks.backend", "--port", str(port)]
        return self._start("backend", [*cmd, "--slots", str(slots)], port, cwd=ROOT)

    def llmux(self, models: dict[str, dict], *, extra: dict | None = None, name="llmux") -> Server:
        """``models``: name -> {"port": ..., hooks...}; hooks default to no-ops (awake at once)."""
        port = free_port()
        config = {
            "port": port,
            "models": {
                m: {"wake": "true", "sleep": "true", "alive": "true", **spec}
                for m, spec in models.items()
            },
            **(extra or {}),
        }
        path = self.dir / f"{name}-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {"LLMUX_RUNTIME_DIR": str(self.dir / "run")}
        return self._start(
            name, [sys.executable, "-m", "llmux", "serve", "-c", str(path)], port, env=env
        )

    def floor(self, backend_port: int) -> Server:
        """The smallest proxy of llmux's runtime shape (see benchmarks/floor.py)."""
        port = free_port()
        return self._start(
            "floor",
            [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1", "--worker-connections",
             "2000", "-b", f"127.0.0.1:{port}", "benchmarks.floor:app"],
            port,
            env={"BACKEND_PORT": str(backend_port)},
            cwd=ROOT,
        )  # fmt: skip

    def nginx(self, backend_port: int) -> Server:
        port = free_port()
        prefix = self.dir / f"nginx-{port}"
        (prefix / "logs").mkdir(parents=True)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(port=port, backend=backend_port, prefix=prefix))
        return self._start(
            "nginx",
            [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(prefix), "-c", str(conf),
             "-g", "daemon off;"],
            port,
        )  # fmt: skip

    def litellm(self, backend_port: int, models=("a",)) -> Server:
        port = free_port()
        config = {
            "model_list": [
                {
                    "model_name": m,
                    "litellm_params": {
                        "model": f"openai/{m}",
                        "api_base": f"http://127.0.0.1:{backend_port}/v1",
                        "api_key": "none",
                    },
                }
                for m in models
            ],
            "litellm_settings": {"telemetry": False, "drop_params": True},
        }
        path = self.dir / f"litellm-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download at start
            "LITELLM_LOG": "ERROR",
            "NO_PROXY": "*",
            # no client auth, as llmux and nginx run here; a benchmark on loopback only
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        }
        return self._start(
            "litellm",
            [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(path), "--port", str(port),
             "--host", "127.0.0.1", "--num_workers", "1"],
            port,
            env=env,
            timeout=180,
        )  # fmt: skip


def litellm_available() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


NGINX_CONF = """\
worker_processes 1;
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 900s;
        }}
    }}
}}
"""


# --- wrk, for non-streaming load ---


@dataclass
class WrkResult:
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors plus non-2xx answers


def wrk(port: int, *, connections: int, seconds: float, body: dict, threads: int = 2) -> WrkResult:
    script = Path(tempfile.mkstemp(suffix=".lua", prefix="llmux-wrk-")[1])
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
    )
    try:
        out = subprocess.run(
            [shutil.which("wrk") or "wrk", f"-t{min(threads, connections)}", f"-c{connections}",
             f"-d{seconds:g}s", "--latency", "--timeout", "30s", "-s", str(script),
             f"http://127.0.0.1:{port}/v1/chat/completions"],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        ).stdout  # fmt: skip
    finally:
        script.unlink()
    return parse_wrk(out)


def parse_wrk(out: str) -> WrkResult:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise ValueError(f"no {pct}% latency in wrk output:\n{out}")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return WrkResult(rps, latency("50"), latency("99"), total, errors)
