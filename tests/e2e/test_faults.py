"""Faults in hooks and backends (reliability catalogue F1-F19): bounded, recoverable, no orphans.

Every test's cleanup also fails if any process it started is still alive.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
import requests

from tests.support import process_alive, wait_for

from .test_errors import assert_error

pytestmark = pytest.mark.e2e

FAST_HOOKS = {"wake_timeout": 1.0, "sleep_timeout": 1.0, "alive_timeout": 0.5,
              "ready_timeout": 1.0, "kill_grace": 0.5}  # fmt: skip


def timed(fn, *args, **kwargs):
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - started


def test_f1_wake_fails_once_for_all_waiters_and_recovers(llmux):
    llmux.fault("wake", "b", "echo boom >&2; exit 1")
    with ThreadPool(5) as pool:
        results = pool.map(lambda _: llmux.post(body={"model": "b"}), range(5))
    for r in results:
        assert "boom" in assert_error(r, 503, "model_unavailable", param="model")["message"]
    assert llmux.hook_runs("wake", "b") == [("wake", "b")], "one wake attempt, not five"
    llmux.fault("wake", "b", None)
    assert llmux.chat("b").status_code == 200  # queued until the backoff ends, then woken


def test_f2_f4_a_hanging_wake_is_killed_with_its_grandchildren(llmux_factory):
    server = llmux_factory(hooks=FAST_HOOKS)
    server.fault("wake", "a", "sleep 1000 & sleep 1000 & wait")
    r, took = timed(server.chat, "a")
    assert (
        "timed out after 1.0s"
        in assert_error(r, 503, "model_unavailable", param="model")["message"]
    )
    assert took < 3.0
    # cleanup() fails the test if one of those sleeps survived
    server.fault("wake", "a", None)
    assert server.chat("a").status_code == 200


def test_f3_a_wake_that_keeps_the_pipes_in_a_background_child_returns_at_once(llmux):
    pidfile = llmux.dir / "child.pid"
    llmux.fault("wake", "a", f"sleep 30 & echo $! > {pidfile}; echo started")  # holds our stdout
    r, took = timed(llmux.chat, "a")
    assert r.status_code == 200 and took < 3
    pid = int(pidfile.read_text())
    assert psutil.pid_exists(pid), "llmux killed a child of a hook that succeeded"
    os.kill(pid, signal.SIGKILL)


def test_f5_alive_never_passing_fails_and_cleans_up(llmux_factory):
    server = llmux_factory(hooks=FAST_HOOKS)
    server.fault("alive", "a", "exit 1")
    r, took = timed(server.chat, "a")
    assert (
        "alive hook never passed"
        in assert_error(r, 503, "model_unavailable", param="model")["message"]
    )
    assert took < 3
    assert server.hook_runs("sleep", "a") == [("sleep", "a")]  # the half-woken model cleaned up
    assert server.backend_pids() == []


def test_f6_a_hanging_alive_probe_is_bounded(llmux_factory):
    server = llmux_factory(hooks=FAST_HOOKS)
    server.fault("alive", "a", "sleep 30")
    r, took = timed(server.chat, "a")
    assert_error(r, 503, "model_unavailable", param="model")
    assert took < 4
    starts = [e for e in server.events() if e[2] == "alive" and e[1] == "start"]
    assert 1 <= len(starts) <= 3  # probes one at a time, each killed at alive_timeout


@pytest.mark.parametrize("snippet", ["exit 1", "sleep 30"], ids=["fails", "hangs"])
def test_f7_f8_a_failed_sleep_never_wakes_the_next_model_on_top(llmux_factory, snippet):
    server = llmux_factory(hooks=FAST_HOOKS)
    assert server.chat("a").status_code == 200
    server.fault("sleep", "a", snippet)
    r = server.chat("b")
    assert (
        "could not put 'a' to sleep"
        in assert_error(r, 503, "model_unavailable", param="model")["message"]
    )
    assert server.hook_runs("wake", "b") == []
    assert server.chat("a").status_code == 200  # a still serves
    server.fault("sleep", "a", None)
    assert server.chat("b").status_code == 200  # and the next try goes through


def test_f9_a_hook_flooding_output_keeps_memory_bounded(llmux):
    llmux.chat("a")
    worker = psutil.Process(llmux.worker_pid())
    before = worker.memory_info().rss
    llmux.fault(
        "wake", "b", "head -c 50000000 /dev/zero | tr '\\0' x; head -c 50000000 /dev/zero >&2"
    )
    assert llmux.chat("b").status_code == 200
    grown = worker.memory_info().rss - before
    assert grown < 20 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"


def test_f10_f18_a_backend_that_died_while_idle_is_woken_again(llmux):
    assert llmux.chat("a").status_code == 200
    for pid in llmux.backend_pids():
        os.kill(pid, signal.SIGKILL)  # the awake model's server crashed
        wait_for(lambda pid=pid: not process_alive(pid))
    r = llmux.chat("a")
    assert "refused" in assert_error(r, 502, "bad_gateway")["message"]
    # the refusal made llmux check alive; the model is asleep now and wakes on demand
    wait_for(lambda: llmux.chat("a").status_code == 200, timeout=5)
    assert llmux.hook_runs("wake", "a") == [("wake", "a"), ("wake", "a")]


def test_f11_backend_gone_before_headers_is_502_and_not_retried(llmux):
    assert llmux.chat("a").status_code == 200
    r = llmux.chat("a", fake={"exit_before_headers": True})
    assert_error(r, 502, "bad_gateway")
    hits = [h for h in llmux.backend_hits("a") if h["path"] == "/v1/chat/completions"]
    assert len(hits) == 2  # the first request, and this one exactly once


def test_f14_a_stalled_stream_is_cut_at_the_idle_timeout(llmux_factory):
    server = llmux_factory(proxy={"idle_timeout": 1.0})
    from .test_streaming import read_raw_stream

    started = time.monotonic()
    data = read_raw_stream(server.port, {"model": "a", "stream": True, "fake": {"stall_after": 2}})
    assert 0.9 < time.monotonic() - started < 4
    assert b'"x_seq": 1' in data and b"[DONE]" not in data and not data.endswith(b"0\r\n\r\n")
    r, took = timed(server.chat, "b")  # nothing left in flight on a: the switch is immediate
    assert r.status_code == 200 and took < 3


def test_f16_a_client_gone_while_queued_is_never_forwarded(llmux_factory):
    server = llmux_factory(model_env={"HOOK_WAKE_SECS": 1.5})
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(server.url + "/v1/chat/completions", json={"model": "b"}, timeout=0.4)
    # b finishes waking with nobody waiting, and stays awake
    wait_for(
        lambda: (s := server.status())["models"]["b"]["state"] == "awake" and not s["switching"]
    )
    assert server.backend_hits("b") == []
    r = server.chat("a")
    assert r.status_code == 200
    records = [x for x in server.log_records() if x.get("event") == "request_dequeued"]
    assert [x["reason"] for x in records] == ["client_gone"]


def test_f17_a_restarted_backend_on_the_same_port_gets_no_spurious_502(llmux):
    for model in ("a", "b", "a", "b", "a"):
        for _ in range(3):
            r = llmux.chat(model, stream=True)
            assert r.status_code == 200 and r.text.rstrip().endswith("[DONE]")


class ThreadPool:
    """concurrent.futures with a context manager that returns plain lists."""

    def __init__(self, n):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown()

    def map(self, fn, items):
        return list(self.pool.map(fn, items))


def test_f20_sigterm_during_a_switch(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 20 --tokens 30"})
    assert server.chat("a", max_tokens=1).status_code == 200
    results = {}

    def stream(i):
        results[f"a{i}"] = requests.post(
            server.url + "/v1/chat/completions", json={"model": "a", "stream": True}, timeout=30
        )

    def queued():
        results["b"] = requests.post(
            server.url + "/v1/chat/completions", json={"model": "b"}, timeout=30
        )

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: server.status()["models"]["a"]["in_flight"] == 3)
    threads.append(threading.Thread(target=queued))
    threads[-1].start()
    wait_for(lambda: server.status()["models"]["b"]["queued"] == 1)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(20)
    for i in range(3):  # in-flight streams finish, whole
        assert results[f"a{i}"].status_code == 200
        assert results[f"a{i}"].text.rstrip().endswith("data: [DONE]")
    assert_error(results["b"], 503, "shutting_down")
    assert server.proc.wait(15) == 0
    assert server.hook_runs("wake", "b") == []


def test_sigterm_during_a_wake_lets_the_hook_finish(llmux_factory):
    server = llmux_factory()
    assert server.chat("a").status_code == 200
    # prints as it goes: a hook cut off from llmux dies of SIGPIPE at its next line
    server.fault("wake", "b", "for i in 1 2 3; do sleep 1; echo LLMUX_PROGRESS 0.$i; done")
    box = {}

    def queued():
        box["r"] = requests.post(
            server.url + "/v1/chat/completions",
            json={"model": "b"},
            headers={"X-Request-Id": "queued-for-b"},
            timeout=30,
        )

    thread = threading.Thread(target=queued)
    thread.start()
    wait_for(lambda: ("wake", "b") in server.hook_runs())
    server.proc.send_signal(signal.SIGTERM)
    thread.join(20)
    assert_error(box["r"], 503, "shutting_down")
    assert int(box["r"].headers["Retry-After"]) >= 1
    assert server.proc.wait(15) == 0
    ends = [(kind, model, rc) for _, phase, kind, model, rc in server.events() if phase == "end"]
    assert ("wake", "b", "0") in ends, "the running wake hook was killed with the worker"
    dequeued = [r for r in server.log_records() if r.get("event") == "request_dequeued"]
    assert [(r["reason"], r.get("request_id")) for r in dequeued] == [("shutdown", "queued-for-b")]
