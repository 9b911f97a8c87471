"""Trace files of every format load onto one time axis with path:line errors; the generators
are seeded and keep their shapes; window, sample, compress and write_replay do what they say."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import pytest

from llmux.sim.traces import (
    AZURE_ATTRIBUTION,
    Arrival,
    ServiceModel,
    Trace,
    TraceError,
    azure_dir,
    azure_two_models,
    load_trace,
    ping_pong,
    write_replay,
    zipf_bursty,
)

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "benchmarks" / "traces" / "agent-2models.jsonl"
AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_azure_csv_with_seven_fraction_digits_unsorted_and_no_final_newline(tmp_path):
    path = write(
        tmp_path,
        "AzureLLMInferenceTrace_code.csv",
        "TIMESTAMP, ContextTokens, GeneratedTokens\n"
        "2023-11-16 18:17:03.4856660,1000,20\n"
        "2023-11-16 18:17:00.0000001,4808,10\n"
        "2023-11-16 18:17:05.1234567,0,0",
    )
    trace = load_trace([path])
    assert (trace.name, trace.models, len(trace)) == ("code", ("code",), 3)
    first, second, third = trace.arrivals
    assert first.at == 0 and second.at == pytest.approx(3.4856659, abs=1e-6)
    assert third.at == pytest.approx(5.1234566, abs=1e-6)
    assert (first.tokens, second.tokens, third.tokens) == (10, 20, 0)
    assert first.prefill_secs == pytest.approx(0.05 + 1e-4 * 4808)
    assert first.service_secs == pytest.approx(0.05 + 1e-4 * 4808 + 0.025 * 10)
    assert third.service_secs == pytest.approx(0.05) and first.priority == 3


def test_azure_files_merge_on_their_shared_clock(tmp_path):
    code = write(
        tmp_path,
        "AzureLLMInferenceTrace_code.csv",
        AZURE_HEAD + "2023-11-16 18:17:03.9799600,4808,10\n2023-11-16 18:17:04.0319600,3180,8\n",
    )
    conv = write(
        tmp_path,
        "AzureLLMInferenceTrace_conv.csv",
        AZURE_HEAD + "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109",
    )
    trace = load_trace([code, conv])
    assert trace.models == ("code", "conv")
    got = [(a.model, round(a.at, 6)) for a in trace.arrivals]
    assert got == [("conv", 0.0), ("conv", 4.314579), ("code", 77.29937), ("code", 77.35137)]
    renamed = load_trace([code, conv], model_names=["small", "big"])
    assert renamed.models == ("small", "big") and renamed.arrivals[0].model == "big"
    with pytest.raises(ValueError):
        load_trace([code, conv], model_names=["one"])


def test_generic_csv_with_relative_seconds_service_and_priority(tmp_path):
    path = write(
        tmp_path, "mixed.csv", "at,Model,service_secs,priority\n2.5,llama,1.5,0\n\n0.5,qwen,0.25,\n"
    )
    trace = load_trace(str(path))
    assert trace.models == ("llama", "qwen")
    got = [
        (a.at, a.model, a.service_secs, a.tokens, a.prefill_secs, a.priority)
        for a in trace.arrivals
    ]
    assert got == [(0.5, "qwen", 0.25, 0, 0.0, 3), (2.5, "llama", 1.5, 0, 0.0, 0)]


def test_generic_csv_with_iso_timestamps_and_tokens_takes_the_model_from_the_stem(tmp_path):
    path = write(
        tmp_path,
        "burst.csv",
        "timestamp,prompt_tokens,output_tokens\n"
        "2024-01-01T00:00:10Z,100,40\n2024-01-01T00:00:12.5+00:00,0,4\n",
    )
    service = ServiceModel(base_secs=0, per_context_token_secs=0.01, per_output_token_secs=0.1)
    first, second = load_trace([path], service=service).arrivals
    assert (first.at, first.model, first.tokens) == (0, "burst", 40)
    assert (first.service_secs, first.prefill_secs) == pytest.approx((5.0, 1.0))
    assert second.at == pytest.approx(2.5) and second.service_secs == pytest.approx(0.4)


def test_generic_csv_with_timestamps_in_seconds(tmp_path):
    path = write(
        tmp_path, "epoch.csv", "timestamp,model,output_tokens\n1700000100,a,10\n1700000000.5,b,8\n"
    )
    trace = load_trace([path])
    assert [(a.model, a.at) for a in trace.arrivals] == [("b", 0.0), ("a", 99.5)]
    assert trace.models == ("a", "b") and trace.arrivals[1].tokens == 10


def test_replay_jsonl_takes_tokens_times_token_ms_and_the_header_costs():
    trace = load_trace([SHIPPED])
    assert trace.name == "agent-2models" and trace.models == ("planner", "coder")
    assert trace.costs["coder"] == {"wake_secs": 3.0, "sleep_secs": 1.0}
    first = trace.arrivals[0]
    assert (first.at, first.model, first.tokens, first.prefill_secs) == (0.971, "planner", 29, 0)
    assert first.service_secs == pytest.approx(29 * 20 / 1000)


def test_plain_jsonl_rows(tmp_path):
    path = write(
        tmp_path,
        "rows.jsonl",
        '{"at": 3.0, "model": "b", "output_tokens": 10, "prompt_tokens": 1000, "priority": 1}\n'
        "\n"
        '{"at": 1, "model": "a", "service_secs": 2}',
    )
    trace = load_trace([path])
    assert trace.models == ("b", "a")
    a, b = trace.arrivals
    assert (a.at, a.model, a.service_secs, a.tokens, a.priority) == (1, "a", 2, 0, 3)
    assert (b.model, b.tokens, b.priority) == ("b", 10, 1)
    assert (b.service_secs, b.prefill_secs) == pytest.approx((0.05 + 0.1 + 0.25, 0.15))


GOOD_AZURE = "2023-11-16 18:17:03.4856660,1000,20\n"


@pytest.mark.parametrize(
    "name, text, line, what",
    [
        ("neg.csv", "at,model,service_secs\n1,a,1\n-2,b,1\n", 3, "at must be a number >= 0"),
        ("hole.csv", "at,model,service_secs\n1,a,1\n2,,1\n", 3, "missing model"),
        ("short.csv", "at,model,service_secs\n1,a\n", 2, "expected 3 fields"),
        ("when.csv", "timestamp,model,service_secs\nyesterday,a,1\n", 2, "neither ISO-8601"),
        ("prio.csv", "at,model,service_secs,priority\n1,a,1,9\n", 2, "priority must be 0..7"),
        ("what.csv", "when,who\n1,a\n", 1, "unknown format"),
        ("empty.csv", "", 1, "empty file"),
        (
            "AzureLLMInferenceTrace_code.csv",
            AZURE_HEAD + GOOD_AZURE + "2023-11-16 18:17:04.1,12,lots",
            3,
            "GeneratedTokens must be a whole number",
        ),
        (
            "tok.jsonl",
            '{"at": 0, "model": "a", "output_tokens": 3}\n'
            '{"at": 1, "model": "a", "output_tokens": "many"}\n',
            2,
            "output_tokens must be a whole number",
        ),
        ("nomodel.jsonl", '{"at": 0, "output_tokens": 3}\n', 1, "missing model"),
        ("broken.jsonl", '{"at": 0, "model": "a", "service_secs": 1}\n{"at": 1,\n', 2, "not JSON"),
        ("head.jsonl", '{"trace": "x", "token_ms": -1, "models": {}}\n', 1, "bad replay header"),
        (
            "notok.jsonl",
            '{"trace": "x", "token_ms": 20}\n{"at": 1, "model": "a"}\n',
            2,
            "missing tokens",
        ),
    ],
)
def test_bad_files_raise_trace_error_with_path_and_line(tmp_path, name, text, line, what):
    path = write(tmp_path, name, text)
    with pytest.raises(TraceError) as err:
        load_trace([path])
    assert str(err.value).startswith(f"{path}:{line}: ") and what in str(err.value)


def test_a_missing_file_is_a_trace_error_naming_it(tmp_path):
    with pytest.raises(TraceError, match="nowhere.csv: cannot read") as err:
        load_trace([tmp_path / "nowhere.csv"])
    assert isinstance(err.value, ValueError)


def test_a_trace_sorts_stably_and_lists_models_in_order_of_appearance():
    rows = [Arrival(2, "b", 1, 0, 0), Arrival(1, "a", 1, 0, 0), Arrival(2, "c", 1, 0, 0)]
    trace = Trace("t", rows)
    assert [a.model for a in trace.arrivals] == ["a", "b", "c"] and trace.models == ("a", "b", "c")
    assert (len(trace), trace.duration, Trace("e", []).duration) == (3, 2, 0)
    with pytest.raises(ValueError):
        Arrival(-1, "a", 1, 0, 0)


def test_sample_is_deterministic_and_keeps_about_p():
    trace = zipf_bursty(seconds=3600)
    kept = trace.sample(0.25, seed=1)
    assert kept.arrivals == trace.sample(0.25, seed=1).arrivals
    assert kept.arrivals != trace.sample(0.25, seed=2).arrivals
    assert len(kept) / len(trace) == pytest.approx(0.25, abs=0.03)
    assert set(kept.arrivals) <= set(trace.arrivals) and kept.models == trace.models
    assert "sample p=0.25 seed=1" in kept.source
    assert (len(trace.sample(1, seed=3)), len(trace.sample(0, seed=3))) == (len(trace), 0)
    with pytest.raises(ValueError):
        trace.sample(1.5, seed=1)


def test_compress_divides_times_and_costs_and_keeps_tokens():
    trace = load_trace([SHIPPED])
    fast = trace.compress(10)
    for slow, quick in zip(trace.arrivals, fast.arrivals, strict=True):
        assert (quick.model, quick.tokens, quick.priority) == (
            slow.model,
            slow.tokens,
            slow.priority,
        )
        assert quick.at == pytest.approx(slow.at / 10)
        assert quick.service_secs == pytest.approx(slow.service_secs / 10)
    assert fast.costs["coder"] == pytest.approx({"wake_secs": 0.3, "sleep_secs": 0.1})
    assert trace.costs["coder"]["wake_secs"] == 3.0
    assert fast.duration == pytest.approx(trace.duration / 10) and "compressed x10" in fast.source
    with pytest.raises(ValueError):
        trace.compress(0)


def test_window_keeps_arrivals_before_the_bound_and_every_model():
    trace = load_trace([SHIPPED])
    early = trace.window(30)
    assert len(early) == sum(a.at < 30 for a in trace.arrivals) > 0
    assert all(a.at < 30 for a in early.arrivals) and early.models == trace.models
    assert len(trace.window(0)) == 0 and trace.window(0).models == trace.models


def test_ping_pong_alternates_short_and_long_calls():
    trace = ping_pong(seconds=300, agents=1, models=("small", "big"), seed=3)
    models = [a.model for a in trace.arrivals]
    assert len(models) % 2 == 0 and models == ["small", "big"] * (len(models) // 2)
    for ask, then in zip(trace.arrivals, trace.arrivals[1:], strict=False):
        assert then.at - ask.at >= ask.service_secs + 0.3
    assert all(20 <= a.tokens <= 60 for a in trace.arrivals if a.model == "small")
    assert all(100 <= a.tokens <= 250 for a in trace.arrivals if a.model == "big")
    many = Counter(a.model for a in ping_pong(seconds=300, agents=4).arrivals)
    assert many["planner"] == many["coder"] > 100  # every agent finishes its pairs


def test_ping_pong_draws_like_make_traces():
    shipped = load_trace([SHIPPED]).arrivals
    made = ping_pong(seconds=60).arrivals
    assert [(a.model, a.tokens) for a in made] == [(a.model, a.tokens) for a in shipped]
    assert [a.at for a in made] == pytest.approx([a.at for a in shipped], abs=5e-4)
    assert ping_pong(seconds=60).arrivals == made


def test_zipf_bursty_follows_the_law_at_about_the_rate_in_bursts():
    trace = zipf_bursty(seconds=3600)
    assert trace.models == tuple(f"m{i}" for i in range(8))
    counts = Counter(a.model for a in trace.arrivals)
    shares = [counts[m] / len(trace) for m in trace.models]
    weights = [1 / (i + 1) ** 1.1 for i in range(8)]
    assert max(shares) == shares[0] == pytest.approx(weights[0] / sum(weights), abs=0.08)
    assert sum(shares[:4]) > 0.65  # the law gives 0.79
    assert len(trace) / 3600 == pytest.approx(2.0, rel=0.3)
    assert all(20 <= a.tokens <= 400 for a in trace.arrivals)
    bins = Counter(int(a.at // 10) for a in trace.arrivals if a.model == "m0")
    per_bin = [bins[i] for i in range(360)]
    assert statistics.variance(per_bin) > 3 * statistics.mean(per_bin)  # Poisson would give 1x
    assert zipf_bursty(seconds=600).arrivals == zipf_bursty(seconds=600).arrivals


def test_write_replay_round_trips_through_load_trace(tmp_path):
    src = write(
        tmp_path,
        "AzureLLMInferenceTrace_conv.csv",
        AZURE_HEAD + "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n",
    )
    trace = load_trace([src])
    costs = {"conv": {"wake_secs": 2.0, "sleep_secs": 0.5}}
    out = tmp_path / "replay.jsonl"
    write_replay(trace, out, token_ms=25, costs=costs)
    head = json.loads(out.read_text().splitlines()[0])
    assert (head["trace"], head["token_ms"], head["models"]) == ("conv", 25, costs)
    back = load_trace([out])
    assert (back.name, back.models, back.costs) == (trace.name, trace.models, costs)
    for a, b in zip(trace.arrivals, back.arrivals, strict=True):
        assert (b.model, b.tokens) == (a.model, a.tokens) and b.at == pytest.approx(a.at, abs=5e-4)
        assert (b.service_secs, b.prefill_secs) == pytest.approx((a.service_secs, a.prefill_secs))
    write_replay(trace.compress(10), out, token_ms=5, costs=costs)  # fewer chunks, same time
    fast = load_trace([out])
    assert [a.tokens for a in fast.arrivals] == [22, 54]
    assert fast.arrivals[1].service_secs == pytest.approx(
        trace.arrivals[1].service_secs / 10, abs=0.003
    )
    with pytest.raises(ValueError):
        write_replay(ping_pong(seconds=10), out, token_ms=20)


def test_azure_two_models_reads_a_directory_and_answers_none_without_files(tmp_path, monkeypatch):
    assert azure_two_models(tmp_path) is None
    write(tmp_path, "AzureLLMInferenceTrace_code.csv", AZURE_HEAD + GOOD_AZURE)
    write(tmp_path, "AzureLLMInferenceTrace_conv.csv", AZURE_HEAD + "2023-11-16 18:17:00.0,10,1")
    trace = azure_two_models(tmp_path)
    assert trace.name == "azure-llm-2023" and trace.models == ("code", "conv") and len(trace) == 2
    monkeypatch.setenv("LLMUX_TRACES", str(tmp_path / "elsewhere"))
    assert azure_dir() == tmp_path / "elsewhere" / "azure-llm-2023"
    assert "Splitwise" in AZURE_ATTRIBUTION and "CC-BY-4.0" in AZURE_ATTRIBUTION


def test_real_azure_trace_first_twenty_minutes():
    trace = azure_two_models()
    if trace is None:
        pytest.skip(
            f"Azure LLM 2023 trace not found in {azure_dir()} (want AzureLLMInferenceTrace_code.csv"
            " and _conv.csv there; set LLMUX_TRACES to the directory holding azure-llm-2023/)"
        )
    counts = Counter(a.model for a in trace.window(20 * 60).arrivals)
    assert counts == {"code": 3189, "conv": 5985}
