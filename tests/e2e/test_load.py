"""Concurrency and load (catalogue L1-L11, L14), bounded in time, loopback only."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support import wait_for

from .conftest import assert_one_awake
from .test_telemetry import scrape, value

pytestmark = pytest.mark.e2e


def test_l1_storm_of_200_requests_over_three_models(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 200 --tokens 8"})
    rng = random.Random(7)
    plan = [(rng.choice("abc"), rng.random() < 0.5, i) for i in range(200)]
    barrier = threading.Barrier(50)

    def one(item):
        model, stream, i = item
        body = json.dumps({"model": model, "stream": stream, "messages": [], "n": i}).encode()
        if i < 50:
            barrier.wait(10)
        r = requests.post(
            server.url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=120,
        )
        return model, stream, body, r

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(one, plan))
    sha = {}
    for model, stream, body, r in results:
        assert r.status_code == 200, r.text
        text = r.text
        assert f'"x_served_by": "{model}"' in text
        assert hashlib.sha256(body).hexdigest() in text  # the bytes sent, nothing else
        if stream:
            assert text.rstrip().endswith("data: [DONE]")
        sha[hashlib.sha256(body).hexdigest()] = model
    events = server.events()
    assert_one_awake(events)
    wakes = [e for e in events if e[1:3] == ("start", "wake")]
    m = scrape(server)
    switches = sum(
        v
        for (n, labels), v in m.items()
        if n == "llmux_switch_total" and ("result", "success") in labels
    )
    assert switches == len(wakes)
    for model in "abc":
        assert value(m, "llmux_model_in_flight", model=model) == 0
        assert value(m, "llmux_request_queue_depth", model=model) == 0
    # what each backend received is exactly what was sent to it
    for model in "abc":
        for hit in server.backend_hits(model):
            assert sha[hit["x_body_sha256"]] == model


def concurrent_chats(server, model: str, n: int, timeout: float) -> list:
    """``n`` requests for ``model`` at once, each on its own connection; their answers."""
    with ThreadPoolExecutor(n) as pool:
        return list(
            pool.map(
                lambda _: requests.post(
                    server.url + "/v1/chat/completions", json={"model": model}, timeout=timeout
                ),
                range(n),
            )
        )


def test_l2_fifty_requests_for_a_cold_model_make_one_wake(llmux_factory):
    server = llmux_factory(model_env={"HOOK_WAKE_SECS": 0.3})
    assert server.chat("a").status_code == 200
    rs = concurrent_chats(server, "b", 50, timeout=60)
    assert [r.status_code for r in rs] == [200] * 50
    assert server.hook_runs() == [("wake", "a"), ("sleep", "a"), ("wake", "b")]
    assert len(server.backend_pids()) == 1


def test_l3_in_flight_streams_finish_before_the_sleep(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 20 --tokens 20"})
    assert server.chat("a", max_tokens=1).status_code == 200
    ends = []

    def stream(_):
        r = requests.post(
            server.url + "/v1/chat/completions", json={"model": "a", "stream": True}, timeout=30
        )
        ends.append(time.time())
        return r

    with ThreadPoolExecutor(11) as pool:
        streams = [pool.submit(stream, i) for i in range(10)]
        wait_for(lambda: server.status()["models"]["a"]["in_flight"] == 10)
        b = pool.submit(
            lambda: requests.post(
                server.url + "/v1/chat/completions", json={"model": "b"}, timeout=30
            )
        )
        assert b.result().status_code == 200
        for f in streams:
            assert f.result().text.rstrip().endswith("data: [DONE]")
    sleep_start = [e[0] for e in server.events() if e[1:4] == ("start", "sleep", "a")][0]
    assert sleep_start > max(ends) - 0.05  # the last stream ended before a was put to sleep


def test_l5_requests_racing_a_slow_sleep_never_wedge(llmux_factory):
    server = llmux_factory(model_env={"HOOK_SLEEP_SECS": 0.3})
    rng = random.Random(5)
    for _ in range(6):
        assert server.chat("a", max_tokens=1).status_code == 200
        with ThreadPoolExecutor(2) as pool:
            b = pool.submit(server.chat, "b", max_tokens=1)
            time.sleep(rng.random() * 0.4)  # inside or just after a's sleep hook
            a = pool.submit(
                lambda: requests.post(
                    server.url + "/v1/chat/completions", json={"model": "a"}, timeout=20
                )
            )
            assert b.result().status_code == 200 and a.result().status_code == 200
    started = time.monotonic()
    assert server.chat("a", max_tokens=1).status_code == 200
    assert time.monotonic() - started < 2
    assert_one_awake(server.events())


def test_l6_ping_pong_without_think_time(llmux):
    deadline = time.monotonic() + 6
    errors, count = [], 0

    def client(models):
        nonlocal count
        s = requests.Session()
        while time.monotonic() < deadline:
            for m in models:
                r = s.post(llmux.url + "/v1/chat/completions", json={"model": m}, timeout=30)
                count += 1
                if r.status_code != 200:
                    errors.append(r.status_code)

    threads = [threading.Thread(target=client, args=(ms,)) for ms in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and count > 4
    assert_one_awake(llmux.events())
    assert len(llmux.hook_runs("wake")) <= count


def test_l7_same_model_requests_run_in_parallel(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--latency-ms 300"})
    assert server.chat("a").status_code == 200
    started = time.monotonic()
    rs = concurrent_chats(server, "a", 100, timeout=30)
    took = time.monotonic() - started
    assert [r.status_code for r in rs] == [200] * 100
    assert took < 5, f"100 x 300 ms took {took:.1f}s: requests were serialised"
    assert server.hook_runs() == [("wake", "a")]


def test_l9_one_keep_alive_connection_across_models(llmux):
    conn = http.client.HTTPConnection("127.0.0.1", llmux.port, timeout=30)
    try:
        ports = set()
        for model in ("a", "b", "a"):
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=json.dumps({"model": model}),
                headers={"Content-Type": "application/json"},
            )
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["x_served_by"] == model
            assert r.getheader("Connection", "keep-alive").lower() != "close"
            ports.add(conn.sock.getsockname()[1])
        assert len(ports) == 1
    finally:
        conn.close()


def test_l10_mixed_outcomes_keep_the_books_exact(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 100 --tokens 20"})
    rng = random.Random(3)

    def one(i):
        model = rng.choice("ab")
        kind = rng.random()
        if kind < 0.1:  # a client that leaves mid-stream
            r = requests.post(
                server.url + "/v1/chat/completions",
                json={"model": model, "stream": True},
                stream=True,
                timeout=30,
            )
            next(r.iter_lines())
            r.close()
            return model, "abort"
        if kind < 0.15:
            r = server_post(model, {"fake": {"status": 500}})
            assert r.status_code == 500  # passed through, not rewritten, not retried
            return model, 500
        r = server_post(model, {})
        assert r.status_code == 200
        return model, 200

    def server_post(model, extra):
        return requests.post(
            server.url + "/v1/chat/completions", json={"model": model, **extra}, timeout=60
        )

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(one, range(120)))

    def total(m):
        return sum(v for (n, _), v in m.items() if n == "llmux_requests_total")

    # aborted streams are noticed at their next chunk, and counted then
    wait_for(lambda: total(scrape(server)) == len(outcomes))
    m = scrape(server)
    for status in (200, 500):
        for model in "ab":
            want = sum(1 for o in outcomes if o == (model, status))
            aborted = sum(1 for o in outcomes if o == (model, "abort"))
            got = value(m, "llmux_requests_total", model=model, status=str(status))
            if status == 200:
                assert got == want + aborted  # a cut stream was sent as a 200
            else:
                assert got == want
    finished = [r for r in server.log_records() if r.get("event") == "request_finished"]
    assert len(finished) == len(outcomes)
    assert sum(1 for r in finished if r["outcome"] == "client_closed") == sum(
        1 for o in outcomes if o[1] == "abort"
    )
    for model in "ab":
        assert value(m, "llmux_model_in_flight", model=model) == 0
    started = time.monotonic()
    assert server.chat("b" if server.chat("a").ok else "a").status_code == 200
    assert time.monotonic() - started < 5  # nothing stranded in flight


def test_l11_overload_gets_429_at_once_and_recovers(llmux_factory):
    server = llmux_factory(
        policy={"max_queue_depth": 20}, model_env={"FAKE_ARGS": "--tokens-per-sec 10 --tokens 15"}
    )
    assert server.chat("a", max_tokens=1).status_code == 200
    hold = threading.Thread(
        target=lambda: requests.post(
            server.url + "/v1/chat/completions", json={"model": "a", "stream": True}, timeout=30
        )
    )
    hold.start()
    wait_for(lambda: server.status()["models"]["a"]["in_flight"] == 1)
    started = time.monotonic()

    def b(_):
        r = requests.post(
            server.url + "/v1/chat/completions", json={"model": "b", "max_tokens": 1}, timeout=60
        )
        return r.status_code, time.monotonic() - started, r.headers.get("Retry-After")

    with ThreadPoolExecutor(60) as pool:
        rs = list(pool.map(b, range(60)))
    refused = [x for x in rs if x[0] == 429]
    served = [x for x in rs if x[0] == 200]
    assert len(served) == 20 and len(refused) == 40
    assert all(t < 1.0 and ra for _, t, ra in refused), "429 must come at once"
    hold.join(30)
    assert server.chat("b", max_tokens=1).status_code == 200


def test_l14_a_large_body_is_forwarded_byte_identical_after_a_switch(llmux):
    assert llmux.chat("a").status_code == 200
    text = "é/\\\\u00e9 \u2603 " * 40000
    body = json.dumps({"model": "b", "stream": True, "prompt": text}, ensure_ascii=False).encode()
    body = body[: 2**20 - 1 - 2] + b'"}' if len(body) > 2**20 - 1 else body
    r = requests.post(
        llmux.url + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text[:200]
    assert hashlib.sha256(body).hexdigest() in r.text
