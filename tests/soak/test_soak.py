"""L12: a time-boxed soak of mixed traffic with injected faults (LLMUX_SOAK_SECS, default 45).

Invariants at the end: never two models up, every request answered within its
deadline, books balanced, memory and file descriptors back near where they
started, no zombie children, every log line valid JSON.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import psutil
import pytest
import requests

from tests.e2e.conftest import assert_one_awake
from tests.e2e.test_telemetry import scrape, value

pytestmark = pytest.mark.soak
SECONDS = float(os.environ.get("LLMUX_SOAK_SECS", "45"))


def test_soak(llmux_factory):
    server = llmux_factory(
        model_env={"FAKE_ARGS": "--tokens-per-sec 200 --tokens 10"},
        policy={"request_timeout_secs": 20, "failure_backoff_secs": 0.2},
    )
    worker = psutil.Process(server.worker_pid())
    for model in "abc":  # warm up every path once before measuring
        assert server.chat(model).status_code == 200
    rss_start, fds_start = worker.memory_info().rss, worker.num_fds()
    deadline = time.monotonic() + SECONDS
    counts = {"sent": 0, "bad": [], "kills": 0}
    lock = threading.Lock()

    def client(seed):
        rng = random.Random(seed)
        session = requests.Session()
        while time.monotonic() < deadline:
            model = rng.choice("abc")
            roll = rng.random()
            body = {"model": model, "stream": roll < 0.5}
            try:
                if roll < 0.05:  # leave mid-stream
                    r = session.post(
                        server.url + "/v1/chat/completions",
                        json={**body, "stream": True},
                        stream=True,
                        timeout=30,
                    )
                    r.close()
                    status = 200
                else:
                    r = session.post(server.url + "/v1/chat/completions", json=body, timeout=30)
                    status = r.status_code
            except requests.exceptions.ChunkedEncodingError:
                status = "cut"  # a stream whose backend the chaos killed: cut, never faked
            except requests.RequestException as exc:
                status = repr(exc)
            with lock:
                counts["sent"] += 1
                if status not in (200, 503):  # 503: an injected wake failure
                    counts["bad"].append(status)

    def chaos(seed):
        rng = random.Random(seed)
        while time.monotonic() < deadline - 3:
            time.sleep(rng.uniform(1, 3))
            kind = rng.choice(["wake-fail", "kill-backend", "none"])
            if kind == "wake-fail":
                model = rng.choice("abc")
                server.fault("wake", model, "exit 1")
                time.sleep(0.5)
                server.fault("wake", model, None)
            elif kind == "kill-backend":
                counts["kills"] += 1
                for pid in server.backend_pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=chaos, args=(99,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 60)
        assert not t.is_alive(), "a client hung past every deadline"
    # 502: a request raced a killed backend; "cut": a stream it was serving (8 clients at most)
    cut = [s for s in counts["bad"] if s == "cut"]
    assert len(cut) <= 8 * counts["kills"], (len(cut), counts["kills"])
    bad = [s for s in counts["bad"] if s not in (502, "cut")]
    assert not bad, bad[:5]
    assert counts["sent"] > 50
    time.sleep(1)
    assert_one_awake(server.events())
    m = scrape(server)
    for model in "abc":
        assert value(m, "llmux_model_in_flight", model=model) == 0
        assert value(m, "llmux_request_queue_depth", model=model) == 0
    for model in "abc":  # and it still serves
        assert server.chat(model).status_code == 200
    grown = (worker.memory_info().rss - rss_start) / 2**20
    assert grown < 50, f"RSS grew {grown:.1f} MiB"
    assert worker.num_fds() <= fds_start + 20
    assert not [c for c in worker.children(recursive=True) if c.status() == psutil.STATUS_ZOMBIE]
    for line in server.log_text().splitlines():
        json.loads(line)
    print(f"soak: {counts['sent']} requests in {SECONDS:.0f}s, RSS +{grown:.1f} MiB")
