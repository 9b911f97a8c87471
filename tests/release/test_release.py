"""Releasing like a Python project (RELEASING.md): the sdist and wheel that ``python -m build``
makes pass ``twine check``, hold llmux and nothing else, and, installed into a fresh virtualenv,
give a working ``llmux``: its version, a config check, and the demo answering a request."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import requests
import yaml

from llmux import __version__
from tests.support import free_port, process_alive, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# The name `llmux` on PyPI belongs to another project (SPEC §1)
DIST = "llmux_proxy"


def run(*args, cwd=None, timeout=600) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel, the wheel built from the sdist (``python -m build``'s default:
    so a file the sdist misses breaks the wheel too)."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", str(out), str(ROOT))
    return out


def test_the_version_is_declared_once_and_has_a_changelog_entry():
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert "version = attr: llmux.__version__" in (ROOT / "setup.cfg").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M)
    assert "## [Unreleased]" in changelog


def test_build_makes_an_sdist_and_a_wheel_that_twine_passes(dist):
    files = sorted(p.name for p in dist.iterdir())
    assert files == [f"{DIST}-{__version__}-py3-none-any.whl", f"{DIST}-{__version__}.tar.gz"]
    out = run(sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir()))
    assert out.count("PASSED") == 2, out
    with zipfile.ZipFile(dist / files[0]) as wheel:
        names = wheel.namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"llmux", f"{DIST}-{__version__}.dist-info"}  # no tests, no benchmarks
    assert "llmux/web/status_page.html" in names
    assert "llmux/demo/fake_backend.py" in names
    # the sdist carries what an operator installs besides the package
    with tarfile.open(dist / files[1]) as sdist:
        inside = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for shipped in (
        "conf/demo.yaml",
        "conf/logrotate/llmux",
        "conf/prometheus/llmux-alerts.yaml",
        "conf/systemd/llmux.service",
        "conf/grafana/llmux-dashboard.json",
        "CHANGELOG.md",
        "docs/operations.md",
    ):
        assert shipped in inside, shipped
    assert not [name for name in inside if name.startswith("conf/run")]


def test_the_wheel_installed_in_a_fresh_virtualenv_runs_the_demo(dist, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    wheel = next(dist.glob("*.whl"))
    run(str(venv / "bin/pip"), "install", "-q", str(wheel))
    llmux = str(venv / "bin/llmux")
    assert __version__ in run(llmux, "--version")
    run(llmux, "check", "-c", str(ROOT / "conf/demo.yaml"))

    # the demo, on ports of its own, from a copy of conf/ (its hooks write ./run/)
    demo = tmp_path / "demo"
    shutil.copytree(ROOT / "conf/demo-hooks", demo / "demo-hooks")
    config = yaml.safe_load((ROOT / "conf/demo.yaml").read_text())
    config["port"] = free_port()
    for entry in config["models"].values():
        entry["port"] = free_port()
        entry["env"]["FAKE_LOAD_MS"] = "100"
    (demo / "demo.yaml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{config['port']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMUX_", "VIRTUAL_ENV"))}
    with open(demo / "llmux.log", "wb") as log:
        proc = subprocess.Popen(
            [llmux, "serve", "-c", "demo.yaml"], cwd=demo, stdout=log, stderr=log, env=env
        )
    try:
        wait_for(lambda: healthy(url, proc), 30, every=0.1)
        r = requests.post(
            url + "/v1/chat/completions",
            json={"model": "qwen", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        status = requests.get(url + "/llmux/status", timeout=10).json()
        assert status["version"] == __version__
        assert status["models"]["qwen"]["state"] == "awake"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            # the awake model is left running at shutdown, by design: its fake backend
            for pidfile in (demo / "run").glob("backend-*.pid"):
                pid = int(pidfile.read_text())
                if process_alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    wait_for(lambda pid=pid: not process_alive(pid), 10)
    assert proc.returncode == 0, (demo / "llmux.log").read_text()[-3000:]


def healthy(url: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, "llmux exited before it was healthy"
    try:
        return requests.get(url + "/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False
