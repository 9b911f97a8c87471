"""The shipped rules in a real Prometheus (Debian's 2.42, with promtool): checked, unit-tested,
and evaluated against a real llmux scraped on loopback while switches, a failing wake and a
queue timeout happen."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.support import free_port, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "conf/prometheus/llmux-alerts.yaml"
RULE_TESTS = ROOT / "tests/prometheus/llmux-alerts.test.yaml"
# le bounds of llmux's histograms (llmux.telemetry.metrics.BUCKETS), for reading a quantile
BOUNDS = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"this test needs {name}: apt-get install prometheus")
    return path


def test_promtool_checks_the_rules():
    run = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, timeout=60
    )
    assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()
    assert b"SUCCESS" in run.stdout


def test_every_alert_has_promtool_unit_tests_and_they_pass():
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert alerts == tested, f"alerts without a firing case: {alerts - tested}"
    run = subprocess.run(
        [tool("promtool"), "test", "rules", str(RULE_TESTS)], capture_output=True, timeout=120
    )
    assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()


class Prometheus:
    """A Prometheus on loopback scraping ``target`` every second and evaluating the rules
    every second; its own data directory under ``directory``."""

    def __init__(self, directory: Path, target: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "llmux", "static_configs": [{"targets": [target]}]}],
        }
        path = directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self._log = open(directory / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=self._log,
        )

    def query(self, expr: str) -> list[dict]:
        """The instant vector ``expr`` gives now: [{"metric": {...}, "value": [t, "v"]}]."""
        r = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def ready(self) -> bool:
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            assert self.proc.poll() is None, "prometheus exited"
            return False

    def firing(self) -> set[tuple[str, str]]:
        r = requests.get(self.url + "/api/v1/alerts", timeout=10)
        r.raise_for_status()
        return {
            (a["labels"]["alertname"], a["labels"].get("model") or a["labels"].get("to", ""))
            for a in r.json()["data"]["alerts"]
            if a["state"] == "firing"
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        self._log.close()


@pytest.fixture
def prometheus_for(tmp_path):
    started: list[Prometheus] = []

    def start(server) -> Prometheus:
        directory = tmp_path / "prometheus"
        directory.mkdir()
        prom = Prometheus(directory, f"127.0.0.1:{server.port}")
        started.append(prom)
        wait_for(prom.ready, 60, every=0.1)
        return prom

    yield start
    for prom in started:
        prom.stop()


def value(sample: dict) -> float:
    return float(sample["value"][1])


def scraped_up_to_date(prom: Prometheus, server) -> bool:
    """Whether Prometheus's last scrape saw every request admitted and every switch ended
    that llmux counts so far."""
    own = requests.get(server.url + "/metrics", timeout=10).text
    for metric in ("llmux_request_queue_wait_seconds_count", "llmux_switch_total"):
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in own.splitlines()
            if line.startswith(metric + "{")
        )
        seen = prom.query(f"sum({metric})")
        if not seen or value(seen[0]) != total:
            return False
    return True


def bucket_of(seconds: float) -> tuple[float, float]:
    """The (lower, upper] histogram bucket ``seconds`` falls in."""
    for lower, upper in zip(BOUNDS, BOUNDS[1:], strict=False):
        if seconds <= upper:
            return lower, upper
    raise AssertionError(f"{seconds} s is beyond the buckets this test reads")


def test_rules_in_a_real_prometheus_evaluate_to_what_happened(llmux_factory, prometheus_for):
    server = llmux_factory(models=("a", "b", "c"), policy={"request_timeout_secs": 2})
    prom = prometheus_for(server)
    # every counter and histogram was scraped at 0 before anything happened: increase()
    # and rate() cannot see a series' first sample
    wait_for(lambda: prom.query('llmux_hook_failures_total{model="c",hook="wake"} == 0'), 30)
    waits: dict[str, list[float]] = {"a": [], "b": []}
    for model in ("a", "b", "a"):  # idle -> a, a -> b, b -> a
        r = server.chat(model)
        assert r.status_code == 200, r.text
        waits[model].append(int(r.headers["X-Llmux-Queue-Wait-Ms"]) / 1000)
    server.fault("wake", "c", "echo 'no GPU for c' >&2; exit 1")
    failed = server.chat("c")  # a -> c: the wake fails
    assert failed.status_code == 503, failed.text
    server.fault("wake", "b", "sleep 4")
    timed_out = server.chat("b")  # idle -> b: 4 s of wake, 2 s of request timeout
    assert timed_out.status_code == 504, timed_out.text
    assert timed_out.json()["error"]["code"] == "queue_timeout"
    wait_for(lambda: server.status()["models"]["b"]["state"] == "awake", 20)  # FIFO wakes on

    wait_for(lambda: scraped_up_to_date(prom, server), 30, every=0.2)
    caught_up = time.time()
    # the recording rules, once evaluated after that scrape
    rate_rule = "from_to_result:llmux_switch:rate5m"
    wait_for(lambda: prom.query(f"timestamp({rate_rule}) > {caught_up}"), 30, every=0.2)
    switches = {
        (s["metric"]["from"], s["metric"]["to"], s["metric"]["result"]): value(s) * 300
        for s in prom.query(f"{rate_rule} > 0")
    }
    assert set(switches) == {
        ("idle", "a", "success"),
        ("a", "b", "success"),
        ("b", "a", "success"),
        ("a", "c", "failure"),
        ("idle", "b", "success"),
    }
    # one switch each, over a 5 m window holding the ~20 s of this test: rate() x 300 is
    # the count, up to its extrapolation over at most 1.5 scrape intervals
    for pair, count in switches.items():
        assert 1.0 <= count <= 1.3, (pair, count)

    p99_rule = "model:llmux_request_queue_wait_seconds:p99_5m"
    wait_for(lambda: prom.query(f"timestamp({p99_rule}) > {caught_up}"), 30, every=0.2)
    p99 = {s["metric"]["model"]: value(s) for s in prom.query(p99_rule) if s["value"][1] != "NaN"}
    assert set(p99) == {"a", "b"}  # c was never admitted
    for model, seen in waits.items():
        # with so few samples the 99th percentile lies in the bucket of the longest wait
        lower, upper = bucket_of(max(seen))
        if max(seen) + 0.001 >= upper:  # the header's milliseconds are rounded down
            upper = bucket_of(upper + 0.0001)[1]
        assert lower <= p99[model] <= upper, (model, seen, p99[model])

    left = prom.query("model_reason:llmux_request_queue_left:rate5m > 0")
    assert {(s["metric"]["model"], s["metric"]["reason"]) for s in left} == {
        ("c", "failed"),
        ("b", "timeout"),
    }

    # alerts: the failing wake and the queue timeout fire, for their models only
    wait_for(
        lambda: {("LlmuxWakeFailing", "c"), ("LlmuxQueueTimeouts", "b")} <= prom.firing(),
        30,
        every=0.2,
    )
    assert prom.firing() == {("LlmuxWakeFailing", "c"), ("LlmuxQueueTimeouts", "b")}
