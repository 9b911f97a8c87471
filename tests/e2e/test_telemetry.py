"""One scenario, read back from /metrics and from the JSON log alone."""

from __future__ import annotations

import json
import socket

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import wait_for
from tests.support.timeline import timeline_matches_status

pytestmark = pytest.mark.e2e


def scrape(server) -> dict[tuple[str, frozenset], float]:
    text = requests.get(server.url + "/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_scenario_metrics_and_events(llmux_factory, tmp_path):
    server = llmux_factory(models=("a", "b"), policy={"request_timeout_secs": 1.0})
    rid = "scenario-42"
    # 1. cold start, 2. switch
    assert server.chat("a", max_tokens=2).status_code == 200
    assert server.chat("b", max_tokens=2, **{}).status_code == 200
    # 3. wake failure
    server.fault("wake", "a", "echo 'no GPU memory' >&2; exit 3")
    assert server.chat("a").status_code == 503
    # 4. recovery without a restart (after failure_backoff_secs)
    server.fault("wake", "a", None)  # the next request waits out failure_backoff_secs
    r = server.post(
        body={"model": "a", "messages": [], "max_tokens": 2}, headers={"X-Request-Id": rid}
    )
    assert r.status_code == 200 and r.headers["X-Request-Id"] == rid
    # 5. one streamed request
    r = server.chat("a", stream=True, max_tokens=3)
    assert r.status_code == 200 and r.text.rstrip().endswith("[DONE]")
    # 6. one queue timeout: b's wake outlasts request_timeout_secs and goes on
    server.fault("wake", "b", "sleep 1.5")
    assert server.chat("b").status_code == 504
    wait_for(lambda: value(scrape(server), "llmux_model_state", model="b", state="awake") == 1)

    m = scrape(server)
    switch = "llmux_switch_total"
    assert value(m, switch, **{"from": "idle", "to": "a", "result": "success"}) == 2
    assert value(m, switch, **{"from": "a", "to": "b", "result": "success"}) == 2
    assert value(m, switch, **{"from": "b", "to": "a", "result": "failure"}) == 1
    assert sum(v for (n, _), v in m.items() if n == switch) == 5
    count = "llmux_switch_duration_seconds_count"
    assert value(m, count, **{"from": "idle", "to": "a"}) == 2
    assert value(m, count, **{"from": "a", "to": "b"}) == 2
    assert value(m, count, **{"from": "b", "to": "a"}) == 0  # failures are not durations
    assert value(m, "llmux_switch_duration_seconds_sum", **{"from": "a", "to": "b"}) >= 1.5
    drains = "llmux_switch_drain_duration_seconds_count"
    assert value(m, drains, **{"from": "a", "to": "b"}) == 2
    assert value(m, drains, **{"from": "b", "to": "a"}) == 1
    assert value(m, drains, **{"from": "idle", "to": "a"}) == 0  # nothing to drain
    assert value(m, "llmux_switch_cost_ema_seconds", **{"from": "a", "to": "b"}) > 0.3
    assert value(m, "llmux_model_active_duration_seconds_count", model="a") == 2
    assert value(m, "llmux_model_active_duration_seconds_count", model="b") == 1
    assert value(m, "llmux_hook_failures_total", model="a", hook="wake") == 1
    assert value(m, "llmux_hook_duration_seconds_count", model="a", hook="wake") == 3
    assert value(m, "llmux_hook_duration_seconds_count", model="b", hook="sleep") == 1
    requests_total = "llmux_requests_total"
    assert value(m, requests_total, model="a", status="200") == 3
    assert value(m, requests_total, model="a", status="503") == 1
    assert value(m, requests_total, model="b", status="200") == 1
    assert value(m, requests_total, model="b", status="504") == 1
    assert value(m, "llmux_request_duration_seconds_count", model="b", status="504") == 1
    assert value(m, "llmux_request_ttfb_seconds_count", model="a") == 3
    assert value(m, "llmux_request_queue_wait_seconds_count", model="a") == 3
    for model in ("a", "b"):
        assert value(m, "llmux_request_queue_depth", model=model) == 0
        assert value(m, "llmux_model_in_flight", model=model) == 0
    assert value(m, "llmux_model_state", model="a", state="asleep") == 1
    assert value(m, "llmux_build_info", version=__import__("llmux").__version__) == 1
    assert value(m, "process_resident_memory_bytes") > 0
    buckets = sorted(
        float(dict(labels)["le"])
        for (name, labels), _ in m.items()
        if name == "llmux_switch_duration_seconds_bucket" and dict(labels)["from"] == "a"
    )
    assert buckets[0] == 0.001 and buckets[-2] == 1800.0 and buckets[-1] == float("inf")

    # --- the log alone tells the story ---
    lines = server.log_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for rec in records:
        assert {"timestamp", "level", "logger", "message"} <= rec.keys()
    spec_events = {
        "switch_started": {"from", "to"},
        "model_activated": {"model", "from", "duration_secs"},
        "switch_failed": {"model", "from", "error"},
        "hook_completed": {"model", "hook", "duration_secs"},
        "hook_failed": {"model", "hook", "exit_code", "duration_secs", "stderr"},
        "request_timeout": {"model", "timeout_secs"},
    }
    story = []
    for rec in records:
        event = rec.get("event")
        if event in spec_events:
            assert spec_events[event] <= rec.keys(), rec
        if event in ("switch_started", "model_activated", "switch_failed", "request_timeout"):
            story.append((event, rec.get("from"), rec.get("to") or rec.get("model")))
        if event == "hook_failed":
            assert rec["exit_code"] == 3 and "no GPU memory" in rec["stderr"]
    assert story == [
        ("switch_started", "idle", "a"),
        ("model_activated", "idle", "a"),
        ("switch_started", "a", "b"),
        ("model_activated", "a", "b"),
        ("switch_started", "b", "a"),
        ("switch_failed", "b", "a"),
        ("switch_started", "idle", "a"),
        ("model_activated", "idle", "a"),
        ("switch_started", "a", "b"),
        ("request_timeout", None, "b"),
        ("model_activated", "a", "b"),
    ]
    finished = [r for r in records if r.get("event") == "request_finished"]
    assert [(r["model"], r["status"], r["outcome"]) for r in finished] == [
        ("a", 200, "completed"),
        ("b", 200, "completed"),
        ("a", 503, "error"),
        ("a", 200, "completed"),
        ("a", 200, "completed"),
        ("b", 504, "error"),
    ]
    assert all(r["request_id"] and r["duration_secs"] >= r["wait_secs"] for r in finished)
    assert finished[2]["code"] == "model_unavailable"
    # the queue timeout waited its request_timeout_secs (1 s), never admitted
    assert finished[5]["code"] == "queue_timeout" and 0.9 <= finished[5]["wait_secs"] < 1.5
    tagged = [r for r in records if r.get("request_id") == rid]
    assert {r.get("event") for r in tagged} >= {
        "request_queued",
        "request_admitted",
        "request_finished",
    }
    assert any(r["logger"] == "gunicorn.access" for r in tagged)
    sleep_failed = [r for r in records if r.get("event") == "hook_failed"]
    assert len(sleep_failed) == 1

    # --- llmux timeline rebuilds the same run from the log alone ---
    story = timeline_matches_status(server, tmp_path / "timeline.html")
    assert story["gaps"] == []  # the whole log, from gunicorn's start, no line lost
    assert [(s["from"], s["to"], s["result"]) for s in story["switches"]] == [
        ("idle", "a", "success"),
        ("a", "b", "success"),
        ("b", "a", "failure"),
        ("idle", "a", "success"),
        ("a", "b", "success"),
    ]
    assert [i["state"] for i in story["states"]["a"]] == [
        "asleep", "waking", "awake", "draining", "sleeping", "asleep", "waking", "failed",
        "waking", "awake", "draining", "sleeping", "asleep",
    ]  # fmt: skip
    failed = [h for h in story["hooks"] if h["result"] == "failed"]
    assert [(h["model"], h["hook"], h["exit_code"]) for h in failed] == [("a", "wake", 3)]
    assert "no GPU memory" in failed[0]["stderr"]
    by_id = {r["request_id"]: r for r in story["requests"]}
    assert len(by_id) == len(finished)
    assert {(r["model"], r["status"]) for r in by_id.values()} == {
        (r["model"], r["status"]) for r in finished
    }
    tagged = by_id[rid]
    assert tagged["queued_at"] <= tagged["admitted_at"] <= tagged["finished_at"]
    assert tagged["wait_secs"] == finished[3]["wait_secs"]


def test_openmetrics_when_asked(llmux):
    r = requests.get(
        llmux.url + "/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=5
    )
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_unknown_models_never_become_label_values(llmux):
    for i in range(20):
        llmux.chat(f"unknown-{i}")
    text = requests.get(llmux.url + "/metrics", timeout=5).text
    assert "unknown-" not in text


def test_request_id_is_sanitised(llmux):
    r = llmux.post(
        body={"model": "a", "fake": {"echo_headers": True}},
        headers={"X-Request-Id": "evil id with spaces"},
    )
    assert r.headers["X-Request-Id"] != "evil id with spaces"
    assert len(r.headers["X-Request-Id"]) == 32
    assert r.json()["x_headers"]["X-Request-Id"] == r.headers["X-Request-Id"]


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_log_injection(llmux_factory, log_format):
    server = llmux_factory(extra_args=("--log-format", log_format))
    forged = '","level":"CRITICAL","logger":"forged","message":"x'
    body = json.dumps({"model": "a\nCRITICAL forged line", "messages": []}).encode()

    def send(headers: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                + headers
                + b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            return sock.recv(65536)

    assert send(b"User-Agent: " + forged.encode() + b"\r\n").startswith(b"HTTP/1.1 404")
    # control characters in a header never get past gunicorn's parser
    assert send(b"User-Agent: a\x1b[2Jb\r\n").startswith(b"HTTP/1.1 400")
    assert server.chat("a").status_code == 200
    server.terminate()
    text = server.log_text()
    assert "\x1b" not in text
    access = [line for line in text.splitlines() if "CRITICAL" in line]
    assert len(access) == 1 and "gunicorn.access" in access[0]  # logged as data, one line
    for line in text.splitlines():
        assert not line.startswith("CRITICAL") and "CRITICAL forged line" not in line
        if log_format == "json":
            rec = json.loads(line)
            assert rec["level"] != "CRITICAL" and rec["logger"] != "forged"
