"""Figures from simulation runs: one :class:`Summary` per policy, a table, a plot.

Usage::

    summary = summarize(result, yardstick)
    print(table([summary, ...]))
    plot([result, ...], "waits.png")      # needs matplotlib (the ``sim`` extra)

"Past the bound" compares each request's wait with the bound ``cost_aware``
would have had in force when it arrived, from the switch costs measured so far
in that run (``Request.bound``; :class:`Yardstick`'s, from the declared costs,
when there is none), plus the switch that served it. "Thrash" uses the
yardstick's quantum, the same for every policy: ``quantum_factor`` x the declared
cost, not scaled down by load as ``cost_aware``'s own quantum is.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .simulator import Request, Result, Switch, switching_secs


@dataclass(frozen=True)
class Yardstick:
    """``cost[(a, b)]``: the declared switch cost a -> b (seconds, drain excluded);
    ``max_wait_secs`` and ``quantum_factor`` as in ``policy``."""

    cost: Mapping[tuple[str, str], float]
    max_wait_secs: float
    quantum_factor: float

    def bound(self, model: str) -> float:
        trips = [c + self.cost.get((b, a), 0.0) for (a, b), c in self.cost.items() if b == model]
        return max([self.max_wait_secs] + [2 * t for t in trips])


@dataclass(frozen=True)
class Summary:
    """One policy's figures; waits in seconds, ``None`` when nothing was admitted."""

    policy: str
    requests: int
    served: int
    mean: float | None
    p50: float | None
    p99: float | None
    max: float | None
    worst_model_p99: float | None
    switches: int
    switches_per_hour: float
    serving_fraction: float | None
    past_bound: int
    thrash: int
    wasted_wakes: int
    stopped_wakes: int
    never_served: int
    gave_up: int = 0  # left the queue: their client's patience, or request_timeout_secs
    wakes: int = 0  # wake hooks run
    wake_secs: float = 0.0  # seconds spent in them

    COLUMNS = (
        ("policy", "policy", "{}"),
        ("mean", "mean wait s", "{:.1f}"),
        ("p50", "p50 s", "{:.1f}"),
        ("p99", "p99 s", "{:.1f}"),
        ("max", "max s", "{:.1f}"),
        ("worst_model_p99", "worst model p99 s", "{:.1f}"),
        ("switches", "switches", "{}"),
        ("switches_per_hour", "per hour", "{:.0f}"),
        ("serving_fraction", "serving", "{:.0%}"),
        ("past_bound", "past bound+C", "{}"),
        ("thrash", "thrash", "{}"),
        ("wasted_wakes", "wasted wakes", "{}"),
        ("stopped_wakes", "stopped wakes", "{}"),
        ("never_served", "not served", "{}"),
        ("gave_up", "gave up", "{}"),
        ("wakes", "wakes", "{}"),
        ("wake_secs", "waking s", "{:.0f}"),
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``sorted_values`` by linear interpolation between
    closest ranks (NumPy's default); ValueError when empty."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def waits(requests: Sequence[Request]) -> list[float]:
    return sorted(r.admitted_at - r.arrival.at for r in requests if r.admitted_at is not None)


def summarize(result: Result, yard: Yardstick) -> Summary:
    """The figures of one run, measured with ``yard``."""
    served = [r for r in result.requests if r.admitted_at is not None]
    w = waits(served)
    by_model: dict[str, list[float]] = {}
    for r in served:
        by_model.setdefault(r.arrival.model, []).append(r.admitted_at - r.arrival.at)
    ok = [s for s in result.switches if s.result == "success"]
    switching = sum(switching_secs(s) for s in result.switches)
    busy = result.serving_secs + switching
    hours = max(result.duration, 1e-9) / 3600
    return Summary(
        policy=result.policy,
        requests=len(result.requests),
        served=len(served),
        mean=sum(w) / len(w) if w else None,
        p50=percentile(w, 0.5) if w else None,
        p99=percentile(w, 0.99) if w else None,
        max=w[-1] if w else None,
        worst_model_p99=max(percentile(sorted(v), 0.99) for v in by_model.values())
        if by_model
        else None,
        switches=len(ok),
        switches_per_hour=len(ok) / hours,
        serving_fraction=result.serving_secs / busy if busy > 0 else None,
        past_bound=_past_bound(served, ok, yard),
        thrash=_thrash(result, ok, yard),
        wasted_wakes=_wasted(served, ok),
        stopped_wakes=result.stopped_wakes,
        never_served=sum(1 for r in result.requests if r.admitted_at is None and not r.gone),
        gave_up=sum(1 for r in result.requests if r.gone),
        wakes=result.wakes,
        wake_secs=result.wake_secs,
    )


def _past_bound(served: Sequence[Request], ok: Sequence[Switch], yard: Yardstick) -> int:
    """Requests that waited longer than the bound in force when they arrived (from the
    costs measured by then; else the yardstick's) plus the switch that served them."""
    took = {(s.target, s.finished): s.finished - s.started for s in ok}
    count = 0
    for r in served:
        bound = r.bound if r.bound is not None else yard.bound(r.arrival.model)
        limit = bound + took.get((r.arrival.model, r.admitted_at), 0.0)
        count += r.admitted_at - r.arrival.at > limit + 1e-6
    return count


def _thrash(result: Result, ok: Sequence[Switch], yard: Yardstick) -> int:
    """A -> B -> A where B served less than its quantum while it still had work, and no
    waiter of A was due by the bound: a switch back that only cost time."""
    arrivals: dict[str, list[tuple[float, float]]] = {}
    for r in result.requests:
        end = r.admitted_at if r.admitted_at is not None else math.inf
        arrivals.setdefault(r.arrival.model, []).append((r.arrival.at, end))
    count = 0
    for first, back in zip(ok, ok[1:], strict=False):
        a, b = first.source, first.target
        if a is None or back.source != b or back.target != a or not back.busy_source:
            continue
        quantum = yard.quantum_factor * yard.cost.get((a, b), 0.0)
        if back.started - first.finished >= quantum:
            continue
        due = yard.bound(a) - yard.cost.get((b, a), 0.0)
        if not _any_waiting_since(arrivals.get(a, []), back.started, back.started - due):
            count += 1
    return count


def _any_waiting_since(spans: list[tuple[float, float]], t: float, since: float) -> bool:
    """Whether a request that arrived at or before ``since`` still waited at ``t``."""
    i = bisect.bisect_right(spans, (since, math.inf))
    return any(end > t for _, end in spans[:i])


def _wasted(served: Sequence[Request], ok: Sequence[Switch]) -> int:
    """Wakes after which no queued request was admitted: woken for nobody."""
    admitted = {(r.arrival.model, r.admitted_at) for r in served if r.admitted_at > r.arrival.at}
    return sum(1 for s in ok if (s.target, s.finished) not in admitted)


def table(summaries: Sequence[Summary]) -> str:
    """A Markdown table, one row per policy."""
    head = [title for _, title, _ in Summary.COLUMNS]
    rows = [
        [
            "-" if getattr(s, key) is None else fmt.format(getattr(s, key))
            for key, _, fmt in Summary.COLUMNS
        ]
        for s in summaries
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot(results: Sequence[Result], path: str, title: str = "") -> None:
    """Write a PNG: the distribution of waits per policy (left), and which model
    was awake over time (right, one band per policy). Raises RuntimeError when
    matplotlib is not installed (``pip install "llmux-proxy[sim]"``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise RuntimeError('plotting needs matplotlib: pip install "llmux-proxy[sim]"') from exc
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, result in enumerate(results):
        w = waits(result.requests)
        if w:
            xs, ys = [max(x, 0.01) for x in w], [(k + 1) / len(w) for k in range(len(w))]
            style = ("-", "--", "-.", ":")[i % 4]  # runs that are equal stay visible
            left.plot(xs, ys, linestyle=style, label=result.policy)
    left.set_xscale("log")
    left.set_xlabel("queue wait (s, log scale)")
    left.set_ylabel("fraction of requests")
    left.legend(loc="lower right")
    left.grid(alpha=0.3)
    models = sorted({s.target for r in results for s in r.switches})
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for row, result in enumerate(results):
        ok = [s for s in result.switches if s.result == "success"]
        for s, nxt in zip(ok, [*ok[1:], None], strict=True):
            end = nxt.started if nxt is not None else result.duration
            band = (row - 0.4, 0.8)
            right.broken_barh([(s.finished, end - s.finished)], band, color=colours[s.target])
            gone = s.drained if s.drained is not None else s.started  # the old model drains
            if s.source in colours:
                right.broken_barh([(s.started, gone - s.started)], band, color=colours[s.source])
            right.broken_barh([(gone, s.finished - gone)], band, color="0.85")
    right.set_yticks(range(len(results)), [r.policy for r in results])
    right.set_xlabel("simulated time (s); grey: switching")
    handles = [Patch(color=c, label=m) for m, c in colours.items()]
    right.legend(handles=handles, title="awake", fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
