"""Queued requests and the tickets of admitted ones.

A :class:`Waiter` is one request in its model's queue; each queue is a list in
arrival order. A waiter sleeps on a condition of its own, built on the
switcher's one lock, so admitting, failing or cancelling it wakes it and
nobody else. A :class:`Ticket` is the right to use the model it was admitted to.
"""

from __future__ import annotations

import bisect
import contextvars
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import LlmuxError


@dataclass(eq=False)
class Waiter:
    """A queued request: its model and when it arrived (monotonic seconds).

    ``context`` is the requester's :mod:`contextvars` context: what is
    reported about the waiter from another thread (a failed switch, a
    shutdown, a reload) is reported in it, so its log lines carry its request id.
    ``wakeup`` is its condition on the switcher's lock (None until queued).
    ``weight`` is its priority weight for the policy's index (1.0: the default
    urgency; see :func:`~llmux.engine.cost_aware.urgency_weight`).
    """

    model: str
    since: float
    weight: float = 1.0
    granted: bool = False
    claimed: bool = False  # its ticket was handed out
    error: LlmuxError | None = None
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    wakeup: threading.Condition | None = field(default=None, repr=False)

    def settle(self, *, error: LlmuxError | None = None) -> None:
        """Admit it (no ``error``) or fail it, and wake it (the lock held)."""
        if error is None:
            self.granted = True
        else:
            self.error = error
        if self.wakeup is not None:
            self.wakeup.notify()


class Ticket:
    """The right to use one model until :meth:`release` (idempotent)."""

    __slots__ = ("model", "waited", "admitted_at", "_release", "_released")

    def __init__(
        self, release: Callable[[Ticket], None], model: str, waited: float, admitted_at: float
    ):
        self.model = model
        self.waited = waited  # seconds in the queue
        self.admitted_at = admitted_at  # monotonic seconds
        self._release = release
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Queue(list):
    """One model's waiters in arrival order, with the sums an index needs kept as
    they join and leave: ``weight_sum`` (of their weights) and ``weighted_arrivals``
    (of weight x arrival time), so aged work is O(1) (``Snapshot.queue_weights``)."""

    __slots__ = ("weight_sum", "weighted_arrivals")

    def __init__(self):
        super().__init__()
        self.weight_sum = 0.0
        self.weighted_arrivals = 0.0

    def join(self, waiter: Waiter) -> None:
        self.append(waiter)
        self.weight_sum += waiter.weight
        self.weighted_arrivals += waiter.weight * waiter.since

    def leave(self, waiter: Waiter) -> None:
        self.remove(waiter)
        if self:
            self.weight_sum -= waiter.weight
            self.weighted_arrivals -= waiter.weight * waiter.since
        else:  # no rounding drift survives an empty queue
            self.weight_sum = self.weighted_arrivals = 0.0

    def take_all(self) -> list[Waiter]:
        """Every waiter, in arrival order; the queue is empty after."""
        waiters = list(self)
        self.clear()
        self.weight_sum = self.weighted_arrivals = 0.0
        return waiters

    @property
    def weights(self) -> tuple[int, float, float]:
        return len(self), self.weight_sum, self.weighted_arrivals


def _since(waiter: Waiter) -> float:
    return waiter.since


def holds(queue: list[Waiter], waiter: Waiter) -> bool:
    """Whether ``waiter`` is in ``queue`` (in arrival order), by binary search."""
    i = bisect.bisect_left(queue, waiter.since, key=_since)
    while i < len(queue) and queue[i].since == waiter.since:
        if queue[i] is waiter:
            return True
        i += 1
    return False


def ahead_of(queues: Iterable[list[Waiter]], waiter: Waiter) -> int:
    """How many queued requests, over all ``queues``, arrived before ``waiter``:
    a binary search per queue, no sort."""
    return sum(bisect.bisect_left(q, waiter.since, key=_since) for q in queues)


def positions(queues: Iterable[list[Waiter]]) -> dict[Waiter, int]:
    """Every queued request's 1-based place among all queued ones, by arrival."""
    waiters = sorted((w for q in queues for w in q), key=_since)
    return {w: i for i, w in enumerate(waiters, 1)}


class Arrivals(Sequence[float]):
    """A queue's arrival times, oldest first: a live view, no copy."""

    __slots__ = ("_queue",)

    def __init__(self, queue: list[Waiter]):
        self._queue = queue

    def __len__(self) -> int:
        return len(self._queue)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(w.since for w in self._queue[i])
        return self._queue[i].since


class QueueWeights(Mapping[str, tuple[int, float, float]]):
    """Model -> :attr:`Queue.weights` for the models with waiters: a live view."""

    __slots__ = ("_models",)

    def __init__(self, models: Mapping):
        self._models = models

    def __getitem__(self, model: str) -> tuple[int, float, float]:
        queue = self._models[model].waiters
        if not queue:
            raise KeyError(model)
        return queue.weights

    def __iter__(self) -> Iterator[str]:
        return (name for name, m in self._models.items() if m.waiters)

    def __len__(self) -> int:
        return sum(1 for m in self._models.values() if m.waiters)


class QueuesView(Mapping[str, Sequence[float]]):
    """Model -> :class:`Arrivals`, for the models with waiters: a live view of
    ``models`` (name -> anything with a ``waiters`` list), for a policy's snapshot."""

    __slots__ = ("_models",)

    def __init__(self, models: Mapping):
        self._models = models

    def __getitem__(self, model: str) -> Sequence[float]:
        queue = self._models[model].waiters
        if not queue:
            raise KeyError(model)
        return Arrivals(queue)

    def __iter__(self) -> Iterator[str]:
        return (name for name, m in self._models.items() if m.waiters)

    def __len__(self) -> int:
        return sum(1 for m in self._models.values() if m.waiters)
