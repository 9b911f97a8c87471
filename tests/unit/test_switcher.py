"""The switcher with fake hooks, under plain threads (and, in tox's gevent env, greenlets)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from llmux.engine.switcher import ASLEEP, AWAKE, FAILED, Switcher, SwitchSettings
from llmux.errors import (
    ClientGone,
    ModelNotFound,
    ModelUnavailable,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
    SwitchTimeout,
)
from tests.support import wait_for

from .fakes import FakeHooks

MODELS = ("a", "b", "c")


def make(hooks=None, **settings):
    hooks = hooks or FakeHooks()
    return Switcher(MODELS, hooks, SwitchSettings(**settings)), hooks


def spawn(fn, *args, **kwargs):
    """Run fn in a thread; the returned dict gets 'value' or 'error' when it ends."""
    box: dict = {}

    def body():
        try:
            box["value"] = fn(*args, **kwargs)
        except Exception as exc:
            box["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    box["thread"] = t
    return box


def join(*boxes, timeout=10.0):
    for box in boxes:
        box["thread"].join(timeout)
        assert not box["thread"].is_alive(), "a request never finished"


def test_unknown_model():
    sw, _ = make()
    with pytest.raises(ModelNotFound):
        sw.acquire("nope")


def test_twenty_concurrent_requests_for_a_cold_model_cause_one_wake():
    sw, hooks = make(FakeHooks(wake_secs=0.05))
    boxes = [spawn(sw.acquire, "a", timeout=5) for _ in range(20)]
    join(*boxes)
    tickets = [b["value"] for b in boxes]
    assert hooks.count("a", "wake") == 1
    assert sw.status()["models"]["a"]["in_flight"] == 20
    for t in tickets:
        t.release()
    assert sw.status()["models"]["a"]["in_flight"] == 0
    assert sw.state("a") == AWAKE


def test_requests_for_the_awake_model_are_not_serialised():
    sw, hooks = make()
    sw.acquire("a").release()
    tickets = [sw.acquire("a", timeout=0.01) for _ in range(50)]  # would time out if serialised
    assert sw.status()["models"]["a"]["in_flight"] == 50
    for t in tickets:
        t.release()
    assert hooks.count("a", "wake") == 1


def test_release_is_idempotent():
    sw, _ = make()
    t = sw.acquire("a")
    t.release()
    t.release()
    assert sw.status()["models"]["a"]["in_flight"] == 0


def test_a_switch_waits_for_in_flight_tickets():
    sw, hooks = make()
    ticket_a = sw.acquire("a")
    box = spawn(sw.acquire, "b", timeout=5)
    wait_for(lambda: sw.status()["models"]["a"]["state"] == "draining")
    time.sleep(0.1)
    assert hooks.count("a", "sleep") == 0, "slept a model with a request in flight"
    assert "value" not in box
    ticket_a.release()
    join(box)
    assert hooks.calls[-3:] == [("a", "sleep"), ("b", "wake"), ("b", "alive")]
    box["value"].release()
    assert not hooks.overlaps


def test_a_request_for_the_draining_model_waits_and_is_served_after():
    sw, hooks = make()
    ticket_a = sw.acquire("a")
    box_b = spawn(sw.acquire, "b", timeout=5)
    wait_for(lambda: sw.state("a") == "draining")
    box_a2 = spawn(sw.acquire, "a", timeout=5)
    time.sleep(0.05)
    assert "value" not in box_a2, "a draining model took a new request"
    ticket_a.release()
    join(box_b)
    assert sw.status()["active"] == "b"
    box_b["value"].release()
    join(box_a2)
    assert sw.status()["active"] == "a"
    box_a2["value"].release()
    assert [c for c in hooks.calls if c[1] != "alive"] == [
        ("a", "wake"),
        ("a", "sleep"),
        ("b", "wake"),
        ("b", "sleep"),
        ("a", "wake"),
    ]


def test_queue_timeout_leaves_the_queue_and_causes_no_switch():
    sw, hooks = make(min_active_secs=0.6)
    sw.acquire("a").release()
    started = time.monotonic()
    with pytest.raises(QueueTimeout) as err:
        sw.acquire("b", timeout=0.2)
    assert 0.18 <= time.monotonic() - started < 0.5
    assert err.value.status == 504 and err.value.code == "queue_timeout"
    assert sw.status()["models"]["b"]["queued"] == 0
    time.sleep(0.7)  # past min_active_secs: a leftover waiter would trigger a switch now
    assert hooks.count("b", "wake") == 0
    assert sw.status()["active"] == "a"


def test_request_timeout_secs_is_the_default_queue_timeout():
    sw, hooks = make(FakeHooks(wake_secs=0.5), request_timeout_secs=0.1)
    with pytest.raises(QueueTimeout):
        sw.acquire("a")
    # a timed-out waiter does not cancel the wake; the model simply stays awake
    wait_for(lambda: sw.state("a") == AWAKE)
    assert hooks.count("a", "wake") == 1


def test_cancelled_waiter_leaves_the_queue_and_never_switches():
    sw, hooks = make(min_active_secs=0.5)
    sw.acquire("a").release()
    gone = threading.Event()
    box = spawn(sw.acquire, "b", timeout=5, cancelled=gone.is_set)
    wait_for(lambda: sw.status()["models"]["b"]["queued"] == 1)
    gone.set()
    join(box)
    assert isinstance(box["error"], ClientGone)
    time.sleep(0.6)
    assert hooks.count("b", "wake") == 0
    assert sw.status()["models"]["b"]["queued"] == 0


def test_wake_failure_fails_all_waiters_once_and_the_next_request_retries_after_backoff():
    hooks = FakeHooks()
    sw, _ = make(hooks, failure_backoff_secs=0.3)

    def wake_fails_once_all_five_wait():
        wait_for(lambda: sw.status()["models"]["b"]["queued"] == 5)
        return 3

    hooks.override[("b", "wake")] = wake_fails_once_all_five_wait
    boxes = [spawn(sw.acquire, "b", timeout=5) for _ in range(5)]
    join(*boxes)
    errors = [b.get("error") for b in boxes]
    assert all(isinstance(e, ModelUnavailable) for e in errors)
    assert "wake hook failed with exit code 3" in errors[0].message
    assert "boom" in errors[0].message  # the stderr tail
    assert errors[0].retry_after >= 1
    assert hooks.count("b", "wake") == 1
    assert hooks.count("b", "sleep") == 1  # cleanup after the failed wake
    assert sw.state("b") == FAILED

    del hooks.override[("b", "wake")]
    failed_at = time.monotonic()
    sw.acquire("b", timeout=5).release()
    assert time.monotonic() - failed_at >= 0.2, "retried before the backoff ended"
    assert hooks.count("b", "wake") == 2
    assert sw.state("b") == AWAKE


def test_alive_never_passing_is_a_failed_wake():
    hooks = FakeHooks(ready_timeout=0.3)
    hooks.override[("a", "alive")] = lambda: 1
    sw, _ = make(hooks, failure_backoff_secs=0)
    with pytest.raises(ModelUnavailable) as err:
        sw.acquire("a", timeout=5)
    assert "alive hook never passed" in err.value.message
    assert hooks.count("a", "alive") >= 3  # polled, with a growing interval


def test_sleep_failure_with_the_model_still_alive_keeps_it_awake():
    hooks = FakeHooks()
    hooks.override[("a", "sleep")] = lambda: 1
    sw, _ = make(hooks)
    sw.acquire("a").release()
    with pytest.raises(ModelUnavailable) as err:
        sw.acquire("b", timeout=5)
    assert "could not put 'a' to sleep" in err.value.message
    assert hooks.count("b", "wake") == 0, "woke a model on top of a live one"
    assert sw.state("a") == AWAKE
    sw.acquire("a", timeout=0.1).release()  # still serving


def test_sleep_failure_with_the_model_dead_goes_on():
    hooks = FakeHooks()

    def sleep_fails_but_model_dies():
        hooks.up.discard("a")
        return 1

    hooks.override[("a", "sleep")] = sleep_fails_but_model_dies
    sw, _ = make(hooks)
    sw.acquire("a").release()
    sw.acquire("b", timeout=5).release()
    assert sw.state("b") == AWAKE and sw.state("a") == ASLEEP


def test_drain_timeout_abandons_the_switch_and_the_old_model_keeps_serving():
    sw, hooks = make(drain_timeout_secs=0.2)
    held = sw.acquire("a")
    box_b = spawn(sw.acquire, "b", timeout=5)
    wait_for(lambda: sw.state("a") == "draining")
    box_a = spawn(sw.acquire, "a", timeout=5)  # queues during the drain
    join(box_b)
    assert isinstance(box_b["error"], SwitchTimeout)
    assert box_b["error"].status == 503 and box_b["error"].retry_after
    join(box_a)
    box_a["value"].release()  # admitted when the drain was abandoned
    assert sw.state("a") == AWAKE
    assert hooks.count("a", "sleep") == 0
    held.release()


def test_without_drain_the_sleep_runs_at_once():
    sw, hooks = make(drain_before_switch=False)
    held = sw.acquire("a")
    sw.acquire("b", timeout=5).release()
    assert hooks.count("a", "sleep") == 1
    held.release()
    assert sw.status()["models"]["a"]["in_flight"] == 0


def test_queue_full():
    sw, _ = make(FakeHooks(wake_secs=0.3), max_queue_depth=2)
    boxes = [spawn(sw.acquire, "a", timeout=5) for _ in range(2)]
    wait_for(lambda: sw.status()["models"]["a"]["queued"] == 2)
    with pytest.raises(QueueFull) as err:
        sw.acquire("a", timeout=5)
    assert err.value.status == 429 and err.value.retry_after >= 1
    join(*boxes)
    for b in boxes:
        b["value"].release()


def test_close_fails_waiters_and_refuses_new_requests():
    sw, _ = make(FakeHooks(wake_secs=0.3))
    box = spawn(sw.acquire, "a", timeout=5)
    wait_for(lambda: sw.status()["models"]["a"]["queued"] == 1)
    sw.close()
    join(box)
    assert isinstance(box["error"], ShuttingDown)
    with pytest.raises(ShuttingDown):
        sw.acquire("a")


def test_waiters_are_admitted_together_before_the_next_switch_can_drain():
    """The Rust llmux's endless loop: b's waiters must be in flight before c's switch drains b."""
    sw, hooks = make(FakeHooks(wake_secs=0.05))
    sw.acquire("a").release()
    b_boxes = [spawn(sw.acquire, "b", timeout=5) for _ in range(10)]
    wait_for(lambda: sw.status()["models"]["b"]["queued"] == 10)
    c_box = spawn(sw.acquire, "c", timeout=5)
    join(*b_boxes)
    assert all("value" in b for b in b_boxes)
    time.sleep(0.05)
    assert sw.state("b") == "draining" and "value" not in c_box
    for b in b_boxes:
        b["value"].release()
    join(c_box)
    c_box["value"].release()
    assert hooks.count("b", "wake") == 1 and hooks.count("c", "wake") == 1


def test_storm_of_200_requests_over_three_models():
    hooks = FakeHooks(wake_secs=0.005, sleep_secs=0.002)
    sw, _ = make(hooks)
    rng = random.Random(42)
    served: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def one(model):
        with sw.acquire(model, timeout=60):
            up_at_start = hooks.up == {model}
            time.sleep(rng.random() * 0.004)
            with lock:
                served.append((model, up_at_start and hooks.up == {model}))

    boxes = [spawn(one, rng.choice(MODELS)) for _ in range(200)]
    join(*boxes, timeout=60)
    assert [b.get("error") for b in boxes] == [None] * 200
    assert len(served) == 200
    assert all(ok for _, ok in served), "a request ran while its model was not the only one up"
    assert not hooks.overlaps, f"two models up at once: {hooks.overlaps[:3]}"
    status = sw.status()
    assert all(m["in_flight"] == 0 and m["queued"] == 0 for m in status["models"].values())
    wakes = sum(1 for _, kind in hooks.calls if kind == "wake")
    assert 1 <= wakes <= 200


def test_start_up_check_runs_first_and_adopts_the_model_it_finds():
    sw, hooks = make()
    release = threading.Event()

    def prepare():
        release.wait(5)
        return "b"

    sw.start(prepare)
    box = spawn(sw.acquire, "b", timeout=5)
    time.sleep(0.1)
    assert "value" not in box, "admitted before the start-up check finished"
    release.set()
    join(box)
    box["value"].release()
    assert sw.status()["active"] == "b"
    assert hooks.count("b", "wake") == 0  # adopted, not woken


def test_start_up_check_failure_leaves_everything_asleep():
    sw, hooks = make()

    def prepare():
        raise RuntimeError("lock file unreadable")

    sw.start(prepare)
    sw.acquire("a", timeout=5).release()
    assert hooks.count("a", "wake") == 1


def test_an_unreachable_backend_that_is_dead_is_woken_again():
    sw, hooks = make()
    sw.acquire("a").release()
    hooks.up.discard("a")  # the backend crashed while idle
    sw.backend_unreachable("a")
    wait_for(lambda: sw.state("a") == ASLEEP)
    sw.acquire("a", timeout=5).release()
    assert hooks.count("a", "wake") == 2


def test_an_unreachable_backend_that_is_alive_stays_awake():
    sw, hooks = make()
    sw.acquire("a").release()
    sw.backend_unreachable("a")
    wait_for(lambda: hooks.count("a", "alive") == 2)
    time.sleep(0.05)
    assert sw.state("a") == AWAKE and hooks.count("a", "wake") == 1
    sw.backend_unreachable("b")  # not the awake model: nothing to check
    assert hooks.count("b", "alive") == 0


def test_close_during_a_drain_abandons_the_switch():
    sw, hooks = make()
    held = sw.acquire("a")
    box = spawn(sw.acquire, "b", timeout=5)
    wait_for(lambda: sw.state("a") == "draining")
    sw.close()
    join(box)
    assert isinstance(box["error"], ShuttingDown)
    held.release()
    wait_for(lambda: sw.state("a") == AWAKE)
    assert hooks.count("a", "sleep") == 0 and hooks.count("b", "wake") == 0
