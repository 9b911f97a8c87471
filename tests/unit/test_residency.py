"""The memory budget's arithmetic (llmux.engine.residency) and its config."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmux.config import ConfigError, parse_config
from llmux.engine.residency import (
    Budget,
    MeasuredSizes,
    ModelMemory,
    eviction_score,
    looks_like_oom,
    never_fits,
    parse_size,
    plan,
)

GiB = 1024**3


def budget(total=80, headroom=0, **sizes) -> Budget:
    models = {}
    for name, spec in sizes.items():
        if isinstance(spec, int):
            spec = {"awake": spec}
        models[name] = ModelMemory(
            spec["awake"] * GiB,
            spec.get("asleep", 0) * GiB,
            spec.get("pin", False),
            frozenset(spec.get("exclusive_with", ())),
        )
    return Budget(total * GiB, headroom * GiB, models)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("80GiB", 80 * GiB),
        ("1.5 GB", 1_500_000_000),
        ("512mib", 512 * 1024**2),
        ("40G", 40 * 1000**3),
        (1024, 1024),
        ("0", 0),
    ],
)
def test_sizes_take_the_usual_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GiB", "12 parsecs", "-1GiB", "nanGiB", True, -5, 1.5, None])
def test_other_sizes_are_refused(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_a_model_that_fits_needs_no_room():
    b = budget(a=40, b=30)
    assert plan(b, "b", ["a"]) == plan(b, "b", ["a"]) and plan(b, "b", ["a"]).victims == ()


def test_headroom_and_memory_held_asleep_count():
    assert plan(budget(headroom=11, a=40, b=30), "b", ["a"]).victims == ("a",)
    assert plan(budget(a=40, b=30, c={"awake": 20, "asleep": 11}), "b", ["a"]).victims == ("a",)
    # a model woken holds its memory, its asleep share included: b's own is not counted twice
    assert plan(budget(a=40, b={"awake": 40, "asleep": 10}), "b", ["a"]).victims == ()


def test_idle_before_busy_lowest_score_first_and_no_more_than_needed():
    b = budget(a=30, b=30, c=20, d=40)
    scores = {"a": 5.0, "b": 1.0, "c": 2.0}
    room = plan(b, "d", ["a", "b", "c"], busy={"b"}, order=scores.get)
    assert room.victims == ("c", "a") and room.fits  # b is busy: idle ones first
    # greedy takes the low-score c first (5 of the 15 missing), then a; a alone does
    room = plan(budget(a=60, c=5, d=30), "d", ["a", "c"], order={"a": 2.0, "c": 1.0}.get)
    assert room.victims == ("a",) and room.fits


def test_pins_are_never_chosen_and_exclusions_always_are():
    b = budget(a={"awake": 60, "pin": True}, b=30, c={"awake": 10, "exclusive_with": ["b"]})
    room = plan(b, "b", ["a"])
    assert not room.fits and room.victims == () and room.short == 10 * GiB
    room = plan(b, "c", ["b"])
    assert room.victims == ("b",) and room.fits  # fits by numbers, excluded by name


def test_configs_that_could_never_wake_a_model_are_refused():
    b = budget(total=50, a={"awake": 30, "pin": True}, b=25, c={"awake": 5, "asleep": 1})
    assert set(never_fits(b)) == {"b"}
    b = budget(a={"awake": 10, "pin": True}, b={"awake": 10, "exclusive_with": ["a"]})
    assert "exclusive_with pinned" in never_fits(b)["b"]


def test_the_eviction_score_weighs_wake_cost_by_recency_with_a_floor_for_slow_wakes():
    # among quick wakes, recency decides unless costs differ more than idle times
    assert eviction_score(3.0, idle=4.0) < eviction_score(1.0, idle=0.5)
    assert eviction_score(3.0, idle=2.0) > eviction_score(1.0, idle=1.0)
    # a slow wake keeps a floor that idle time does not wear down: (60 / 12) ** 2
    assert eviction_score(60.0, idle=3600.0) == pytest.approx(60 / 3600 + 25.0)
    assert eviction_score(60.0, idle=3600.0) > eviction_score(2.0, idle=0.1)
    assert eviction_score(2.0, idle=0.0) > 1e3  # just used: not a candidate before others


def test_with_weights_the_cheapest_set_that_makes_room_is_chosen():
    b = budget(a=20, b=20, c=40, d=40)
    weights = {"a": 1.0, "b": 1.5, "c": 2.0}
    # d needs 40: a and b together (2.5) or c alone (2.0); greedy by weight would take a, b
    room = plan(b, "d", ["a", "b", "c"], order=weights.get, weight=weights.get)
    assert room.victims == ("c",) and room.fits
    assert plan(b, "d", ["a", "b", "c"], order=weights.get).victims == ("a", "b")
    # a busy model only when no set of idle ones makes room
    room = plan(b, "d", ["a", "b", "c"], busy={"c"}, order=weights.get, weight=weights.get)
    assert room.victims == ("a", "b")
    # nothing makes room: every candidate, as without weights
    room = plan(budget(total=50, a=20, d=60), "d", ["a"], weight=weights.get)
    assert not room.fits and room.victims == ("a",)


def test_the_cheapest_set_counts_exclusions_and_memory_held_asleep():
    # e is exclusive with the target and always goes; 40 more are needed. a frees 30
    # of its 40 (10 held asleep), so a alone (0.65) does not do: b and c (0.7) do
    b = Budget(
        100 * GiB,
        0,
        {
            "a": ModelMemory(40 * GiB, asleep=10 * GiB),
            "b": ModelMemory(20 * GiB),
            "c": ModelMemory(30 * GiB),
            "e": ModelMemory(10 * GiB, exclusive_with=frozenset({"t"})),
            "t": ModelMemory(50 * GiB),
        },
    )
    weights = {"a": 0.65, "b": 0.3, "c": 0.4, "e": 9.0}
    room = plan(b, "t", ["a", "b", "c", "e"], order=weights.get, weight=weights.get)
    assert room.fits and room.victims[0] == "e" and set(room.victims[1:]) == {"b", "c"}
    held_nothing = replace(b, models={**b.models, "a": ModelMemory(40 * GiB)})
    room = plan(held_nothing, "t", ["a", "b", "c", "e"], order=weights.get, weight=weights.get)
    assert room.victims == ("e", "a")


def test_measured_sizes_keep_a_high_percentile_of_recent_wakes():
    m = MeasuredSizes(keep=20)
    assert m.get("a") is None
    for size in [10] * 19 + [100]:
        m.observe("a", size)
    assert m.get("a") == 10  # the 95th percentile of 20: the 19th smallest
    m.observe("a", 100)
    assert m.get("a") == 100 and m.count("a") == 20


def test_out_of_memory_failures_are_recognised_and_others_are_not():
    assert looks_like_oom("wake hook failed with exit code 1: torch.OutOfMemoryError: CUDA")
    assert looks_like_oom("ValueError: No available memory for the cache blocks.")
    assert looks_like_oom("ggml_backend_cuda_buffer_type_alloc_buffer: failed: out of memory")
    assert not looks_like_oom("wake hook failed with exit code 1: connection refused")


def model(port, **extra):
    return {"port": port, "wake": "true", "sleep": "true", "alive": "true", **extra}


def test_the_memory_block_is_validated_whole(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "memory": {"budget": "80GiB", "eviction": "random"},
                "models": {
                    "a": model(8001, memory="90GiB"),
                    "b": model(8002),
                    "c": model(8003, memory="1GiB", memory_asleep="2GiB"),
                    "d": model(8004, memory="1GiB", exclusive_with=["nope", "d"]),
                },
            },
            "c.yaml",
        )
    problems = "\n".join(err.value.problems)
    assert "memory.eviction" in problems
    assert "models.b.memory: required with memory.budget" in problems
    assert "models.c.memory_asleep: more than its memory" in problems
    assert 'models.d.exclusive_with[0]: "nope" is not another configured model' in problems
    assert 'models.d.exclusive_with[1]: "d" is not another configured model' in problems
    with pytest.raises(ConfigError) as err:
        parse_config({"models": {"a": model(8001, memory="1GiB", pin=True)}}, "c.yaml")
    assert "models.a.memory: needs memory.budget" in err.value.problems[0]
    assert "models.a.pin: needs memory.budget" in err.value.problems[1]


def test_a_config_without_memory_keeps_one_model_awake_and_with_it_a_budget():
    config = parse_config({"models": {"a": model(8001), "b": model(8002)}}, "c.yaml")
    assert config.budget().single
    config = parse_config(
        {
            "memory": {"budget": "24GiB", "headroom": "1GiB"},
            "models": {"a": model(8001, memory="10GiB"), "b": model(8002, memory="12 GiB")},
        },
        "c.yaml",
    )
    b = config.budget()
    assert not b.single and b.budget == 24 * GiB and b.headroom == GiB
    assert plan(b, "b", ["a"]).victims == ()


def test_memory_settings_that_mean_nothing_or_cannot_work_are_refused_by_name():
    def problems(raw):
        with pytest.raises(ConfigError) as err:
            parse_config(raw, "c.yaml")
        return err.value.problems

    found = problems(
        {
            "memory": {"probe": "nvidia-smi"},
            "models": {"a": model(8001, memory_asleep="1GiB")},
        }
    )
    assert found == [
        "memory.probe: needs memory.budget (it measures models awake together)",
        "models.a.memory_asleep: needs memory.budget (the memory block)",
    ]
    found = problems({"memory": {"headroom": "1GiB", "eviction": "lru"}, "models": {"a": model(1)}})
    assert found == [
        "memory.headroom: needs memory.budget (it is kept free of it)",
        "memory.eviction: needs memory.budget (one model is awake without it)",
    ]
    found = problems({"memory": {"budget": "8GiB", "headroom": "9GiB"}, "models": {"a": model(1)}})
    assert found == ["memory.headroom: 9.0GiB leaves nothing of the budget (8.0GiB)"]
    found = problems(
        {"memory": {"budget": "8GiB"}, "models": {"a": model(8001, memory="80 parsecs")}}
    )
    assert len(found) == 1 and found[0].startswith("models.a.memory: expected a size")
    found = problems(
        {
            "memory": {"budget": "8GiB"},
            "models": {
                "a": model(8001, memory="1GiB", pin=True),
                "b": model(8002, memory="1GiB", exclusive_with=["a"]),
            },
        }
    )
    assert found == [
        "models.b.exclusive_with: it can never be woken: is exclusive_with pinned model(s) a"
    ]
    assert problems({"memory": {"budget": 0}, "models": {"a": model(1, memory=0)}})
    config = parse_config(
        {"memory": {"budget": 2.0e10}, "models": {"a": model(8001, memory=1.0e10)}}, "c.yaml"
    )
    assert config.models["a"].memory == 10**10
