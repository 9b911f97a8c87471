"""L12: a time-boxed soak of mixed traffic with injected faults (LLMUX_SOAK_SECS, default 45).

Two mixes: ``plain`` (client aborts, wake failures, killed backends) and
``hostile``, which adds what the no-wedge issue found: clients that stop
reading a long answer, clients that hang up before the response headers,
backends sending headers no proxy may pass on, queued clients giving up (their
switches are abandoned), and a wake hook whose server logs to the hook's own
stdout. Invariants at the end: never two models up, every request answered
within its deadline, books balanced (in-flight and queues at 0), every model
still switchable, memory and file descriptors back near where they started,
no zombie children, every log line valid JSON.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from datetime import datetime

import psutil
import pytest
import requests

from tests.e2e.conftest import assert_one_awake
from tests.e2e.test_telemetry import scrape, value
from tests.support.timeline import timeline_matches_status

pytestmark = pytest.mark.soak
SECONDS = float(os.environ.get("LLMUX_SOAK_SECS", "45"))


# the server a wake hook starts without redirecting its output; it logs a line
# per request to the hook's stdout and dies of SIGPIPE if that pipe is closed
CHATTY_WAKE = (
    '"$LLMUX_PYTHON" -m llmux.demo.fake_backend --port "$LLMUX_PORT" --model "$LLMUX_MODEL" '
    '--tokens-per-sec 200 --tokens 10 --chatty &\necho $! > "$pidfile"'
)


def stall(server, rng) -> int:
    """Ask for a long answer, read 4 KB of it, then take nothing more for a while."""
    body = json.dumps(
        {
            "model": rng.choice("ab"),
            "stream": rng.random() < 0.5,
            "max_tokens": 200000,
            "fake": {"fast": True},
        }
    ).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = sock.recv(4096)
        time.sleep(rng.uniform(1.5, 3))  # past the client timeout (1 s)
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1") else 0


def assert_timeouts_explained(records, answered: int) -> None:
    """Each queue timeout waited through a failing switch, and no other 504 was sent.

    A backend the chaos kills while its model wakes fails the switch only at
    ``ready_timeout`` (10 s), so a request queued behind one or two such
    switches may reach ``request_timeout_secs`` and get 504 ``queue_timeout``:
    an answer within its deadline. A queue timeout whose wait overlaps no
    failed switch would be a wedge.
    """

    def at(record) -> float:
        return datetime.fromisoformat(record["timestamp"]).timestamp()

    failing = [  # (start, end) of every failed switch
        (at(r) - r["duration_secs"], at(r)) for r in records if r.get("event") == "switch_failed"
    ]
    timeouts = [
        r for r in records if r.get("event") == "request_dequeued" and r.get("reason") == "timeout"
    ]
    assert len(timeouts) >= answered, (len(timeouts), answered)
    for r in timeouts:
        left = at(r)
        assert any(start <= left and end >= left - r["wait_secs"] for start, end in failing), r


@pytest.mark.parametrize("mix", ["plain", "hostile"])
def test_soak(llmux_factory, mix, tmp_path):
    hostile = mix == "hostile"
    server = llmux_factory(
        model_env={"FAKE_ARGS": "--tokens-per-sec 200 --tokens 10"},
        policy={"request_timeout_secs": 20, "failure_backoff_secs": 0.2},
        proxy={"client_timeout": 1} if hostile else {},
    )
    if hostile:
        server.fault("wake", "c", CHATTY_WAKE)
    worker = psutil.Process(server.worker_pid())
    for model in "abc":  # warm up every path once before measuring
        assert server.chat(model).status_code == 200
    rss_start, fds_start = worker.memory_info().rss, worker.num_fds()
    deadline = time.monotonic() + SECONDS
    counts = {"sent": 0, "bad": [], "kills": 0, "left": 0, "timeouts": 0}
    lock = threading.Lock()

    def answer(r):
        if r.status_code == 504:  # only a queue timeout a failed switch explains: below
            return (504, r.json()["error"]["code"])
        return r.status_code

    def client(seed):
        rng = random.Random(seed)
        session = requests.Session()
        while time.monotonic() < deadline:
            model = rng.choice("abc")
            roll = rng.random()
            body = {"model": model, "stream": roll < 0.5}
            try:
                if hostile and roll < 0.15:
                    status = client_misbehaving(session, rng, model)
                elif roll < 0.05:  # leave mid-stream
                    r = session.post(
                        server.url + "/v1/chat/completions",
                        json={**body, "stream": True},
                        stream=True,
                        timeout=30,
                    )
                    status = answer(r)  # the headers came; then the client leaves
                    r.close()
                else:
                    r = session.post(server.url + "/v1/chat/completions", json=body, timeout=30)
                    status = answer(r)
            except requests.exceptions.ChunkedEncodingError:
                status = "cut"  # a stream whose backend the chaos killed: cut, never faked
            except requests.RequestException as exc:
                status = repr(exc)
            with lock:
                counts["sent"] += 1
                if status == "left":
                    counts["left"] += 1
                elif status == (504, "queue_timeout"):
                    counts["timeouts"] += 1
                elif status not in (200, 503):  # 503: an injected wake failure
                    counts["bad"].append(status)

    def client_misbehaving(session, rng, model):
        kind = rng.choice(["stall", "hang-up", "bad-header", "give-up"])
        if kind == "stall":
            return stall(server, rng)
        if kind == "bad-header":  # the backend's header cannot be passed on: 502
            r = session.post(
                server.url + "/v1/chat/completions",
                json={"model": model, "fake": {"bad_header": True}},
                timeout=30,
            )
            return r.status_code if r.status_code != 502 else 200
        # hang up before the response headers come, or give up while queued
        delay = 3000 if kind == "hang-up" else 0
        try:
            r = requests.post(
                server.url + "/v1/chat/completions",
                json={"model": model, "fake": {"headers_delay_ms": delay}},
                timeout=0.3,
            )
        except requests.exceptions.ReadTimeout:
            return "left"  # llmux must log it: checked at the end
        return r.status_code  # answered within 0.3 s: an ordinary answer

    def chaos(seed):
        rng = random.Random(seed)
        while time.monotonic() < deadline - 3:
            time.sleep(rng.uniform(1, 3))
            kind = rng.choice(["wake-fail", "kill-backend", "none"])
            if kind == "wake-fail":
                model = rng.choice("abc")
                server.fault("wake", model, "exit 1")
                time.sleep(0.5)
                server.fault("wake", model, CHATTY_WAKE if hostile and model == "c" else None)
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
    assert_timeouts_explained(server.log_records(), counts["timeouts"])
    if hostile:  # the misbehaviour really happened, and was answered as designed
        records = server.log_records()
        ends = [r for r in records if r.get("event") == "request_finished"]
        outcomes = {r["outcome"] for r in ends}
        assert {"client_stalled", "client_closed"} <= outcomes, outcomes
        assert any(r.get("code") == "bad_gateway" for r in ends)
        # every client that hung up or gave up is on record as gone
        gone = sum(r["outcome"] in ("client_closed", "client_stalled") for r in ends)
        gone += sum(
            r.get("event") == "request_dequeued" and r.get("reason") == "client_gone"
            for r in records
        )
        assert counts["left"] > 0 and gone >= counts["left"], (gone, counts["left"])
    # the log alone rebuilds the run: the same switches and states as /llmux/status
    story = timeline_matches_status(server, tmp_path / "timeline.html")
    assert story["gaps"] == [], story["gaps"][:5]
    assert len(story["requests"]) >= counts["sent"]
    print(f"soak ({mix}): {counts['sent']} requests in {SECONDS:.0f}s, RSS +{grown:.1f} MiB")
