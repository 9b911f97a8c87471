"""``policy_type: cost_aware``: serve the awake model exhaustively, leave it for the
model whose aged waiting work is worth the most per second of getting there, and
never let a request wait past a hard bound.

Usage::

    policy = CostAwarePolicy(max_wait_secs=120, quantum_factor=1, weights={"chat": 2})
    policy.decide(snap)           # Stay() | SwitchTo("code") | WaitUntil(t)
    policy.bound(snap, "code")    # the starvation bound in force for "code", seconds

The rules, in order (polling-system terms: one server, the GPU, visits one queue
per model; moving between queues costs a switchover C(a->j), the measured
average of that switch, drain included):

1. *Exhaustive service.* Requests for the awake model ``a`` are admitted while it
   is not closing, queued or not (:meth:`admits` is the state check).
2. *Hard bound.* The bound in force for model ``j`` is
   ``W_j = max(max_wait_secs, 2 * (C(x->j) + C(j->x)))``, ``x`` the model awake
   (or being woken; a cold start's cost alone when none is): twice the cost of
   switching away and back, because a bound below about one cycle of the server
   fires on every visit and turns the policy into FIFO's ping-pong (Borst &
   Boxma, "Polling: past, present and perspective", cycle time E[S]/(1-rho)).
   It depends on measured (or declared) costs only, never on load. Waiting
   models are taken in order of their oldest waiter's arrival + bound (earliest
   deadline first); ``a`` is closed as soon as leaving it later would bring one
   of them past its bound, counting the switches to those before it
   (:meth:`_latest_start`). So no request waits longer than the bound in force
   when it arrived plus one switch, as long as the switch costs are known and
   the drains are as long as measured (a backend that is itself overloaded
   makes its drain, and so the switch away from it, longer than any bound).
3. *Quantum.* Otherwise ``a`` keeps the GPU while it has work until it has served
   its quantum, ``max(min_active_secs, quantum_factor * C(prev->a))``, and some
   waiter elsewhere is stale: it has waited half a round trip (one switch), or
   ``W_j / 4`` if that is shorter. Both holds are scaled by the estimated load
   (:meth:`hold_share`): in full from rho = 0.5, not at all below 0.1. The load is
   the sum over models of request rate x service time / ``concurrency``. These
   constants were chosen by running ``llmux simulate`` over the shipped and
   generated traces (docs/scheduling.md): longer holds cut switches further but
   lengthen the tail of alternating, lightly loaded traffic, where FIFO is best.
4. *Idle switch.* When ``a`` has nothing queued or in flight and someone waits,
   switch at once (after ``min_active_secs``); when nobody waits, stay awake.
5. *Index.* The next model is, under light load (rho < 0.5), the oldest waiter's,
   as in FIFO; otherwise the one with the largest
   ``index(j) = w_j * sum_r p_r * (1 + age_r / T_j) / (C(a->j) + n_j * s_j / K_j)``,
   ``T_j`` the staleness time of rule 3 (:meth:`stale_after`): aged, weighted
   waiting work per second of switching to it and clearing its queue (a
   reward-rate index after Duenyas & Van Oyen, 1996). ``p_r`` is the
   request's priority (:func:`urgency_weight`), ``w_j`` the model's ``weight``,
   ``s_j`` its measured service time, ``K_j`` its ``concurrency`` (1 if unset). The sum is
   kept per queue (count, sum of p, sum of p * arrival), so a decision costs
   O(models), not O(requests).
6. *Gated closing.* Once a switch away from ``a`` starts, ``a`` is ``draining``:
   new requests for it queue for its next visit, its in-flight work finishes,
   then it sleeps. Requests for the awake model are never held back in llmux:
   a backend queues what it cannot serve at once, and the drain waits for that
   backlog too. (Capping admission at ``concurrency`` was tried in ``llmux
   simulate``: visits cut by time while a backlog waits in llmux collapse into
   ping-pong, as k-limited polling does; see docs/scheduling.md.) At each commit
   point (drained; asleep) the switch asks again (:meth:`_commit`): it goes on to
   a model past its deadline if there is one, else to its target, never back
   to the model it left while another waits, and is abandoned only when nobody
   waits for another model any more.
7. *Abort.* A wake whose every waiter has left is stopped when another model has
   waiters (:meth:`aborts_wake`).

Switch costs not yet measured fall back to the mean of the switches measured
into the model, then to its ``wake_estimate_secs``, then to the mean of all
switches (:func:`~llmux.engine.estimates.switch_cost`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from . import estimates
from .estimates import IDLE
from .policy import Decision, FifoPolicy, Snapshot, Stay, SwitchTo, WaitUntil
from .states import AWAKE, DRAINING

# RFC 9218 §4.1: urgency 0 (most urgent) to 7, default 3.
DEFAULT_URGENCY = 3


def urgency_weight(urgency: int) -> float:
    """The index weight of a request of RFC 9218 ``urgency`` (0-7, 3 the default):
    ``2 ** ((3 - u) / 1.5)``, so 4.0 at u=0, 1.0 at u=3, 0.16 at u=7. A weight only
    scales aged work: every request's weight grows with its age, and the hard bound
    ignores weights, so low priority never starves. ValueError outside 0-7."""
    if not 0 <= urgency <= 7:
        raise ValueError(f"RFC 9218 urgency is 0-7, got {urgency}")
    return 2.0 ** ((DEFAULT_URGENCY - urgency) / 1.5)


# When nothing at all is known about a switch or a service time: a neutral guess.
UNKNOWN_SWITCH_SECS = 1.0
UNKNOWN_SERVICE_SECS = 1.0
SOFT_BOUND_SHARE = 0.25  # waiters count as stale at this share of the bound, at most
STALE_ROUND_TRIPS = 0.5  # ... and after this many round trips (chosen with llmux simulate)
LIGHT_LOAD, HEAVY_LOAD = 0.1, 0.5  # estimated load below which no hold, from which all of it


class CostAwarePolicy(FifoPolicy):
    """Cost-aware exhaustive service with a hard starvation bound (see the module).

    ``max_wait_secs``: the operator's bound (seconds, > 0); ``quantum_factor``: the
    quantum in switch costs; ``weights``, ``concurrency``, ``wake_estimates``: per
    model (default 1, 1, none). Pure and stateless: every method answers from the
    snapshot and these settings.
    """

    name = "cost_aware"

    def __init__(
        self,
        *,
        max_wait_secs: float = 120.0,
        quantum_factor: float = 1.0,
        weights: Mapping[str, float] | None = None,
        concurrency: Mapping[str, int] | None = None,
        wake_estimates: Mapping[str, float] | None = None,
    ):
        super().__init__(wake_estimates=wake_estimates)
        self.max_wait_secs = max_wait_secs
        self.quantum_factor = quantum_factor
        self.weights = dict(weights or {})
        self.concurrency = dict(concurrency or {})

    # --- costs ---

    def _cost(self, snap: Snapshot, start: str | None, to: str) -> float | None:
        return estimates.switch_cost(snap.costs, start, to, self.wake_estimates)

    def round_trip(self, snap: Snapshot, model: str) -> float:
        """Seconds to switch to ``model`` and back to the model it would be switched
        from: the awake one, else the one a running switch wakes, else a cold start's
        cost alone; 0 while nothing is known."""
        other = snap.active
        if (other is None or other == model) and snap.running is not None:
            other = snap.running.target  # the model being woken, or woken instead of this one
        if other is None or other == model:
            return self._cost(snap, IDLE, model) or 0.0
        return (self._cost(snap, other, model) or 0.0) + (self._cost(snap, model, other) or 0.0)

    def bound(self, snap: Snapshot, model: str) -> float:
        """The starvation bound in force for ``model``'s requests (seconds):
        ``max_wait_secs``, raised to twice the round trip between ``model`` and the
        model it would be switched from (:meth:`round_trip`)."""
        return max(self.max_wait_secs, 2.0 * self.round_trip(snap, model))

    def stale_after(self, snap: Snapshot, model: str) -> float:
        """How long a waiter of ``model`` waits before it may end the awake model's
        visit (seconds): half a round trip (one switch), at most a quarter of the
        bound; a quarter of the bound while no switch was measured."""
        soft = SOFT_BOUND_SHARE * self.bound(snap, model)
        trip = self.round_trip(snap, model)
        return min(soft, STALE_ROUND_TRIPS * trip) if trip > 0 else soft

    # --- deciding ---

    def decide(self, snap: Snapshot) -> Decision:
        a = snap.active
        if snap.running is not None:
            return self._commit(snap)
        others = [m for m in snap.queues if m != a]
        if a is None:
            waiting = list(snap.queues)
            if not waiting:
                return Stay()
            if snap.now < snap.backoff_until:
                return WaitUntil(snap.backoff_until)
            return SwitchTo(self._next(snap, None, waiting))
        if not others:
            return Stay()  # its own waiters are admitted directly
        if snap.now < snap.backoff_until:
            return WaitUntil(snap.backoff_until)
        due = self._latest_start(snap, a, others)
        if snap.now >= due:
            return SwitchTo(self._most_urgent(snap, others))
        since = snap.awake_since if snap.awake_since is not None else snap.now
        resident_until = since + snap.min_active_secs
        busy = snap.in_flight.get(a, 0) > 0 or a in snap.queues
        if busy:
            g = self.hold_share(snap)
            quantum = self._quantum(snap, a, g)
            stale = min(snap.queues[j][0] + g * self.stale_after(snap, j) for j in others)
            leave_at = max(resident_until, since + quantum, stale)
        else:
            leave_at = resident_until
        if snap.now >= leave_at:
            return SwitchTo(self._next(snap, a, others))
        return WaitUntil(min(leave_at, due))

    def _quantum(self, snap: Snapshot, a: str, share: float) -> float:
        """Seconds the awake ``a`` serves before others may take over (rule 3), the
        ``share`` of it that the load calls for (:meth:`hold_share`)."""
        return share * self.quantum_factor * (self._cost(snap, snap.came_from, a) or 0.0)

    def load(self, snap: Snapshot) -> float:
        """Estimated offered load, 0-1: over models, request rate x service time /
        concurrency (Little's law: the mean share of the backend's slots in use)."""
        if snap.arrivals is None:
            return 1.0
        rho = sum(
            snap.arrivals.rate(m, snap.now) * secs / self.concurrency.get(m, 1)
            for m, secs in snap.service_secs.items()
        )
        return min(rho, 1.0)

    def hold_share(self, snap: Snapshot) -> float:
        """How much of the quantum and staleness to keep, 0-1: ``rho / (1 - rho)``, by
        which a polling cycle at load rho outlasts its switches (Borst & Boxma:
        E[cycle] = E[S] / (1 - rho)); all of it from rho = 0.5, none below 0.1,
        where holding a busy model only lengthens the others' waits."""
        rho = self.load(snap)
        if rho < LIGHT_LOAD:
            return 0.0
        return 1.0 if rho >= HEAVY_LOAD else rho / (1.0 - rho)

    def _commit(self, snap: Snapshot) -> Decision:
        """A running switch asks again before an irreversible step (the switcher's
        commit points: the old model drained, or asleep): go on to a model past its
        deadline (EDF) if there is one, else to the switch's target; never back to
        the model it left while another waits. With nobody waiting elsewhere, the
        model being left stays (``Stay`` abandons the switch); once it is asleep,
        its own waiters bring it back."""
        source = snap.running.source
        others = [m for m in snap.queues if m != source]
        if not others:
            if snap.active is None and source in snap.queues:
                return SwitchTo(source)
            return Stay()
        start = snap.active if snap.states.get(snap.active) == DRAINING else None
        overdue = [j for j in others if snap.now >= self._deadline(snap, start, j)]
        if overdue:
            return SwitchTo(self._most_urgent(snap, overdue))
        if snap.running.target in others:
            return SwitchTo(snap.running.target)
        return SwitchTo(self._next(snap, start, others))

    def _latest_start(self, snap: Snapshot, a: str, others: Sequence[str]) -> float:
        """The latest time the awake ``a`` may be left for every waiting model to be
        reached within its bound, visiting them in deadline order (EDF), one switch
        after the other (a measured switch cost includes the drain of the model
        left). With one model waiting this is its :meth:`_deadline`; with several,
        the switches to the earlier ones count against the later ones."""
        latest, spent, prev = float("inf"), 0.0, a
        for j in sorted(others, key=lambda m: snap.queues[m][0] + self.bound(snap, m)):
            cost = self._cost(snap, prev, j) or 0.0
            latest = min(latest, snap.queues[j][0] + self.bound(snap, j) - cost - spent)
            spent += cost
            prev = j
        return latest

    def _most_urgent(self, snap: Snapshot, candidates: Sequence[str]) -> str:
        """Of the waiting models, the one whose oldest waiter's bound ends first (EDF)."""
        return min(candidates, key=lambda j: snap.queues[j][0] + self.bound(snap, j))

    def _deadline(self, snap: Snapshot, a: str | None, j: str) -> float:
        """When a switch from ``a`` (None: nothing awake) to ``j`` must start for ``j``'s
        oldest waiter to stay within its bound."""
        cost = self._cost(snap, a, j) or 0.0
        return snap.queues[j][0] + self.bound(snap, j) - cost

    def _next(self, snap: Snapshot, a: str | None, candidates: Sequence[str]) -> str:
        """The model to switch to from ``a`` (None: nothing awake): the most urgent of
        those past their deadline, else, under light load, the oldest waiter's, else
        the best index."""
        overdue = [j for j in candidates if snap.now >= self._deadline(snap, a, j)]
        if overdue:
            return self._most_urgent(snap, overdue)
        if self.hold_share(snap) < 1.0:  # light load: the tail matters more, as in FIFO
            return min(candidates, key=lambda j: snap.queues[j][0])
        return max(candidates, key=lambda j: (self.index(snap, a, j), -snap.queues[j][0]))

    def index(self, snap: Snapshot, a: str | None, j: str) -> float:
        """Aged, weighted waiting work of ``j`` per second of switching to it from ``a``
        and clearing its queue (rule 5 of the module docstring)."""
        count, weight_sum, weighted_arrivals = snap.queue_weights[j]
        soft = max(self.stale_after(snap, j), 1e-3)
        aged = weight_sum + (snap.now * weight_sum - weighted_arrivals) / soft
        cost = self._cost(snap, a, j) if a is not None else self._cost(snap, IDLE, j)
        service = snap.service_secs.get(j, UNKNOWN_SERVICE_SECS)
        clear = count * service / self.concurrency.get(j, 1)
        seconds = (UNKNOWN_SWITCH_SECS if cost is None else cost) + clear
        return self.weights.get(j, 1.0) * aged / max(seconds, 1e-3)

    # --- admission, estimates, aborts ---

    def admits(self, snap: Snapshot, model: str) -> bool:
        return snap.states.get(model) == AWAKE

    def estimate(self, snap: Snapshot, model: str) -> float | None:
        """The switch estimate, after the awake model has served its quantum (or
        until ``model``'s bound would force the switch, if sooner)."""
        a = snap.active
        resident_until = 0.0
        if a is not None and a != model and snap.awake_since is not None:
            since = snap.awake_since
            resident_until = since + snap.min_active_secs
            if snap.in_flight.get(a, 0) > 0 or a in snap.queues:
                g = self.hold_share(snap)
                quantum = self._quantum(snap, a, g)
                arrival = snap.queues[model][0] if model in snap.queues else snap.now
                bound = self.bound(snap, model)
                stale = arrival + g * self.stale_after(snap, model)
                forced = arrival + bound - (self._cost(snap, a, model) or 0.0)
                resident_until = min(max(resident_until, since + quantum, stale), forced)
        return self._eta(snap, model, resident_until)

    def aborts_wake(self, snap: Snapshot, model: str) -> bool:
        """Stop ``model``'s wake: nobody waits for it and someone waits for another."""
        return model not in snap.queues and len(snap.queues) > 0


def make_cost_aware(settings, models: Mapping) -> CostAwarePolicy:
    """A :class:`CostAwarePolicy` from ``policy`` settings and per-model configs
    (anything with ``max_wait_secs``/``quantum_factor`` and ``weight``/
    ``concurrency``/``wake_estimate_secs`` attributes)."""
    return CostAwarePolicy(
        max_wait_secs=settings.max_wait_secs,
        quantum_factor=settings.quantum_factor,
        weights={n: m.weight for n, m in models.items()},
        concurrency={n: m.concurrency for n, m in models.items() if m.concurrency is not None},
        wake_estimates=wake_estimates(models),
    )


def wake_estimates(models: Mapping) -> dict[str, float]:
    """Model -> its declared ``wake_estimate_secs``, for the models that declare one."""
    return {n: m.wake_estimate_secs for n, m in models.items() if m.wake_estimate_secs is not None}
