"""Several models awake under a memory budget, driven step by step (fake clock, hooks
that end when the test says). The harness checks after every step that the models
up fit the budget, that no ``exclusive_with`` pair is up together and that wakes
and sleeps never overlap (tests/support/engine.py)."""

from __future__ import annotations

import random

import pytest

from llmux.engine.cost_aware import CostAwarePolicy
from llmux.engine.policy import FifoPolicy
from llmux.engine.residency import Budget, ModelMemory
from llmux.errors import ModelUnavailable
from tests.support.engine import Harness, run_dry, storm

GiB = 1024**3


def budget(total=80, headroom=0, eviction="cost_aware", **models) -> Budget:
    specs = {}
    for name, spec in models.items():
        if isinstance(spec, int):
            spec = {"awake": spec}
        spec = dict(spec)
        spec["awake"] *= GiB
        spec["asleep"] = spec.get("asleep", 0) * GiB
        spec["exclusive_with"] = frozenset(spec.get("exclusive_with", ()))
        specs[name] = ModelMemory(**spec)
    return Budget(total * GiB, headroom * GiB, specs, eviction=eviction)


def harness(b: Budget, **kwargs) -> Harness:
    return Harness(list(b.models), budget=b, **kwargs)


def wake(h: Harness, model: str, secs: float = 0.0):
    """Bring ``model`` up through a request, answering every sleep hook on the way;
    the wake hook takes ``secs`` on the fake clock. Returns the request, released."""
    r = h.request(model)
    for _ in range(10):
        if r.admitted:
            break
        pending = h.hooks_pending()
        assert pending, f"{model} waits with no hook running: {h.status()['models']}"
        name, kind = pending[0]
        if kind == "wake":
            h.advance(secs)
        h.finish(name, kind)
    assert r.admitted
    h.release(r)
    return r


def up(h: Harness) -> list[str]:
    return sorted(h.status()["awake"])


def test_models_that_fit_together_are_awake_together_and_serve_at_once():
    h = harness(budget(chat=40, embed=2, coder=30))
    for model in ("chat", "embed", "coder"):
        wake(h, model)
    assert up(h) == ["chat", "coder", "embed"]
    assert h.calls.count(("chat", "sleep")) == 0
    rs = [h.request(m) for m in ("chat", "embed", "coder", "chat")]
    assert all(r.admitted for r in rs) and not h.switching
    assert h.status()["active"] == "coder"  # the one that woke last


def test_a_wake_that_needs_room_puts_an_idle_model_to_sleep_not_the_busy_one():
    h = harness(budget(a=40, b=30, c=30))
    wake(h, "a")
    wake(h, "b")
    busy = h.request("a")
    c = h.request("c")
    assert h.state("b") == "sleeping" and h.state("a") == "awake"
    assert h.hooks_pending() == [("b", "sleep")]
    assert h.request("a").admitted  # the busy model keeps serving meanwhile
    h.finish("b", "sleep")
    h.finish("c", "wake")
    assert c.admitted and up(h) == ["a", "c"]
    h.release(busy)


def test_only_busy_models_left_the_request_waits_for_one_to_drain():
    h = harness(budget(a=40, b=40, c=40))
    wake(h, "a")
    wake(h, "b")
    held_a, held_b = h.request("a"), h.request("b")
    c = h.request("c")
    victim = next(m for m in ("a", "b") if h.state(m) == "draining")
    other = "b" if victim == "a" else "a"
    assert h.state(other) == "awake" and h.hooks_pending() == []
    h.release(held_a if victim == "a" else held_b)
    h.finish(victim, "sleep")
    h.finish("c", "wake")
    assert c.admitted and up(h) == sorted([other, "c"])
    h.release(held_b if victim == "a" else held_a)


@pytest.mark.parametrize("eviction, evicted", [("cost_aware", "cheap"), ("lru", "costly")])
def test_cost_aware_eviction_keeps_the_model_that_is_dear_to_wake(eviction, evicted):
    """Both idle and the same size; the costly one (60 s to wake) was used less
    recently. cost-aware eviction puts the cheap one (2 s) to sleep; LRU the costly one."""
    h = harness(budget(eviction=eviction, costly=40, cheap=40, new=40))
    wake(h, "costly", secs=60.0)
    wake(h, "cheap", secs=2.0)
    h.advance(1.0)
    wake(h, "new")
    assert up(h) == sorted({"costly", "cheap", "new"} - {evicted})
    assert h.calls.count((evicted, "sleep")) == 1


def test_a_cold_start_does_not_set_what_putting_a_model_to_sleep_costs():
    """A first wake may be a cold start (60 s here) where a wake from sleep takes 2 s:
    the eviction score uses wakes from llmux's own sleep once there is one."""
    h = harness(budget(slow=40, quick=40))
    wake(h, "slow", secs=60.0)  # cold start
    assert h.sw._wake_cost("slow") == 60.0  # nothing better known yet
    h.sleep("slow")
    h.finish("slow", "sleep")
    wake(h, "slow", secs=2.0)  # from llmux's own sleep
    assert h.sw._wake_cost("slow") == 2.0
    assert h.sw.wake_costs.get(None, "slow") > 2.0  # the switch estimate keeps both


def test_a_pinned_model_is_never_put_to_sleep_to_make_room():
    h = harness(budget(embed={"awake": 10, "pin": True}, a=60, b=60))
    wake(h, "embed")
    for model in ("a", "b", "a", "b"):
        wake(h, model)
        assert "embed" in up(h)
    assert h.calls.count(("embed", "sleep")) == 0


def test_exclusive_models_are_never_awake_together_whatever_the_numbers_say():
    h = harness(budget(chat=10, coder={"awake": 10, "exclusive_with": ["chat"]}, x=10))
    wake(h, "chat")
    wake(h, "x")
    wake(h, "coder")
    assert up(h) == ["coder", "x"]
    wake(h, "chat")
    assert up(h) == ["chat", "x"]


def test_memory_held_asleep_counts_against_the_budget():
    # 40 + 30 awake = 70, plus c's 15 held asleep = 85 > 80: a must sleep for b
    h = harness(budget(a=40, b=30, c={"awake": 20, "asleep": 15}))
    wake(h, "a")
    wake(h, "b")
    assert up(h) == ["b"]


def test_a_model_measured_past_the_budget_is_still_tried_with_everything_else_asleep():
    """A measurement is evidence, not a verdict: b was once measured at 90 GiB (another
    process held memory then); by its declared 30 GiB it fits, so every other model is
    put to sleep and b is woken, not refused for good."""
    h = harness(budget(a=40, b=30))
    wake(h, "a")
    h.sw.measured.observe("b", 90 * GiB)
    r = h.request("b")
    assert h.hooks_pending() == [("a", "sleep")]
    h.finish("a", "sleep")
    h.finish("b", "wake")
    assert r.admitted and up(h) == ["b"]


def test_a_model_that_cannot_fit_by_its_declared_size_fails_its_requests_clearly():
    """A reload shrank the budget below a model that is already awake and pinned, so b
    cannot fit even with every model that may sleep asleep: its request fails at once."""
    h = harness(budget(a={"awake": 40, "pin": True}, b=30))
    wake(h, "a")
    h.sw.reconfigure(
        {"a": None, "b": None}, budget=budget(total=60, a={"awake": 40, "pin": True}, b=30)
    )
    r = h.request("b")
    assert isinstance(r.error, ModelUnavailable)
    assert "does not fit in the memory budget" in str(r.error)
    assert h.hooks_pending() == []


def test_idle_models_sleep_each_after_its_own_idle_time():
    h = harness(budget(a=10, b=10), idle={"a": 5.0, "b": 20.0})
    wake(h, "a")
    wake(h, "b")
    h.advance(6.0)
    assert h.hooks_pending() == [("a", "sleep")]
    h.finish("a", "sleep")
    h.advance(15.0)
    assert h.hooks_pending() == [("b", "sleep")]
    h.finish("b", "sleep")
    assert up(h) == []


def test_a_retargeted_switch_revises_what_it_puts_to_sleep():
    """A switch for c begins by draining a; the waiter for c leaves and one for d,
    which fits beside a, comes: a serves again and d wakes without a sleeping."""
    h = harness(budget(a=50, b=10, c=40, d=20))
    wake(h, "a")
    held = h.request("a")
    c = h.request("c")
    assert h.state("a") == "draining"
    h.cancel(c)
    d = h.request("d")
    h.release(held)
    h.finish("d", "wake")
    assert d.admitted and up(h) == ["a", "d"]
    assert h.calls.count(("a", "sleep")) == 0


@pytest.mark.parametrize("policy", [FifoPolicy, CostAwarePolicy])
def test_a_storm_under_a_budget_never_breaks_it_and_serves_everyone(policy):
    """300 steps of random arrivals, releases, departures and hook outcomes over four
    models of which two or three fit, one pinned and an exclusive pair; the harness
    checks the budget, the exclusion and one hook at a time after every step."""
    rng = random.Random(11)
    h = Harness(
        ("a", "b", "c", "e"),
        policy=policy(),
        failure_backoff_secs=0.5,
        budget=budget(
            total=60,
            a=30,
            b={"awake": 30, "exclusive_with": ["c"]},
            c=20,
            e={"awake": 10, "pin": True},
        ),
    )
    storm(h, rng, "abce")
    run_dry(h)
    assert not any(r.queued for r in h.requests), "a request was never settled"
    assert not h.switching
    assert sum(r.admitted for r in h.requests) > 50
    drained = [f for f in h.events.of("state_changed") if f[:2] == ("e", "draining")]
    assert drained == []  # pinned: never drained to be put to sleep for room


# --- measuring with a probe, and a wake that fails as out of memory ---


@pytest.mark.parametrize("probe", [False, True])
def test_a_probe_measures_each_model_and_fitting_uses_the_larger_size(probe):
    """Declared sizes 20 % too small on a fake GPU of 80 GiB. By the declared numbers c
    (30) fits beside a and b (30 + 20); really they take 36 + 24 + 36 = 96. Without a
    probe the wake fails as out of memory and is retried after one more model sleeps;
    with one, a's measured 36 GiB makes room first: no OOM, and after 3 wakes each
    model's measured size is within 5 % of the truth."""
    true = {"a": 36 * GiB, "b": 24 * GiB, "c": 36 * GiB}
    h = harness(budget(a=30, b=20, c=30), gpu=true, gpu_capacity=80 * GiB, probe=probe)
    for model in ("a", "b", "c", "a", "b", "c", "a", "b", "c"):
        wake(h, model)
    if not probe:
        assert h.oom_wakes >= 1 and h.events.of("wake_retried")
        assert h.status()["memory"]["models"]["a"]["measured"] is None
        return
    assert h.oom_wakes == 0
    for model, size in true.items():
        assert h.sw.measured.count(model) == 3
        assert abs(h.sw.measured.get(model) - size) <= 0.05 * size
    memory = h.status()["memory"]
    assert memory["models"]["a"]["measured"] == 36 * GiB
    assert memory["models"]["a"]["over_declared"] is True
    assert memory["used_measured"] == h.gpu_used()
    measured = h.events.of("memory_measured")
    assert measured and measured[-1][0] == "c"


def test_a_wake_that_fails_as_out_of_memory_is_retried_after_one_more_model_sleeps():
    gpu = {"a": 30 * GiB, "b": 30 * GiB, "c": 10 * GiB}
    h = harness(budget(a=30, b=30, c=10), gpu=gpu, gpu_capacity=60 * GiB)
    wake(h, "c")
    wake(h, "a")
    r = h.request("b")  # fits by the budget's numbers; the device is fuller than declared
    h.gpu["c"] = 25 * GiB  # c grew since (a cache): 25 + 30 + 30 > 60
    h.finish("b", "wake")  # fails: CUDA out of memory
    assert h.oom_wakes == 1
    sleeping = [m for m, kind in h.hooks_pending() if kind == "sleep"]
    assert sleeping == ["b"]  # the half-started wake is cleaned up first
    h.finish("b", "sleep")
    victim = h.hooks_pending()[0][0]
    assert victim in ("a", "c") and h.hooks_pending()[0][1] == "sleep"
    h.finish(victim, "sleep")
    h.finish("b", "wake")
    assert r.admitted and "b" in up(h) and victim not in up(h)
    assert h.events.of("wake_retried")[0][:2] == ("b", victim)
    assert ("model_evicted", (victim, "b", "out_of_memory")) in h.events.events


def test_an_out_of_memory_wake_with_nothing_left_to_evict_fails_with_backoff():
    h = harness(budget(total=50, a=30, b=30), failure_backoff_secs=5.0)
    wake(h, "a")
    held = h.request("a")
    r = h.request("b")  # a busy: drained first
    h.release(held)
    h.finish("a", "sleep")
    h.finish("b", "wake", rc=1, stderr="RuntimeError: CUDA error: out of memory")
    h.finish("b", "sleep")
    assert isinstance(r.error, ModelUnavailable) and "out of memory" in str(r.error)
    assert h.state("b") == "failed" and h.events.of("wake_retried") == []


def test_a_wake_that_fits_goes_on_while_an_older_waiter_needs_a_busy_model_asleep():
    """c wakes; meanwhile a (never awake with c) and then d (fits beside c) queue. d is
    woken at once, beside the busy c; its commits see only what fits, so it is never
    turned to a (which would need c asleep) and back again. Then a gets its turn."""
    h = harness(
        budget(
            total=24,
            a=10,
            b={"awake": 8, "pin": True},
            c={"awake": 12, "exclusive_with": ["a"]},
            d=6,
        )
    )
    held = h.request("c")
    a = h.request("a")
    d = h.request("d")
    h.finish("c", "wake")  # the engine settles: a spinning retarget would fail here
    assert held.admitted and h.hooks_pending() == [("d", "wake")]
    assert h.events.of("switch_retargeted") == []
    h.finish("d", "wake")
    assert d.admitted and a.queued and h.state("c") == "draining"
    h.release(held)
    h.finish("c", "sleep")
    h.finish("a", "wake")
    assert a.admitted and up(h) == ["a", "d"]


def test_a_failed_model_that_fits_is_retried_in_its_turn_without_a_spin():
    """c's wake failed; c (fits) and b (needs the busy a asleep) then wait. A failed
    model does not jump the queue as a model that fits would, and its retry, once
    decided, is not abandoned at its own commit for not fitting the view: the engine
    settles and serves both."""
    h = harness(
        budget(
            total=60,
            a=30,
            b={"awake": 30, "exclusive_with": ["c"]},
            c=20,
            e={"awake": 10, "pin": True},
        ),
        failure_backoff_secs=0.5,
    )
    wake(h, "e")
    held = h.request("a")
    h.finish("a", "wake")
    first = h.request("c")
    h.finish("c", "wake", rc=1)
    h.finish("c", "sleep")  # the failed wake's clean-up
    assert isinstance(first.error, ModelUnavailable) and h.state("c") == "failed"
    c = h.request("c")
    b = h.request("b")
    h.advance(1.0)  # past the backoff: the harness fails if the engine spins
    assert h.hooks_pending() == [("c", "wake")]
    h.finish("c", "wake")
    assert c.admitted and b.queued
    h.release(held, c)  # b needs c (exclusive) and a (room) asleep
    for model, kind in (("c", "sleep"), ("a", "sleep"), ("b", "wake")):
        assert h.hooks_pending() == [(model, kind)]
        h.finish(model, kind)
    assert b.admitted and up(h) == ["b", "e"]


def test_a_removed_model_still_awake_keeps_its_size_until_it_sleeps():
    h = harness(budget(a=50, b=50))
    wake(h, "a")
    held = h.request("a")  # busy: the reload's own sleep of a must drain it first
    assert h.sw.reconfigure({"b": None}, budget=budget(b=50)) == ["a"]
    r = h.request("b")  # b does not fit beside a's real 50 GiB: a must sleep first
    assert h.state("a") == "draining" and h.hooks_pending() == []
    h.release(held)
    h.finish("a", "sleep")
    h.finish("b", "wake")
    assert r.admitted and up(h) == ["b"] and "a" not in h.sw.budget.models


def test_between_two_victims_sleeps_the_switch_asks_again():
    """t needs a and b asleep. While a sleeps, t's client leaves and b is asked for:
    b is not put to sleep (only to be woken again), and the switch is abandoned."""
    h = harness(budget(total=100, a=40, b=40, t=80))
    wake(h, "a")
    wake(h, "b")
    t = h.request("t")
    first = h.hooks_pending()[0][0]
    h.cancel(t)
    again = h.request(first == "a" and "b" or "a")
    h.finish(first, "sleep")
    assert h.hooks_pending() == [] and again.admitted
    assert h.sw.last_switch["result"] == "abandoned"


def test_a_drain_ends_early_when_any_victim_is_wanted_again():
    """a and b drain for t; t's client leaves and a request for b comes while a still
    streams: the switch is abandoned at once rather than after a's longest stream."""
    h = harness(budget(total=100, a=40, b=40, t=80))
    wake(h, "a")
    wake(h, "b")
    ra, rb = h.request("a"), h.request("b")
    t = h.request("t")
    assert {h.state("a"), h.state("b")} == {"draining"}
    h.cancel(t)
    again = h.request("b")
    h.release(rb)
    assert again.admitted and h.state("a") == h.state("b") == "awake"
    h.release(ra)


def test_a_cold_wake_is_measured_without_the_share_it_would_hold_asleep():
    """b declares 2 GiB held asleep; its first wake starts from nothing, so what the
    probe sees it take is its whole size, with nothing added for an asleep share."""
    h = harness(
        budget(a=10, b={"awake": 10, "asleep": 2}), gpu={"a": 10 * GiB, "b": 10 * GiB},
        gpu_capacity=80 * GiB,
    )  # fmt: skip
    wake(h, "b")
    assert h.sw.measured.get("b") == 10 * GiB
