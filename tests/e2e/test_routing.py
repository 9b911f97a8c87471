"""llmux serve, real hooks, real fake backends: routing and switching end to end."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .conftest import assert_one_awake

pytestmark = pytest.mark.e2e


def test_routes_to_the_backend_of_the_requested_model(llmux):
    for model in ("a", "b", "a"):
        r = llmux.chat(model)
        assert r.status_code == 200, r.text
        assert r.json()["x_served_by"] == model
        assert r.headers["X-Fake-Model"] == model


def test_a_switch_sleeps_the_old_model_and_wakes_the_new(llmux):
    assert llmux.chat("a").status_code == 200
    assert llmux.chat("b").status_code == 200
    assert llmux.hook_runs() == [("wake", "a"), ("sleep", "a"), ("wake", "b")]
    # the slept backend is gone: only b's pidfile remains
    assert len(llmux.backend_pids()) == 1


def test_repeated_requests_cause_no_switch(llmux):
    for _ in range(5):
        assert llmux.chat("a").status_code == 200
    assert llmux.hook_runs() == [("wake", "a")]


def test_body_and_query_are_forwarded_unchanged(llmux):
    raw = b'{"model": "a",  "messages": [{"role":"user","content":"h\\u00e9"}], "x": [1,2.50]}'
    r = llmux.session.post(
        llmux.url + "/v1/chat/completions?api-version=2&x=%2F",
        data=raw,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200
    import hashlib

    assert r.json()["x_body_sha256"] == hashlib.sha256(raw).hexdigest()


def test_switch_takes_at_least_the_hooks_time(llmux_factory):
    server = llmux_factory(model_env={"HOOK_WAKE_SECS": 0.1, "HOOK_SLEEP_SECS": 0.05})
    assert server.chat("a").status_code == 200
    started = time.monotonic()
    assert server.chat("b").status_code == 200
    assert time.monotonic() - started >= 0.12 + 0.03


def test_ten_concurrent_requests_for_a_cold_model_cause_one_wake(llmux_factory):
    server = llmux_factory(model_env={"HOOK_WAKE_SECS": 0.2})
    with ThreadPoolExecutor(10) as pool:
        results = list(
            pool.map(
                lambda _: requests.post(
                    server.url + "/v1/chat/completions",
                    json={"model": "b", "messages": []},
                    timeout=30,
                ),
                range(10),
            )
        )
    assert [r.status_code for r in results] == [200] * 10
    assert {r.json()["x_served_by"] for r in results} == {"b"}
    assert server.hook_runs() == [("wake", "b")]


def test_six_concurrent_alternating_requests_all_succeed(llmux):
    models = ["a", "b"] * 3
    barrier = threading.Barrier(6)

    def one(model):
        barrier.wait()
        return model, requests.post(
            llmux.url + "/v1/chat/completions",
            json={"model": model, "messages": [], "stream": model == "b"},
            timeout=30,
        )

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, models))
    for model, r in results:
        assert r.status_code == 200
        assert f'"x_served_by": "{model}"' in r.text
    assert_one_awake(llmux.events())


def test_models_listing(llmux_factory):
    server = llmux_factory(models=("zeta", "alpha", "org/model-1"))
    r = requests.get(server.url + "/v1/models", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    signals = {
        "state": "asleep",
        "in_flight": 0,
        "queued": 0,
        "oldest_wait_secs": 0.0,
        "estimated_wait_secs": None,  # nothing measured or declared yet
        "node": f"{socket.gethostname()}:{server.port}",
    }
    assert r.json() == {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "llmux",
                "state": "asleep",
                "llmux": signals,
            }
            for name in ("alpha", "org/model-1", "zeta")
        ],
    }
    r = requests.get(server.url + "/v1/models/org/model-1", timeout=5)
    assert r.json()["id"] == "org/model-1"
    r = requests.get(server.url + "/v1/models/nope", timeout=5)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert requests.get(server.url + "/health", timeout=5).json() == {"status": "ok"}
    assert server.hook_runs() == []  # nothing here wakes a model


def test_gunicorn_command_line_works_too(tmp_path):
    """`gunicorn -c gunicorn.conf.py` with LLMUX_CONFIG, as an operator would run it."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from tests.support import free_port

    from .conftest import model_entry

    port = free_port()
    config = {"port": port, "models": {"m": model_entry(free_port())}}
    path = tmp_path / "llmux.yaml"
    path.write_text(yaml.safe_dump(config))
    root = Path(__file__).resolve().parents[2]
    gunicorn = Path(sys.executable).parent / "gunicorn"
    env = dict(os.environ, LLMUX_CONFIG=str(path), LLMUX_TEST_DIR=str(tmp_path))
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [str(gunicorn), "-c", str(root / "gunicorn.conf.py")],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = requests.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": "m", "messages": []},
                    timeout=10,
                )
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["x_served_by"] == "m"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        log.close()
        for pid_file in (tmp_path / "run").glob("*.pid"):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
