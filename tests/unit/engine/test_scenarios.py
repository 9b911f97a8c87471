"""The switcher driven step by step: fake clock, hooks that end when the test says.

The scenarios of the threaded switcher tests (tests/unit/test_switcher*.py), with
no thread and no wall-clock bound; the harness checks the engine's invariants
after every step (tests/support/engine.py).
"""

from __future__ import annotations

import pytest

from llmux.engine.states import IllegalTransition, ModelState, transition
from llmux.errors import (
    ClientGone,
    ModelNotFound,
    ModelUnavailable,
    QueueFull,
    ShuttingDown,
    SwitchTimeout,
)
from tests.support.engine import Harness, run_dry, storm


def awake(h: Harness, model: str) -> None:
    """Bring ``model`` up through a request that is then released."""
    r = h.request(model)
    if not r.admitted:
        if h.hooks_pending() and h.hooks_pending()[0][1] == "sleep":
            h.finish(h.hooks_pending()[0][0], "sleep")
        h.finish(model, "wake")
    assert r.admitted
    h.release(r)


# --- requests and one switch ---


def test_a_cold_request_wakes_its_model_then_is_admitted():
    h = Harness()
    r = h.request("a")
    assert r.queued and h.state("a") == "waking"
    assert h.hooks_pending() == [("a", "wake")]
    h.finish("a", "wake")
    assert r.admitted and h.state("a") == "awake"
    assert h.calls == [("a", "wake"), ("a", "alive")]
    assert h.events.of("switch_finished")[0][:3] == (None, "a", True)


def test_twenty_requests_for_a_cold_model_cause_one_wake():
    h = Harness()
    rs = [h.request("a") for _ in range(20)]
    h.finish("a", "wake")
    assert all(r.admitted for r in rs)
    assert h.calls.count(("a", "wake")) == 1
    assert h.status()["models"]["a"]["in_flight"] == 20
    h.release(*rs)
    assert h.status()["models"]["a"]["in_flight"] == 0


def test_requests_for_the_awake_model_are_admitted_at_once_in_parallel():
    h = Harness()
    awake(h, "a")
    rs = [h.request("a") for _ in range(5)]
    assert all(r.admitted for r in rs) and not h.switching


def test_release_is_idempotent():
    h = Harness()
    awake(h, "a")
    r = h.request("a")
    r.ticket.release()
    r.ticket.release()
    r.released = True
    h.settle()
    assert h.status()["models"]["a"]["in_flight"] == 0


def test_unknown_model():
    h = Harness()
    with pytest.raises(ModelNotFound):
        h.request("nope")


def test_a_switch_waits_for_the_requests_in_flight():
    h = Harness()
    awake(h, "a")
    held = h.request("a")
    b = h.request("b")
    assert h.state("a") == "draining" and h.hooks_pending() == []
    h.release(held)
    assert h.hooks_pending() == [("a", "sleep")]
    h.finish("a", "sleep")
    h.finish("b", "wake")
    assert b.admitted and h.state("a") == "asleep" and h.state("b") == "awake"
    phases = h.status()["last_switch"]["phases"]
    assert set(phases) == {"drain", "sleep", "wake"}


def test_a_request_for_the_draining_model_waits_and_is_served_after_the_switch():
    h = Harness()
    awake(h, "a")
    held = h.request("a")
    b = h.request("b")
    a2 = h.request("a")
    assert a2.queued, "a draining model admits nobody new"
    h.release(held)
    h.finish("a", "sleep")
    h.finish("b", "wake")
    assert b.admitted and a2.queued
    h.release(b)
    h.finish("b", "sleep")
    h.finish("a", "wake")
    assert a2.admitted


def test_waiters_are_admitted_together_before_the_next_switch_can_drain():
    h = Harness()
    bs = [h.request("b") for _ in range(3)]
    c = h.request("c")
    h.finish("b", "wake")
    assert all(r.admitted for r in bs) and h.state("b") == "draining"
    assert c.queued and h.hooks_pending() == []
    h.release(*bs)
    h.finish("b", "sleep")
    h.finish("c", "wake")
    assert c.admitted


def test_without_drain_the_sleep_runs_at_once():
    h = Harness(drain_before_switch=False)
    awake(h, "a")
    held = h.request("a")
    h.request("b")
    assert h.hooks_pending() == [("a", "sleep")]
    h.release(held)


# --- leaving the queue ---


def test_a_waiter_that_leaves_causes_no_switch():
    h = Harness()
    awake(h, "a")
    held = h.request("a")
    b = h.request("b")
    assert h.cancel(b) and isinstance(b.error, ClientGone)
    h.release(held)
    assert h.hooks_pending() == [] and h.state("a") == "awake"
    assert h.status()["last_switch"]["result"] == "abandoned"
    assert h.events.of("request_left_queue")[0][:2] == ("b", "client_gone")


def test_cancelling_an_admitted_request_changes_nothing():
    h = Harness()
    r = h.request("a")
    h.finish("a", "wake")
    assert not h.cancel(r)
    assert r.admitted and h.status()["models"]["a"]["in_flight"] == 1


def test_a_switch_goes_on_to_whoever_waits_now():
    h = Harness()
    awake(h, "a")
    held = h.request("a")
    b = h.request("b")
    c = h.request("c")
    h.cancel(b)
    h.release(held)
    h.finish("a", "sleep")
    assert h.hooks_pending() == [("c", "wake")]
    h.finish("c", "wake")
    assert c.admitted
    assert h.events.of("switch_retargeted") == [("a", "b", "c")]


def test_a_waiter_leaving_during_the_sleep_hook_means_no_wake():
    h = Harness()
    awake(h, "a")
    b = h.request("b")
    assert h.hooks_pending() == [("a", "sleep")]
    h.cancel(b)
    h.finish("a", "sleep")
    assert h.hooks_pending() == [] and h.state("a") == "asleep" and not h.switching
    assert h.status()["last_switch"]["result"] == "abandoned"


def test_a_request_for_the_draining_model_keeps_it_awake_when_the_other_left():
    h = Harness()
    awake(h, "a")
    held = h.request("a")
    b = h.request("b")
    a2 = h.request("a")
    h.cancel(b)
    # the drain ends early: a's own waiter need not wait for the held request
    assert a2.admitted and h.state("a") == "awake" and not h.switching
    h.release(held, a2)


def test_queue_full_says_when_to_come_back():
    h = Harness(max_queue_depth=2)
    h.request("a")
    h.request("a")
    with pytest.raises(QueueFull) as info:
        h.request("a")
    assert info.value.retry_after >= 1


def test_close_fails_waiters_and_refuses_new_requests():
    h = Harness()
    r = h.request("a")
    h.sw.close()
    h.settle()
    assert isinstance(r.error, ShuttingDown)
    with pytest.raises(ShuttingDown):
        h.request("b")
    h.finish("a", "wake")  # the wake that ran ends; nobody is admitted
    assert not h.switching


def test_close_during_a_drain_abandons_the_switch():
    h = Harness()
    awake(h, "a")
    held = h.request("a")
    b = h.request("b")
    h.sw.close()
    h.settle()
    assert isinstance(b.error, ShuttingDown)
    assert h.state("a") == "awake" and not h.switching and h.hooks_pending() == []
    h.release(held)


# --- failures ---


def test_a_failed_wake_fails_every_waiter_once_and_backs_off():
    h = Harness(failure_backoff_secs=2.0)
    rs = [h.request("a") for _ in range(3)]
    h.finish("a", "wake", rc=1)
    assert h.hooks_pending() == [("a", "sleep")], "what half-started is cleaned up first"
    h.finish("a", "sleep")
    assert all(isinstance(r.error, ModelUnavailable) for r in rs)
    assert all(r.error.retry_after >= 1 for r in rs) and h.state("a") == "failed"
    assert len(h.events.of("request_left_queue")) == 3
    retry = h.request("a")
    assert h.hooks_pending() == [], "no new wake within the backoff"
    h.advance(1.9)
    assert h.hooks_pending() == []
    h.advance(0.1)
    assert h.hooks_pending() == [("a", "wake")]
    h.finish("a", "wake")
    assert retry.admitted


def test_alive_never_passing_is_a_failed_wake_after_ready_timeout():
    h = Harness(ready_timeout=3.0)
    h.alive_override["a"] = False
    r = h.request("a")
    h.finish("a", "wake")
    assert r.queued
    h.advance(2.9)
    assert r.queued and h.state("a") == "waking"
    h.advance(1.0)
    h.finish("a", "sleep")  # the half-started model is cleaned up
    assert isinstance(r.error, ModelUnavailable) and "alive hook never passed" in str(r.error)
    assert h.state("a") == "failed"


def test_a_failed_sleep_with_the_model_still_alive_keeps_it_serving():
    h = Harness()
    awake(h, "a")
    b = h.request("b")
    h.finish("a", "sleep", rc=1)  # alive still passes: it is up
    assert isinstance(b.error, ModelUnavailable)
    assert h.state("a") == "awake" and h.request("a").admitted


def test_a_failed_sleep_with_the_model_dead_goes_on():
    h = Harness()
    awake(h, "a")
    b = h.request("b")
    h.up.discard("a")  # it died anyway
    h.finish("a", "sleep", rc=1)
    h.finish("b", "wake")
    assert b.admitted


def test_a_drain_timeout_abandons_the_switch_and_the_old_model_keeps_serving():
    h = Harness(drain_timeout_secs=5.0)
    awake(h, "a")
    held = h.request("a")
    b = h.request("b")
    h.advance(4.9)
    assert b.queued
    h.advance(0.1)
    assert isinstance(b.error, SwitchTimeout)
    assert h.state("a") == "awake" and h.request("a").admitted
    h.release(held)


def test_a_crash_in_the_sleep_step_leaves_the_old_model_serving():
    h = Harness()
    awake(h, "a")
    b = h.request("b")
    h.finish("a", "sleep", raises=RuntimeError("hook runner broke"))
    assert isinstance(b.error, ModelUnavailable)
    assert h.state("a") == "awake" and not h.switching


def test_a_crash_in_the_wake_step_fails_the_target_and_cleans_it_up():
    h = Harness(failure_backoff_secs=0.5)
    awake(h, "a")
    b = h.request("b")
    h.finish("a", "sleep")
    h.finish("b", "wake", raises=RuntimeError("hook runner broke"))
    assert h.hooks_pending() == [("b", "sleep")], "the half-woken target is cleaned up"
    h.finish("b", "sleep")
    assert isinstance(b.error, ModelUnavailable) and h.state("b") == "failed"
    assert not h.switching


# --- time: residency, idle sleep, estimates ---


def test_min_active_secs_holds_a_switch_back_until_it_ran_out():
    h = Harness(min_active_secs=10.0)
    awake(h, "a")
    h.advance(4.0)
    b = h.request("b")
    assert h.hooks_pending() == [] and h.state("a") == "awake"
    h.advance(5.9)
    assert h.hooks_pending() == []
    h.advance(0.1)
    assert h.hooks_pending() == [("a", "sleep")]
    h.finish("a", "sleep")
    h.finish("b", "wake")
    assert b.admitted


def test_idle_sleep_counts_from_the_end_of_the_last_request():
    h = Harness(idle={"a": 30.0})
    r = h.request("a")
    h.finish("a", "wake")
    h.advance(100)  # busy: no idle time runs
    assert h.hooks_pending() == []
    h.release(r)
    h.advance(29.9)
    assert h.hooks_pending() == []
    h.advance(0.1)
    assert h.hooks_pending() == [("a", "sleep")]
    h.finish("a", "sleep")
    assert h.state("a") == "asleep" and h.events.of("model_put_to_sleep")[0][:3] == (
        "a",
        "idle",
        True,
    )


def test_queued_requests_for_another_model_hold_idle_sleep_back():
    h = Harness(idle={"a": 1.0}, min_active_secs=60.0)
    awake(h, "a")
    b = h.request("b")  # waits for the residency
    h.advance(30)
    assert h.hooks_pending() == [] and h.state("a") == "awake"
    h.cancel(b)
    h.advance(0)
    assert h.hooks_pending() == [("a", "sleep")]


def test_an_operator_sleep_drains_then_runs_the_sleep_hook():
    h = Harness()
    awake(h, "a")
    held = h.request("a")
    h.sleep("a")
    assert h.state("a") == "draining" and h.hooks_pending() == []
    h.release(held)
    h.finish("a", "sleep")
    assert h.state("a") == "asleep" and not h.switching


def test_estimates_come_from_measured_switches_and_the_wake_progress():
    h = Harness()
    assert h.status()["models"]["a"]["estimated_wait_secs"] is None
    r = h.request("a")
    h.advance(8.0)
    h.finish("a", "wake")
    h.release(r)
    assert h.status()["models"]["a"]["estimated_wait_secs"] == 0.0
    assert h.status()["models"]["b"]["estimated_wait_secs"] == 8.0  # the mean into any model
    b = h.request("b")
    h.advance(2.0)
    h.finish("a", "sleep")
    h.advance(1.0)
    assert h.status()["models"]["b"]["estimated_wait_secs"] == 5.0  # 8 s average, 3 s spent
    h.wake_progress["b"] = 0.5
    h.advance(1.0)  # the wake ran 2 s and says it is half done: 2 s more
    assert h.status()["models"]["b"]["estimated_wait_secs"] == 2.0
    h.finish("b", "wake")
    assert b.admitted


# --- outside knowledge ---


def test_start_up_adopts_the_model_it_finds_and_requests_queue_meanwhile():
    h = Harness()
    h.start(awake="b")
    assert h.state("b") == "awake" and h.request("b").admitted


def test_preload_at_start_unless_a_model_is_awake():
    h = Harness()
    h.start(preload="a")
    assert h.hooks_pending() == [("a", "wake")]
    h.finish("a", "wake")
    assert h.state("a") == "awake"
    h2 = Harness()
    h2.start(awake="b", preload="a")
    assert h2.hooks_pending() == [] and h2.state("b") == "awake"


def test_an_unreachable_backend_that_died_is_woken_again_on_demand():
    h = Harness()
    awake(h, "a")
    h.up.discard("a")
    h.sw.backend_unreachable("a")
    h.settle()
    assert h.state("a") == "asleep"
    r = h.request("a")
    h.finish("a", "wake")
    assert r.admitted


def test_an_unreachable_backend_that_is_alive_stays_awake():
    h = Harness()
    awake(h, "a")
    h.sw.backend_unreachable("a")
    h.settle()
    assert h.state("a") == "awake"


def test_reconfigure_fails_the_queue_of_a_removed_model():
    h = Harness(("a", "b"))
    awake(h, "a")
    held = h.request("a")
    b = h.request("b")
    still = h.sw.reconfigure({"a": None, "c": None})
    h.settle()
    assert still == [] and isinstance(b.error, ModelNotFound)
    assert "b" not in h.status()["models"] and h.state("c") == "asleep"
    h.release(held)


# --- the transition table ---


def test_illegal_transitions_raise():
    assert transition(ModelState.AWAKE, ModelState.DRAINING) == "draining"
    with pytest.raises(IllegalTransition):
        transition(ModelState.ASLEEP, ModelState.SLEEPING)
    with pytest.raises(IllegalTransition):
        transition(ModelState.FAILED, ModelState.AWAKE)


def test_a_residency_wait_outlasted_by_an_operator_sleep_does_not_spin_the_timer():
    h = Harness(min_active_secs=10.0)
    awake(h, "a")
    held = h.request("a")
    b = h.request("b")  # the policy says: wait until a's residency ends
    h.cancel(b)
    h.sleep("a")  # the slot is taken, and a drains for as long as `held` lasts
    h.advance(60)  # past the residency: the harness fails if the timer spins
    assert h.state("a") == "draining"
    h.release(held)
    h.finish("a", "sleep")
    assert h.state("a") == "asleep" and not h.switching


def test_a_failed_model_removed_and_added_again_starts_asleep():
    h = Harness(("a", "b"), failure_backoff_secs=0.0)
    r = h.request("b")
    h.finish("b", "wake", rc=1)
    h.finish("b", "sleep")
    assert isinstance(r.error, ModelUnavailable) and h.state("b") == "failed"
    h.sw.reconfigure({"a": None})
    h.settle()
    h.sw.reconfigure({"a": None, "b": None})
    h.settle()
    assert h.state("b") == "asleep"
    again = h.request("b")
    h.finish("b", "wake")
    assert again.admitted


# --- the rest of the threaded tests' cases ---


def test_a_queued_callback_that_raises_takes_the_request_out_again():
    h = Harness()

    def refuse(waiter):
        raise ClientGone("client disconnected while queued")

    with pytest.raises(ClientGone):
        h.sw.enter("a", queued=refuse)
    h.settle()
    assert h.status()["models"]["a"]["queued"] == 0
    assert h.hooks_pending() == [] and not h.switching, "a request that left caused no wake"


def test_a_start_up_check_that_fails_leaves_everything_asleep():
    h = Harness()

    def broken():
        raise OSError("state file unreadable")

    h.sw.start(broken)
    h.settle()
    assert not h.switching and {m["state"] for m in h.status()["models"].values()} == {"asleep"}
    r = h.request("a")
    h.finish("a", "wake")
    assert r.admitted


def test_queue_positions_are_by_arrival_across_models():
    h = Harness()
    awake(h, "a")
    held = h.request("a")
    b1, c1, b2 = h.request("b"), h.request("c"), h.request("b")
    assert [h.sw.progress(r.waiter)["position"] for r in (b1, c1, b2)] == [1, 2, 3]
    queue = h.status()["models"]["b"]["queue"]
    assert [q["position"] for q in queue] == [1, 3]
    h.release(held)


def test_a_request_arriving_while_its_model_sleeps_wakes_it_again():
    h = Harness()
    awake(h, "a")
    h.sleep("a")
    assert h.hooks_pending() == [("a", "sleep")]
    r = h.request("a")
    assert r.queued
    h.finish("a", "sleep")
    assert h.hooks_pending() == [("a", "wake")]
    h.finish("a", "wake")
    assert r.admitted


def test_an_operator_sleep_whose_hook_fails_with_the_model_alive_keeps_it_serving():
    h = Harness()
    awake(h, "a")
    h.sleep("a")
    h.finish("a", "sleep", rc=1)  # alive still passes
    assert h.state("a") == "awake" and not h.switching
    assert h.events.of("model_put_to_sleep")[-1][2] is False
    assert h.request("a").admitted


def test_a_removed_awake_model_is_forgotten_after_the_next_switch():
    h = Harness(("a", "b"))
    awake(h, "a")
    assert h.sw.reconfigure({"b": None}) == ["a"]
    h.settle()
    with pytest.raises(ModelNotFound):
        h.request("a")
    b = h.request("b")
    h.finish("a", "sleep")
    h.finish("b", "wake")
    assert b.admitted and "a" not in h.status()["models"]


def test_a_storm_of_requests_over_three_models_never_wedges():
    """300 steps of random arrivals, releases, departures and hook outcomes; the
    harness checks the invariants after each step; at the end everyone is served."""
    import random

    rng = random.Random(7)
    h = Harness(failure_backoff_secs=0.5)
    storm(h, rng, "abc")
    run_dry(h)
    assert not any(r.queued for r in h.requests), "a request was never settled"
    assert not h.switching
    served = sum(r.admitted for r in h.requests)
    assert served > 50, served


# --- a thread killed mid-way (gunicorn's graceful timeout, a cancelled greenlet) ---


def kill(h: Harness, name: str) -> None:
    """What a killed thread does to the procedure it ran: it is closed mid-way."""
    step = next(s for s in h.runner.steps if s.name in (name, f"llmux-{name}"))
    h.runner.steps.remove(step)
    step.procedure.close()
    h.settle()


def test_a_switch_killed_mid_drain_leaves_the_old_model_serving():
    h = Harness()
    awake(h, "a")
    held = h.request("a")
    b = h.request("b")
    kill(h, "llmux-switch")
    assert isinstance(b.error, ModelUnavailable)
    assert h.state("a") == "awake" and not h.switching and h.request("a").admitted
    h.release(held)


def test_a_sleep_killed_during_its_hook_counts_the_model_as_still_up():
    h = Harness()
    awake(h, "a")
    h.sleep("a")
    assert h.hooks_pending() == [("a", "sleep")]
    kill(h, "sleep")
    assert h.state("a") == "awake" and not h.switching
    assert h.events.of("model_put_to_sleep")[-1][2:5:2] == (False, "interrupted")


def test_a_wait_until_in_the_past_does_not_spin_the_timer():
    from llmux.engine.policy import FifoPolicy, WaitUntil

    class Confused(FifoPolicy):
        def decide(self, snap):
            return WaitUntil(snap.now - 10) if "b" in snap.queues else super().decide(snap)

    h = Harness(policy=Confused())
    awake(h, "a")
    h.request("b")
    h.advance(1.0)  # the harness fails if the timer keeps finding itself due
    assert h.hooks_pending() == []


def test_reconcile_keeps_the_first_live_model_when_a_policy_names_another():
    from llmux.engine.hooks import HookResult
    from llmux.engine.ownership import reconcile

    calls = []

    def run_hook(model, kind):
        calls.append((model, kind))
        return HookResult(kind, 0 if model in ("a", "b") else 1, 0.0)

    kept = reconcile(
        {"a": "awake", "b": "waking"}, ["a", "b", "c"], run_hook, choose=lambda alive: "c"
    )
    assert kept == ["a"] and ("b", "sleep") in calls and ("a", "sleep") not in calls


def test_the_estimate_counts_the_residency_a_switch_must_wait_out():
    h = Harness(min_active_secs=10.0)
    r = h.request("a")
    h.advance(2.0)
    h.finish("a", "wake")  # a switch costs 2 s; a is resident for 10 s from now
    h.release(r)
    h.advance(3.0)
    h.request("b")
    assert h.status()["models"]["b"]["estimated_wait_secs"] == 9.0  # 7 s resident, 2 s switch


def test_reconcile_under_a_budget_keeps_every_live_model_that_fits():
    from llmux.engine.hooks import HookResult
    from llmux.engine.ownership import reconcile

    calls = []

    def run_hook(model, kind):
        calls.append((model, kind))
        return HookResult(kind, 0, 0.0)

    recorded = {"a": "awake", "b": "awake", "c": "awake"}
    kept = reconcile(recorded, ["a", "b", "c"], run_hook, fits=lambda ms: len(ms) <= 2)
    assert kept == ["a", "b"] and ("c", "sleep") in calls
    assert ("a", "sleep") not in calls and ("b", "sleep") not in calls
    from llmux.engine.residency import Budget, ModelMemory

    h = Harness(budget=Budget(2, 0, {m: ModelMemory(1) for m in "abc"}))
    h.up.update(kept)
    h.sw.start(lambda: kept)
    h.settle()
    assert h.state("a") == h.state("b") == "awake" and h.status()["awake"] == ["a", "b"]
