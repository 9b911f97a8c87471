import pytest

from llmux.engine.policy import FifoPolicy, Snapshot, Stay, SwitchCosts, SwitchTo, WaitUntil


def snap(**kw):
    base = dict(now=100.0, active=None, awake_since=None, in_flight={}, queues={})
    base.update(kw)
    return Snapshot(**base)


@pytest.mark.parametrize(
    "snapshot, expected",
    [
        (snap(), Stay()),
        (snap(active="a", awake_since=0.0), Stay()),
        (snap(queues={"b": (99.0,)}), SwitchTo("b")),
        (snap(active="a", awake_since=0.0, queues={"b": (99.0,)}), SwitchTo("b")),
        # the oldest waiter wins, not the longest queue
        (snap(queues={"b": (98.0, 99.0, 99.5), "c": (97.0,)}), SwitchTo("c")),
        # waiters for the awake model are admitted, no switch
        (snap(active="a", awake_since=0.0, queues={"a": (90.0,), "b": (95.0,)}), Stay()),
        # failure backoff delays every switch
        (snap(queues={"b": (99.0,)}, backoff_until=101.5), WaitUntil(101.5)),
        # min_active_secs keeps a freshly woken model
        (
            snap(active="a", awake_since=99.0, min_active_secs=5, queues={"b": (99.5,)}),
            WaitUntil(104.0),
        ),
        (
            snap(active="a", awake_since=90.0, min_active_secs=5, queues={"b": (99.5,)}),
            SwitchTo("b"),
        ),
        # a cold start is not held by min_active_secs
        (snap(min_active_secs=5, queues={"b": (99.5,)}), SwitchTo("b")),
        # an empty queue entry counts as no waiter
        (snap(queues={"b": ()}), Stay()),
    ],
)
def test_fifo_decisions(snapshot, expected):
    assert FifoPolicy().decide(snapshot) == expected


def test_ema_first_sample_exact_then_alpha_point_three():
    costs = SwitchCosts()
    assert costs.get("a", "b") is None
    assert costs.observe("a", "b", 10.0) == 10.0
    assert costs.observe("a", "b", 20.0) == pytest.approx(0.3 * 20 + 0.7 * 10)
    assert costs.observe("a", "b", 0.0) == pytest.approx(0.7 * 13.0)
    # pairs are independent and directional; a cold start is from "idle"
    assert costs.get("b", "a") is None
    costs.observe(None, "a", 4.0)
    assert costs.snapshot()[("idle", "a")] == 4.0


AWAKE_A = dict(active="a", awake_since=50.0, states={"a": "awake", "b": "asleep"})


@pytest.mark.parametrize(
    "snapshot, model, expected",
    [
        (snap(**AWAKE_A), "a", True),
        (snap(**AWAKE_A, queues={"b": (90.0,)}), "a", True),  # FIFO: others waiting change nothing
        (snap(**AWAKE_A), "b", False),
        (snap(active="a", states={"a": "draining"}), "a", False),
    ],
)
def test_fifo_admits_every_request_for_the_awake_model(snapshot, model, expected):
    assert FifoPolicy().admits(snapshot, model) is expected


IDLE_A = dict(AWAKE_A, idle_sleep={"a": 30.0, "b": None}, last_used={"a": 80.0, "b": 0.0})


@pytest.mark.parametrize(
    "snapshot, expected",
    [
        (snap(**IDLE_A, in_flight={"a": 0}), ("a", 110.0)),  # 30 s after the last request ended
        (snap(**IDLE_A, in_flight={"a": 2}), None),  # busy
        (snap(**IDLE_A, in_flight={"a": 0}, queues={"b": (99.0,)}), None),  # others wait
        (snap(**IDLE_A, in_flight={"a": 0}, switching=True), None),
        (snap(**dict(IDLE_A, idle_sleep={"a": None}), in_flight={"a": 0}), None),
        (snap(), None),  # nothing awake
    ],
)
def test_fifo_idle_sleep(snapshot, expected):
    assert FifoPolicy().idle_due(snapshot) == expected


def test_fifo_estimates_from_costs_backoff_and_the_running_switch():
    from llmux.engine.estimates import RunningSwitch

    policy = FifoPolicy()
    costs = {("a", "b"): 10.0, ("idle", "a"): 4.0}
    assert policy.estimate(snap(**AWAKE_A, costs=costs), "a") == 0.0
    assert policy.estimate(snap(**AWAKE_A, costs=costs), "b") == 10.0
    assert policy.estimate(snap(**AWAKE_A), "b") is None  # nothing measured yet
    assert policy.estimate(snap(**AWAKE_A, costs=costs, backoff_until=103.0), "b") == 13.0
    running = RunningSwitch("a", "b", started=96.0)
    during = snap(active="a", states={"a": "draining"}, costs=costs, running=running)
    assert policy.estimate(during, "b") == 6.0  # 10 s average, 4 s spent
    woke = RunningSwitch("a", "b", started=90.0, wake_started=98.0)
    assert policy.estimate(snap(costs=costs, running=woke, wake_fraction=0.25), "b") == 6.0


def test_fifo_keeps_the_first_live_model_in_preference_order():
    assert FifoPolicy().keep_at_start(["b", "a"]) == "b"
    assert FifoPolicy().keep_at_start([]) is None


def test_arrival_rates_read_a_steady_stream_from_its_first_seconds():
    from llmux.engine.policy import ArrivalRates

    rates = ArrivalRates(tau=60.0)
    for i in range(50):  # 5 per second for 10 s
        rates.observe("a", 100.0 + i * 0.2)
    assert rates.rate("a", 110.0) == pytest.approx(5.0, rel=0.05)
    assert rates.rate("b", 110.0) == 0.0
    assert rates.rate("a", 110.0 + 600) < 0.05  # it stopped: the rate fades
    for i in range(600):  # 1 per second for 10 minutes: the old burst is forgotten
        rates.observe("a", 710.0 + i)
    assert rates.rate("a", 1310.0) == pytest.approx(1.0, rel=0.05)
