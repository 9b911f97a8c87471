"""Signals, worker deaths and restarts (catalogue F20-F24): one owner of the hooks, always."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
import requests

from tests.support import free_port, process_alive, wait_for

from .conftest import Llmux, assert_one_awake

pytestmark = pytest.mark.e2e


def gunicorn_conf(server_dir, **settings) -> list[str]:
    path = server_dir / "gunicorn-test.conf.py"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    return ["--gunicorn-config", str(path)]


def awake_backends(server: Llmux) -> set[str]:
    """Models whose fake backend process is running now."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "llmux.demo.fake_backend" in cmd and str(server.dir) in " ".join(cmd):
            found.add(cmd[cmd.index("--model") + 1])
    return found


def test_f21_a_stream_longer_than_graceful_timeout_is_cut(llmux_factory, tmp_path):
    extra = gunicorn_conf(tmp_path, graceful_timeout=2)
    server = llmux_factory(
        extra_args=extra, model_env={"FAKE_ARGS": "--tokens-per-sec 5 --tokens 100"}
    )
    r = server.stream("a")
    lines = r.iter_lines()  # keep it: a collected generator would close the stream
    next(lines)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    body = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in r.iter_content(None):
            body += chunk
    assert 1.5 < time.monotonic() - started < 5
    assert b"[DONE]" not in body
    assert server.proc.wait(10) == 0
    assert awake_backends(server) == {"a"}  # the awake model is left awake


def test_f22_a_worker_killed_mid_switch_is_replaced_without_two_models_up(llmux_factory):
    server = llmux_factory()
    assert server.chat("a").status_code == 200
    server.fault("wake", "b", "sleep 2")  # then starts b's backend, unless killed first
    outcome = {}

    def queued_b():
        try:
            outcome["status"] = requests.post(
                server.url + "/v1/chat/completions", json={"model": "b"}, timeout=30
            ).status_code
        except requests.ConnectionError:  # its worker died under it: nothing else is possible
            outcome["status"] = "cut"

    t = threading.Thread(target=queued_b)
    t.start()
    wait_for(lambda: any(e[1:4] == ("start", "wake", "b") for e in server.events()))
    old = server.worker_pid()
    os.kill(old, signal.SIGKILL)
    t.join(30)
    assert outcome["status"] == "cut"
    master = psutil.Process(server.proc.pid)
    wait_for(lambda: [c.pid for c in master.children()] not in ([], [old]))
    server.fault("wake", "b", None)
    time.sleep(2.5)  # the orphaned wake would have started b's backend by now
    assert awake_backends(server) == set(), "the killed worker's wake hook ran on"
    assert server.chat("a").status_code == 200
    assert server.chat("b").status_code == 200
    assert awake_backends(server) == {"b"}
    log = server.log_records()
    assert any(r.get("event") == "orphaned_hooks_killed" for r in log)


def test_a_restart_adopts_the_model_left_awake(llmux_factory):
    server = llmux_factory()
    assert server.chat("a").status_code == 200
    server.terminate()
    assert awake_backends(server) == {"a"}
    again = Llmux(server.dir, _config_of(server), (), None)
    try:
        assert again.chat("a").status_code == 200
        assert server.hook_runs("wake", "a") == [("wake", "a")], "a was woken twice"
        assert again.chat("b").status_code == 200
        assert awake_backends(server) == {"b"}
    finally:
        again.cleanup()


def _config_of(server):
    import yaml

    return yaml.safe_load(server.config_path.read_text())


def test_a_second_llmux_on_the_same_config_waits_for_the_first(llmux_factory):
    first = llmux_factory()
    assert first.chat("a").status_code == 200
    config = {**_config_of(first), "port": free_port()}
    # same directory, so the same config path: the same lock
    second = Llmux(first.dir, config, (), None, log_name="second.log")
    try:
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(second.url + "/v1/chat/completions", json={"model": "b"}, timeout=1.5)
        assert first.hook_runs() == [("wake", "a")], "the second llmux ran a hook"
        assert any(r.get("event") == "ownership_waiting" for r in second.log_records())
        first.terminate()
        assert second.chat("b").status_code == 200  # it owns the config now: adopts a, then b
        assert first.hook_runs() == [("wake", "a"), ("sleep", "a"), ("wake", "b")]
    finally:
        second.cleanup()


def test_f23_sighup_keeps_streams_and_never_runs_two_owners(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 10 --tokens 15"})
    assert server.chat("a", max_tokens=1).status_code == 200
    results = {}

    def stream(i):
        results[i] = requests.post(
            server.url + "/v1/chat/completions", json={"model": "a", "stream": True}, timeout=30
        )

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: server.status()["models"]["a"]["in_flight"] == 3)
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.1)  # b is sent while the workers hand over: the scenario's timing, not a wait
    b = {}
    tb = threading.Thread(
        target=lambda: b.update(
            r=requests.post(server.url + "/v1/chat/completions", json={"model": "b"}, timeout=30)
        )
    )
    tb.start()
    for t in threads + [tb]:
        t.join(30)
    for i in range(3):
        assert results[i].status_code == 200 and results[i].text.rstrip().endswith("[DONE]")
    assert b["r"].status_code in (200, 503)  # served by the new worker, or refused by the old
    if b["r"].status_code == 503:  # the old worker took it while closing its listener
        assert b["r"].json()["error"]["code"] == "shutting_down"
        # a new connection reaches the new worker, which serves once the old one is gone
        wait_for(
            lambda: (
                requests.post(
                    server.url + "/v1/chat/completions", json={"model": "b"}, timeout=30
                ).status_code
                == 200
            ),
            timeout=30,
        )
    # a was put to sleep only after its streams ended
    events = server.events()
    assert [e[1:4] for e in events if e[2] != "alive"][-4:] == [
        ("start", "sleep", "a"),
        ("end", "sleep", "a"),
        ("start", "wake", "b"),
        ("end", "wake", "b"),
    ]
    assert_one_awake(events)


def test_f24_a_hook_longer_than_the_worker_timeout_does_not_kill_the_worker(
    llmux_factory, tmp_path
):
    extra = gunicorn_conf(tmp_path, timeout=2)
    server = llmux_factory(extra_args=extra, model_env={"HOOK_WAKE_SECS": 4})
    worker = server.worker_pid()
    got = {}
    t = threading.Thread(target=lambda: got.update(r=server.chat("a")))
    t.start()
    # the hub is free while the hook runs: other requests are answered at once
    wait_for(lambda: server.status()["models"]["a"]["state"] == "waking")
    r = requests.get(server.url + "/metrics", timeout=2)
    assert r.status_code == 200
    t.join(20)
    assert got["r"].status_code == 200
    assert server.worker_pid() == worker
    assert "WORKER TIMEOUT" not in server.log_text()
    assert process_alive(worker)
