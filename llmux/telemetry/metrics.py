"""Prometheus metrics, on a registry private to each app.

Usage::

    metrics = Metrics(config.models)
    switcher = Switcher(..., observer=Observers(LogObserver(), metrics))
    metrics.request_finished("llama", 200, seconds=1.2)
    generate_latest(metrics.registry)

The twelve metrics of SPEC §7 keep exactly their names, types and labels; the
rest (time to response headers, model state, hook timeouts, build and process
information) are what an operator would otherwise miss. Label values come only
from the config (plus ``idle`` for a cold start), never from a request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from .. import __version__
from ..config import HOOK_KINDS
from ..engine.events import Observer
from ..engine.hooks import HookResult
from ..engine.policy import IDLE
from ..engine.states import ModelState

SWITCH_RESULTS = ("success", "failure", "abandoned")
# why a request left its queue unadmitted (events.RequestLeftQueue)
EVICTION_REASONS = ("room", "exclusive", "out_of_memory")
QUEUE_EXITS = ("timeout", "client_gone", "cancelled", "failed", "removed", "shutdown")

# 1 ms to 30 min: a request's first byte and a cold start of a large model alike
BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, float("inf"),
)  # fmt: skip
STATES = tuple(ModelState)


class Metrics(Observer):
    def __init__(self, models: Iterable[str]):
        r = self.registry = CollectorRegistry()
        self.models: set[str] = set()
        self._bounded: set[str] = set()  # models with a llmux_wait_bound_seconds series
        self._signalled: set[str] = set()  # models with router-signal series

        def histogram(name, doc, labels):
            return Histogram(name, doc, labels, buckets=BUCKETS, registry=r)

        self.switch_total = Counter(
            "llmux_switch_total", "Switches between models, by outcome",
            ["from", "to", "result"], registry=r,
        )  # fmt: skip
        self.switch_duration = histogram(
            "llmux_switch_duration_seconds",
            "Successful switches, from the start of the drain (or wake) to awake",
            ["from", "to"],
        )
        self.drain_duration = histogram(
            "llmux_switch_drain_duration_seconds",
            "Time spent waiting for the old model's requests to finish",
            ["from", "to"],
        )
        self.active_duration = histogram(
            "llmux_model_active_duration_seconds",
            "How long a model stayed awake, observed when it was put to sleep",
            ["model"],
        )
        self.wait_bound = Gauge(
            "llmux_wait_bound_seconds",
            "The starvation bound in force (cost_aware): no request should wait longer "
            "than this plus one switch",
            ["model"],
            registry=r,
        )
        self.estimated_wait = Gauge(
            "llmux_model_estimated_wait_seconds",
            "Seconds until the model could serve a request arriving now (0 when awake), "
            "as GET /llmux/state says; no sample while nothing is known",
            ["model"],
            registry=r,
        )
        self.oldest_wait = Gauge(
            "llmux_request_queue_oldest_wait_seconds",
            "How long the oldest queued request of the model has waited (0 with none)",
            ["model"],
            registry=r,
        )
        self.switch_cost = Gauge(
            "llmux_switch_cost_ema_seconds",
            "Moving average (alpha 0.3) of switch durations per pair",
            ["from", "to"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "llmux_request_queue_depth", "Requests waiting for their model", ["model"], registry=r
        )
        self.queue_wait = histogram(
            "llmux_request_queue_wait_seconds",
            "Time from arrival to admission (0 when the model was awake)",
            ["model"],
        )
        self.queue_left = Counter(
            "llmux_request_queue_left_total",
            "Requests that left their model's queue without being admitted, by reason",
            ["model", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "llmux_model_in_flight", "Requests being served by a model", ["model"], registry=r
        )
        self.requests = Counter(
            "llmux_requests_total",
            "Requests for configured models, by the status sent",
            ["model", "status"],
            registry=r,
        )
        self.outcomes = Counter(
            "llmux_request_outcomes_total",
            "Requests for configured models, by how they ended (see request_finished)",
            ["model", "outcome"],
            registry=r,
        )
        self.request_duration = histogram(
            "llmux_request_duration_seconds",
            "Arrival to the end of the response body",
            ["model", "status"],
        )
        self.ttfb = histogram(
            "llmux_request_ttfb_seconds",
            "Arrival to response headers (queueing and switching included)",
            ["model"],
        )
        self.hook_duration = histogram(
            "llmux_hook_duration_seconds",
            "Hook run time (alive: the whole polling after a wake)",
            ["model", "hook"],
        )
        self.hook_failures = Counter(
            "llmux_hook_failures_total",
            "Hooks that failed or timed out",
            ["model", "hook"],
            registry=r,
        )
        self.hook_timeouts = Counter(
            "llmux_hook_timeouts_total",
            "Hooks killed for running past their timeout",
            ["model", "hook"],
            registry=r,
        )
        self.sleeps = Counter(
            "llmux_model_sleeps_total",
            "Models put to sleep with no switch behind them (admin, idle, reload, shutdown)",
            ["model", "reason", "result"],
            registry=r,
        )
        self.memory_budget = Gauge(
            "llmux_memory_budget_bytes",
            "What the models may hold together (memory.budget); no sample without one",
            registry=r,
        )
        self.memory_used = Gauge(
            "llmux_memory_used_bytes",
            "Memory the models hold: by their sizes (declared, or measured when larger), "
            "and as the probe last read the device",
            ["source"],
            registry=r,
        )
        self.model_memory = Gauge(
            "llmux_model_memory_bytes",
            "What a model holds awake, as declared and as its wakes were measured",
            ["model", "source"],
            registry=r,
        )
        self.evictions = Counter(
            "llmux_model_evictions_total",
            "Models put to sleep to make room for another, by reason",
            ["model", "reason"],
            registry=r,
        )
        self._memory_models: set[str] = set()
        # labelled children of the per-request series, which are never removed:
        # labels() validates and locks on every call, several times per request
        self._children: dict[tuple, object] = {}
        self.model_state = Gauge(
            "llmux_model_state", "1 for the state each model is in", ["model", "state"], registry=r
        )
        Info("llmux_build", "llmux version", registry=r).info({"version": __version__})
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.add_models(sorted(set(models)))

    def add_models(self, models: Iterable[str]) -> None:
        """Give every per-model series a first sample (at start, and for a reload's new models).

        Counters and histograms whose labels are known in advance start at 0, as the
        Prometheus instrumentation guide asks ("avoid missing metrics"): ``increase()``
        and ``rate()`` see nothing of a series' first sample, so a wake failure exported
        first as 1 would never fire an alert. For switches that is every (from, to)
        pair, ``idle`` included: 3·n² series for n models.
        """
        models = list(models)
        added = [m for m in models if m not in self.models]
        for model in models:
            self.models.add(model)
            self.state_changed(model, ModelState.ASLEEP)
            self.queue_depth.labels(model).set(0)
            self.in_flight.labels(model).set(0)
            self.queue_wait.labels(model)
            for hook in HOOK_KINDS:
                self.hook_failures.labels(model, hook)
                self.hook_timeouts.labels(model, hook)
            for reason in QUEUE_EXITS:
                self.queue_left.labels(model, reason)
        for source in (IDLE, *sorted(self.models)):
            for target in sorted(self.models):
                if source != target and (source in added or target in added):
                    for result in SWITCH_RESULTS:
                        self.switch_total.labels(source, target, result)

    # --- requests (called by the app) ---

    def set_wait_bounds(self, bounds: dict[str, float | None]) -> None:
        """Set ``llmux_wait_bound_seconds`` (at scrape time: bounds follow the costs);
        a model without a bound (FIFO) has no series."""
        for model in sorted(self._bounded - {m for m, s in bounds.items() if s is not None}):
            self.wait_bound.remove(model)  # FIFO now, or removed by a reload
            self._bounded.discard(model)
        for model, secs in bounds.items():
            if secs is not None:
                self.wait_bound.labels(model).set(secs)
                self._bounded.add(model)

    def set_node_state(self, models: dict[str, dict]) -> None:
        """Set the router signals of ``GET /llmux/state`` (at scrape time: they change
        with the clock); a model whose wait is unknown, or a reload removed, has no
        ``llmux_model_estimated_wait_seconds`` sample."""
        for model in sorted(self._signalled - set(models)):  # removed by a reload
            self.oldest_wait.remove(model)
            with contextlib.suppress(KeyError):
                self.estimated_wait.remove(model)
        self._signalled = set(models)
        for model, signals in models.items():
            self.oldest_wait.labels(model).set(signals["oldest_wait_secs"])
            if signals["estimated_wait_secs"] is None:
                with contextlib.suppress(KeyError):  # no sample: nothing to remove
                    self.estimated_wait.remove(model)
            else:
                self.estimated_wait.labels(model).set(signals["estimated_wait_secs"])

    def set_memory(self, memory: dict | None) -> None:
        """Set the memory series from ``Switcher.memory()`` (at scrape time); without a
        budget there are none. Eviction counters of every model start at 0."""
        if memory is None:
            return
        self.memory_budget.set(memory["budget"])
        self.memory_used.labels("declared").set(memory["used_declared"])
        if memory["used_measured"] is not None:
            self.memory_used.labels("measured").set(memory["used_measured"])
        for model in sorted(self._memory_models - set(memory["models"])):  # a reload removed it
            for source in ("declared", "measured"):
                with contextlib.suppress(KeyError):
                    self.model_memory.remove(model, source)
        for model, sizes in memory["models"].items():
            self.model_memory.labels(model, "declared").set(sizes["declared"])
            if sizes["measured"] is not None:
                self.model_memory.labels(model, "measured").set(sizes["measured"])
            if model not in self._memory_models:
                for reason in EVICTION_REASONS:
                    self.evictions.labels(model, reason)
        self._memory_models = set(memory["models"])

    def request_finished(
        self, model: str, status: int, seconds: float, outcome: str = "completed"
    ) -> None:
        if model in self.models:
            code = str(status)
            self._child(self.requests, model, code).inc()
            self._child(self.outcomes, model, outcome).inc()
            self._child(self.request_duration, model, code).observe(seconds)

    def request_headers_sent(self, model: str, seconds: float) -> None:
        if model in self.models:
            self._child(self.ttfb, model).observe(seconds)

    def _child(self, metric, *labels):
        """``metric.labels(*labels)``, looked up once."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- switcher events ---

    def request_admitted(self, model, waited, queued):
        self._child(self.queue_wait, model).observe(waited)

    def request_left_queue(self, model, reason, waited):
        self.queue_left.labels(model, reason).inc()

    def model_evicted(self, model, for_model, reason):
        self.evictions.labels(model, reason).inc()

    def queue_depth_changed(self, model, depth):
        self.queue_depth.labels(model).set(depth)

    def in_flight_changed(self, model, in_flight):
        self._child(self.in_flight, model).set(in_flight)

    def state_changed(self, model, state):
        for s in STATES:
            self.model_state.labels(model, s).set(1 if s == state else 0)

    def drain_finished(self, from_model, to_model, seconds, completed):
        if completed:
            self.drain_duration.labels(from_model, to_model).observe(seconds)

    def hook_finished(self, model, result: HookResult):
        self.hook_duration.labels(model, result.hook).observe(result.duration)
        if not result.ok and not result.aborted:  # a stopped wake is not the hook's failure
            self.hook_failures.labels(model, result.hook).inc()
        if result.timed_out:
            self.hook_timeouts.labels(model, result.hook).inc()

    def model_deactivated(self, model, active_seconds):
        self.active_duration.labels(model).observe(active_seconds)

    def model_put_to_sleep(self, model, reason, ok, seconds, error=""):
        self.sleeps.labels(model, reason, "success" if ok else "failure").inc()

    def switch_abandoned(self, from_model, to_model, reason, seconds):
        self.switch_total.labels(from_model or IDLE, to_model, "abandoned").inc()

    def sleep_abandoned(self, model, reason, why):
        self.sleeps.labels(model, reason, "abandoned").inc()

    def switch_finished(self, from_model, to_model, ok, seconds, error="", ema=None, phases=None):
        source = from_model or IDLE
        self.switch_total.labels(source, to_model, "success" if ok else "failure").inc()
        if ok:
            self.switch_duration.labels(source, to_model).observe(seconds)
        if ema is not None:
            self.switch_cost.labels(source, to_model).set(ema)
