"""Every query of the shipped dashboard and alert rules names a metric llmux exports."""

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmux.engine.hooks import HookResult
from llmux.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
# PromQL functions, keywords and label names that look like identifiers
NOT_METRICS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "max", "le", "model", "from", "to",
    "hook", "state", "result", "status", "job", "reason", "without", "avg", "on", "and", "or",
    "unless",
}  # fmt: skip
BUILTIN = {"up"}  # written by Prometheus itself


def observed_metrics() -> Metrics:
    """A registry in which every metric has been observed once."""
    m = Metrics(["a", "b"])
    m.request_finished("a", 200, 0.1)
    m.request_headers_sent("a", 0.01)
    m.request_admitted("a", 0.0, False)
    m.drain_finished("a", "b", 0.1, True)
    m.hook_finished("a", HookResult("wake", -15, 1.0, timed_out=True))
    m.model_deactivated("a", 10.0)
    m.switch_finished("a", "b", True, 1.0, ema=1.0)
    m.model_evicted("a", "b", "room")
    sizes = {"declared": 10, "measured": 12, "asleep": 0, "pin": False}
    m.set_memory(
        {
            "budget": 24,
            "used_declared": 12,
            "used_measured": 12,
            "models": {"a": sizes, "b": {**sizes, "measured": None}},
        }
    )
    return m


def exported_names() -> set[str]:
    text = generate_latest(observed_metrics().registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def expressions():
    dashboard = json.loads((ROOT / "conf/grafana/llmux-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield f"dashboard: {panel['title']}", target["expr"]
    rules = yaml.safe_load((ROOT / "conf/prometheus/llmux-alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = f"alert: {rule['alert']}" if "alert" in rule else f"record: {rule['record']}"
            yield name, rule["expr"]


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in NOT_METRICS}


@pytest.mark.parametrize("where, expr", list(expressions()))
def test_expression_names_exported_metrics(where, expr):
    exported = exported_names() | BUILTIN
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    assert names <= exported, f"{where}: unknown {names - exported}"


def test_dashboard_covers_what_operators_asked_for():
    text = (ROOT / "conf/grafana/llmux-dashboard.json").read_text()
    for metric in (
        "llmux_switch_total",
        "llmux_switch_duration_seconds_bucket",
        "llmux_switch_cost_ema_seconds",
        "llmux_request_queue_depth",
        "llmux_request_queue_wait_seconds_bucket",
        "llmux_model_in_flight",
        "llmux_requests_total",
        "llmux_request_duration_seconds_bucket",
        "llmux_hook_failures_total",
        "llmux_memory_used_bytes",
        "llmux_model_evictions_total",
    ):
        assert metric in text


def test_the_spec_metrics_have_their_names_types_and_labels():
    text = generate_latest(observed_metrics().registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    spec = {
        "llmux_switch": ("counter", {"from", "to", "result"}),
        "llmux_switch_duration_seconds": ("histogram", {"from", "to"}),
        "llmux_switch_drain_duration_seconds": ("histogram", {"from", "to"}),
        "llmux_model_active_duration_seconds": ("histogram", {"model"}),
        "llmux_switch_cost_ema_seconds": ("gauge", {"from", "to"}),
        "llmux_request_queue_depth": ("gauge", {"model"}),
        "llmux_request_queue_wait_seconds": ("histogram", {"model"}),
        "llmux_model_in_flight": ("gauge", {"model"}),
        "llmux_requests": ("counter", {"model", "status"}),
        "llmux_request_duration_seconds": ("histogram", {"model", "status"}),
        "llmux_hook_duration_seconds": ("histogram", {"model", "hook"}),
        "llmux_hook_failures": ("counter", {"model", "hook"}),
    }
    for name, (kind, labels) in spec.items():
        family = families[name]
        assert family.type == kind, name
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
