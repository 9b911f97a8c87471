"""The simulator drives the real engine on simulated time: figures checked by hand."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmux.ops.cli import main
from llmux.sim.compare import Costs, compare, policy_settings
from llmux.sim.report import Yardstick, percentile, table
from llmux.sim.simulator import Backends, Simulation, switching_secs
from llmux.sim.traces import Arrival, Trace, ping_pong


def trace(*rows) -> Trace:
    """rows: (at, model, service_secs)."""
    return Trace("t", [Arrival(at, m, secs, 0, 0.0) for at, m, secs in rows])


def run(t: Trace, policy: str, wake=2.0, **kw):
    costs = Costs({m: wake for m in t.models}, concurrency=kw.pop("concurrency", {}))
    ((result, summary),) = compare(t, [policy], costs, **kw)
    return result, summary


def test_fifo_by_hand():
    # a@0 wakes a (0-2) and is served 2-3; b@0.5 waits: the switch starts when a is awake
    # (2), drains a (until 3), wakes b (3-5)
    result, s = run(trace((0.0, "a", 1.0), (0.5, "b", 1.0)), "fifo")
    a, b = result.requests
    assert (a.admitted_at, a.done_at) == (2.0, 3.0)
    assert (b.admitted_at, b.done_at) == (5.0, 6.0)
    assert [(x.source, x.target, x.started, x.finished) for x in result.switches] == [
        (None, "a", 0.0, 2.0),
        ("a", "b", 2.0, 5.0),
    ]
    assert switching_secs(result.switches[1]) == 2.0  # its drain (2-3) served a
    assert s.mean == pytest.approx((2.0 + 4.5) / 2) and s.max == 4.5
    assert result.serving_secs == 2.0 and s.serving_fraction == pytest.approx(2 / 6)


def test_backend_concurrency_queues_in_the_backend_not_in_llmux():
    t = trace(*[(0.0, "a", 1.0)] * 3)
    result, _ = run(t, "fifo", concurrency={"a": 2})
    assert [r.admitted_at for r in result.requests] == [2.0, 2.0, 2.0]  # all admitted
    assert sorted(r.done_at for r in result.requests) == [3.0, 3.0, 4.0]


def test_cost_aware_beats_fifo_on_a_busy_model():
    # a: a 3 s request every 0.5 s (8 at once: load 0.75); b: a short one every 4 s
    rows = [(i * 0.5, "a", 3.0) for i in range(120)] + [
        (i * 4.0 + 0.5, "b", 0.5) for i in range(15)
    ]
    both = {"a": 8, "b": 8}
    _, f = run(trace(*rows), "fifo", concurrency=both)
    _, c = run(trace(*rows), "cost_aware", concurrency=both)
    assert (f.switches, c.switches) == (11, 9)
    assert c.mean < 0.8 * f.mean and c.p99 < f.p99
    bound = Yardstick({("a", "b"): 2.0, ("b", "a"): 2.0}, 120.0, 1.0).bound("b")
    assert c.past_bound == 0 and c.max <= bound


def test_a_wake_left_by_its_waiters_is_stopped_under_cost_aware_not_fifo():
    # b@0 wakes b for 10 s; its client leaves at 3 s; c@1 waits
    t = trace((0.0, "b", 1.0), (1.0, "c", 1.0))
    aware, s = run(t, "cost_aware", wake=10.0, patience_secs=3.0)
    assert s.stopped_wakes == 1
    assert [(x.target, x.result) for x in aware.switches][:1] == [("b", "abandoned")]
    c = aware.requests[1]
    assert c.admitted_at is None  # its client gave up too (patience 3 s < one wake)
    fifo, f = run(t, "fifo", wake=10.0, patience_secs=3.0)
    assert f.stopped_wakes == 0 and fifo.switches[0].result == "success"
    assert f.wasted_wakes == 1  # b woke for nobody


def test_the_bound_holds_and_runs_are_deterministic():
    t = ping_pong(seconds=300, seed=3)
    settings = policy_settings(max_wait_secs=30.0)
    both = {"planner": 4, "coder": 4}
    first = run(t, "cost_aware", wake=5.0, settings=settings, concurrency=both)[1]
    again = run(t, "cost_aware", wake=5.0, settings=settings, concurrency=both)[1]
    assert first == again
    assert first.past_bound == 0 and first.served == first.requests == 368
    fifo = run(t, "fifo", wake=5.0, settings=settings, concurrency=both)[1]
    assert first.mean < fifo.mean and first.p99 < fifo.p99


def test_past_bound_counts_the_bound_in_force_at_arrival_plus_the_serving_switch():
    t = trace((0.0, "a", 1.0), (0.5, "b", 1.0))  # b waits 4.5 s; its switch takes 3 s
    for max_wait, past in ((1.6, 0), (1.4, 1)):  # nothing measured yet at 0.5 s
        result, s = run(t, "fifo", settings=policy_settings(max_wait_secs=max_wait))
        assert result.requests[1].bound == max_wait
        assert s.past_bound == past


def test_percentile_and_table():
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([5.0], 0.99) == 5.0
    with pytest.raises(ValueError):
        percentile([], 0.5)
    _, s = run(trace((0.0, "a", 1.0)), "fifo")
    text = table([s])
    assert text.splitlines()[0].startswith("| policy | mean wait s")
    assert "| fifo | 2.0 |" in text


def test_a_simulation_is_the_engine_not_a_copy():
    sim = Simulation(trace((0.0, "a", 1.0)), None, Backends({"a": 1.0}))
    from llmux.engine.switcher import Switcher

    assert type(sim.sw) is Switcher


# --- the command line ---


def write_trace(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"at": i * 0.7, "model": "ab"[i % 2], "service_secs": 0.5} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_cli_prints_a_table_per_policy(tmp_path):
    path = write_trace(tmp_path)
    r = CliRunner().invoke(main, ["simulate", str(path), "--switch-secs", "3"])
    assert r.exit_code == 0, r.output
    rows = [line for line in r.output.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == [
        "fifo",
        "cost_aware",
        "time_slice",
        "collate",
    ]


def test_cli_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs the sim extra (matplotlib)")
    path = write_trace(tmp_path)
    png = tmp_path / "w.png"
    args = ["simulate", str(path), "--wake-secs", "a=2,b=4", "--policies", "fifo,cost_aware"]
    r = CliRunner().invoke(main, [*args, "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    out = [json.loads(line) for line in r.output.splitlines()]
    assert [o["policy"] for o in out] == ["fifo", "cost_aware"]
    assert all(o["requests"] == 40 for o in out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policies", "lru"], "unknown policy lru"),
        ([], "no switch cost for a, b"),
        (["--wake-secs", "a=x"], "expected MODEL=SECONDS"),
    ],
)
def test_cli_errors_are_clear(tmp_path, args, message):
    r = CliRunner().invoke(main, ["simulate", str(write_trace(tmp_path)), *args])
    assert r.exit_code == 2
    assert message in r.output
