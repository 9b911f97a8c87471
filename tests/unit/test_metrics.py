"""Series that must exist at 0 before anything happens, so that ``increase()`` sees the first
event (a series whose first sample is already 1 counts no increase in Prometheus)."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmux.engine.hooks import HookResult
from llmux.telemetry.metrics import Metrics


def samples(metrics: Metrics, name: str) -> dict[tuple, float]:
    text = generate_latest(metrics.registry).decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_every_switch_pair_hook_and_queue_exit_starts_at_zero():
    m = Metrics(["a", "b"])
    switches = samples(m, "llmux_switch_total")
    pairs = {(dict(k)["from"], dict(k)["to"]) for k in switches}
    assert pairs == {("idle", "a"), ("idle", "b"), ("a", "b"), ("b", "a")}
    assert {dict(k)["result"] for k in switches} == {"success", "failure", "abandoned"}
    assert len(switches) == 12 and set(switches.values()) == {0.0}
    failures = samples(m, "llmux_hook_failures_total")
    assert len(failures) == 6 and set(failures.values()) == {0.0}  # 2 models x 3 hooks
    left = samples(m, "llmux_request_queue_left_total")
    assert len(left) == 12 and set(left.values()) == {0.0}  # 2 models x 6 reasons
    waits = samples(m, "llmux_request_queue_wait_seconds_count")
    assert waits == {(("model", "a"),): 0.0, (("model", "b"),): 0.0}


def test_a_reload_adds_the_pairs_of_its_new_models_and_keeps_the_counts():
    m = Metrics(["a", "b"])
    m.switch_finished("a", "b", True, 1.0)
    m.add_models(["c"])
    switches = samples(m, "llmux_switch_total")
    assert len(switches) == 27  # (idle, a, b, c) -> (a, b, c), minus the three x -> x, x 3
    key = (("from", "a"), ("result", "success"), ("to", "b"))
    assert switches[key] == 1.0
    assert switches[(("from", "c"), ("result", "failure"), ("to", "a"))] == 0.0


def test_events_count_where_they_belong():
    m = Metrics(["a"])
    m.hook_finished("a", HookResult("wake", 1, 0.5))
    m.request_left_queue("a", "timeout", 2.0)
    assert samples(m, "llmux_hook_failures_total")[(("hook", "wake"), ("model", "a"))] == 1.0
    left = samples(m, "llmux_request_queue_left_total")
    assert left[(("model", "a"), ("reason", "timeout"))] == 1.0
    assert sum(left.values()) == 1.0


def test_router_signals_follow_the_node_state_and_leave_with_removed_models():
    m = Metrics(["a", "b"])
    signals = {"in_flight": 0, "queued": 0, "state": "asleep"}
    m.set_node_state(
        {
            "a": {**signals, "oldest_wait_secs": 0.0, "estimated_wait_secs": 0.0},
            "b": {**signals, "oldest_wait_secs": 4.5, "estimated_wait_secs": None},
        }
    )
    assert samples(m, "llmux_request_queue_oldest_wait_seconds") == {
        (("model", "a"),): 0.0,
        (("model", "b"),): 4.5,
    }
    # an unknown estimate is no sample, never a made-up 0
    assert samples(m, "llmux_model_estimated_wait_seconds") == {(("model", "a"),): 0.0}
    m.set_node_state({"b": {**signals, "oldest_wait_secs": 1.0, "estimated_wait_secs": 12.0}})
    assert samples(m, "llmux_request_queue_oldest_wait_seconds") == {(("model", "b"),): 1.0}
    assert samples(m, "llmux_model_estimated_wait_seconds") == {(("model", "b"),): 12.0}
