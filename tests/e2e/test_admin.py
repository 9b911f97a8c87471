"""The admin API, idle sleep, preload, adoption and shutdown.sleep_active, end to end."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.support import process_alive, wait_for

from .conftest import assert_one_awake

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-admin-token"


def states(server, token=None) -> dict[str, str]:
    return {n: m["state"] for n, m in server.status(token)["models"].items()}


def records(server, event) -> list[dict]:
    return [r for r in server.log_records() if r.get("event") == event]


class Traffic:
    """Clients sending requests for ``model`` in a loop until stopped; every answer kept."""

    def __init__(self, server, model, clients=3, **extra):
        self.server, self.model, self.extra = server, model, extra
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _loop(self):
        with requests.Session() as session:
            while not self._stop.is_set():
                body = {"model": self.model, "messages": [], **self.extra}
                r = session.post(self.server.url + "/v1/chat/completions", json=body, timeout=30)
                self.statuses.append(r.status_code)

    def stop(self) -> list[int]:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.statuses


# --- the endpoints and their guard ---


def test_admin_api_with_a_token_needs_it_everywhere(llmux_factory):
    server = llmux_factory(admin={"token": TOKEN})
    for method, path in [
        ("GET", "/status"),
        ("POST", "/models/a/wake"),
        ("POST", "/models/a/sleep"),
        ("POST", "/reload"),
    ]:
        for token in (None, "wrong"):
            r = server.admin(method, path, token)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
    assert server.hook_runs() == []  # nothing happened without the token
    status = server.status(TOKEN)
    assert status["active"] is None and set(status["models"]) == {"a", "b", "c"}
    assert status["version"] and status["uptime_secs"] > 0
    # the page itself holds no data: it is served, and asks for the token
    page = requests.get(server.url + "/llmux/ui", timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_admin_token_from_the_environment(llmux_factory):
    server = llmux_factory(env={"LLMUX_ADMIN_TOKEN": TOKEN})
    assert server.admin("GET", "/status").status_code == 401
    assert server.admin("GET", "/status", TOKEN).status_code == 200


def test_without_a_token_loopback_is_let_in(llmux):
    status = llmux.status()
    assert {m["state"] for m in status["models"].values()} == {"asleep"}
    assert llmux.admin("POST", "/models/nope/wake").status_code == 404
    assert llmux.admin("GET", "/reload").status_code == 404  # POST only


def test_status_reports_queue_switch_phases_costs_and_hook_failures(llmux_factory):
    server = llmux_factory(model_env={"HOOK_WAKE_SECS": "0.3"})
    assert server.chat("a").status_code == 200
    server.fault("wake", "b", 'echo "CUDA out of memory: tried to allocate 20 GiB" >&2; exit 7')
    box = {}
    waiting = threading.Thread(target=lambda: box.update(r=server.chat("b")))
    waiting.start()
    wait_for(lambda: server.status()["models"]["b"]["queued"] == 1 or "r" in box, timeout=5)
    waiting.join(30)
    assert box["r"].status_code == 503
    status = server.status()
    last = status["last_switch"]
    assert (last["from"], last["to"], last["ok"]) == ("a", "b", False)
    assert set(last["phases"]) == {"drain", "sleep", "wake"}
    failure = status["models"]["b"]["last_hook_failure"]
    assert failure["hook"] == "wake" and failure["exit_code"] == 7
    assert "CUDA out of memory" in failure["stderr_tail"]
    assert status["hook_failures"][0]["model"] == "b"
    assert {"from": "idle", "to": "a"} in [
        {k: c[k] for k in ("from", "to")} for c in status["switch_costs"]
    ]
    kinds = [(e["kind"], e["from"], e["to"], e["ok"]) for e in status["timeline"]]
    assert kinds == [("switch", None, "a", True), ("switch", "a", "b", False)]
    r = requests.get(server.url + "/v1/models", timeout=5)
    assert {m["id"]: m["state"] for m in r.json()["data"]}["a"] == "asleep"


def test_wake_and_sleep_through_the_api_while_requests_flow(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 200 --tokens 10"})
    traffic = Traffic(server, "a")
    wait_for(lambda: len(traffic.statuses) >= 5)
    r = server.admin("POST", "/models/b/wake")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "awake"  # at the moment of the answer
    r = server.admin("POST", "/models/a/sleep")  # a may be awake again for the traffic
    assert r.status_code == 200 and r.json()["state"] in ("asleep", "awake")
    served = len(traffic.statuses)
    wait_for(lambda: len(traffic.statuses) >= served + 5)  # traffic goes on after the sleep
    statuses = traffic.stop()
    assert statuses and set(statuses) == {200}, statuses  # nothing lost
    assert ("wake", "b") in server.hook_runs()
    assert_one_awake(server.events())
    # sleep of a model that is asleep is a no-op answered at once
    before = server.hook_runs()
    assert server.admin("POST", "/models/c/sleep").json() == {"model": "c", "state": "asleep"}
    assert server.hook_runs() == before


def test_sleep_through_the_api_waits_for_the_stream_in_flight(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 10 --tokens 10"})
    stream = server.stream("a")
    assert stream.status_code == 200
    started = time.monotonic()
    r = server.admin("POST", "/models/a/sleep")
    took = time.monotonic() - started
    assert r.json() == {"model": "a", "state": "asleep"}
    assert stream.text.rstrip().endswith("[DONE]")  # the stream was finished, not cut
    assert took > 0.5
    [rec] = records(server, "model_put_to_sleep")
    assert rec["reason"] == "admin"


# --- idle sleep and preload ---


def test_idle_sleep_after_the_idle_time_and_never_during_a_stream(llmux_factory):
    server = llmux_factory(
        policy={"idle_sleep_secs": 0.6, "failure_backoff_secs": 0.2},
        model_env={"FAKE_ARGS": "--tokens-per-sec 10 --tokens 15"},
    )
    stream = server.stream("a")  # 1.5 s of tokens, longer than the idle time
    chunks = [line for line in stream.iter_lines() if line]
    ended = time.monotonic()
    assert chunks[-1] == b"data: [DONE]"
    assert server.hook_runs() == [("wake", "a")]  # not put to sleep mid-stream
    wait_for(lambda: states(server)["a"] == "asleep", timeout=5)
    idle = time.monotonic() - ended
    assert 0.5 < idle < 2.5, idle
    assert server.hook_runs() == [("wake", "a"), ("sleep", "a")]
    [rec] = records(server, "model_put_to_sleep")
    assert rec["reason"] == "idle" and rec["model"] == "a"
    # the next request simply wakes it again
    assert server.chat("a", max_tokens=1).status_code == 200


def test_a_model_can_opt_out_of_idle_sleep(llmux_factory):
    server = llmux_factory(policy={"idle_sleep_secs": 0.3, "failure_backoff_secs": 0.2})
    server.rewrite_config(lambda c: c["models"]["b"].update(idle_sleep_secs=0))
    server.admin("POST", "/reload")
    assert server.chat("b", max_tokens=1).status_code == 200
    time.sleep(1.2)  # four idle times: nothing to wait for, since nothing may happen
    assert states(server)["b"] == "awake"
    assert server.chat("a", max_tokens=1).status_code == 200
    wait_for(lambda: states(server)["a"] == "asleep", timeout=5)


def test_preload_wakes_the_model_at_start(llmux_factory):
    server = llmux_factory(startup={"preload": "b"})
    wait_for(lambda: states(server)["b"] == "awake", timeout=10)
    assert server.hook_runs() == [("wake", "b")]
    r = server.chat("b")
    assert r.status_code == 200 and server.hook_runs() == [("wake", "b")]
    [rec] = records(server, "preload")
    assert rec["model"] == "b"


# --- adoption ---


def test_adoption_takes_an_alive_model_as_awake(llmux_factory):
    server = llmux_factory(startup={"adopt": True}, prestart=["b"])
    wait_for(lambda: states(server)["b"] == "awake", timeout=10)
    assert server.hook_runs() == []  # probed with alive only
    assert server.chat("b").status_code == 200
    assert server.hook_runs() == []  # served by the backend that was already up


def test_adoption_with_two_alive_models_keeps_one_and_sleeps_the_other(llmux_factory):
    server = llmux_factory(startup={"adopt": True, "preload": "c"}, prestart=["a", "c"])
    wait_for(lambda: states(server)["c"] == "awake", timeout=10)  # the preload is preferred
    assert server.hook_runs() == [("sleep", "a")]
    assert len(server.backend_pids()) == 1
    assert states(server) == {"a": "asleep", "b": "asleep", "c": "awake"}
    assert server.chat("c").status_code == 200 and server.hook_runs() == [("sleep", "a")]


def test_without_adoption_a_stray_backend_is_not_probed(llmux_factory):
    server = llmux_factory(prestart=["a"])
    wait_for(lambda: not server.status()["switching"])  # start-up's check is over
    assert states(server)["a"] == "asleep"
    assert [e for e in server.events() if e[2] == "alive"] == []


# --- the command line ---


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmux", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_llmux_status_wake_sleep_from_the_command_line(llmux_factory):
    server = llmux_factory(admin={"token": TOKEN})
    config = str(server.config_path)
    result = run_cli("wake", "a", "-c", config)  # url and token from the config
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "a: awake"
    result = run_cli("status", "-c", config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "awake: a" in lines[0]
    table = {line.split()[0]: line.split()[1] for line in lines[3:6]}
    assert table == {"a": "awake", "b": "asleep", "c": "asleep"}
    result = run_cli("status", "--url", server.url, "--json")
    assert result.returncode == 1 and "401 unauthorized" in result.stderr
    result = run_cli("status", "--url", server.url, "--token", TOKEN, "--json")
    assert result.returncode == 0 and '"active": "a"' in result.stdout
    assert run_cli("sleep", "a", "-c", config).stdout.strip() == "a: asleep"


def test_llmux_status_says_when_llmux_is_not_running():
    result = run_cli("status", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach llmux at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


# --- shutdown ---


def test_shutdown_sleep_active_runs_the_sleep_hook_after_the_drain(llmux_factory):
    server = llmux_factory(
        shutdown={"sleep_active": True}, model_env={"FAKE_ARGS": "--tokens-per-sec 10 --tokens 8"}
    )
    assert server.chat("a", max_tokens=1).status_code == 200
    [backend] = server.backend_pids()
    stream = server.stream("a")  # its headers are in: admitted, in flight
    server.proc.send_signal(15)
    assert stream.text.rstrip().endswith("[DONE]")  # drained first
    assert server.terminate() == 0
    assert server.hook_runs() == [("wake", "a"), ("sleep", "a")]
    assert not process_alive(backend)
    [rec] = records(server, "model_put_to_sleep")
    assert rec["reason"] == "shutdown"


def test_without_sleep_active_the_model_stays_up_at_exit(llmux):
    assert llmux.chat("a").status_code == 200
    [backend] = llmux.backend_pids()
    assert llmux.terminate() == 0
    assert llmux.hook_runs() == [("wake", "a")]
    assert process_alive(backend)
