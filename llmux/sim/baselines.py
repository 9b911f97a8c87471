"""Policies for comparison only: what peers do, run by ``llmux simulate`` beside llmux's own.

- :class:`TimeSlicePolicy`: the Rust llmux's removed "TimeSlice" (doublewordai/llmux
  commit 18d8c72): never leave a model with work; once it is idle, switch to the
  longest queue; a waiter older than ``stale_secs`` (15 s there) forces a switch to it.
- :class:`CollatingFifoPolicy`: llama-swap's ``fifo`` with collation: strict arrival
  order across models (a request for the awake model waits behind an older one for
  another model), and a switch takes every queued request of the chosen model along.

Neither may be named in a config; they exist to be measured against.
"""

from __future__ import annotations

from llmux.engine.policy import Decision, FifoPolicy, Snapshot, Stay, SwitchTo, WaitUntil
from llmux.engine.states import AWAKE, DRAINING


class TimeSlicePolicy(FifoPolicy):
    """Drain-first: switch only when the awake model is idle, to the longest queue,
    unless a waiter is older than ``stale_secs`` (then to the oldest's model)."""

    name = "time_slice"

    def __init__(self, stale_secs: float = 15.0):
        super().__init__()
        self.stale_secs = stale_secs

    def decide(self, snap: Snapshot) -> Decision:
        a = snap.active
        others = [m for m in snap.queues if m != a]
        if not others:
            return Stay()
        longest = max(others, key=lambda m: (len(snap.queues[m]), -snap.queues[m][0]))
        if a is None or snap.states.get(a) == DRAINING:
            return SwitchTo(longest)
        if snap.now < snap.backoff_until:
            return WaitUntil(snap.backoff_until)
        oldest = min(others, key=lambda m: snap.queues[m][0])
        stale_at = snap.queues[oldest][0] + self.stale_secs
        if snap.now >= stale_at:
            return SwitchTo(oldest)
        if snap.in_flight.get(a, 0) == 0 and a not in snap.queues:
            return SwitchTo(longest)
        return WaitUntil(stale_at)


class CollatingFifoPolicy(FifoPolicy):
    """FIFO in strict arrival order across models, collating the chosen model's queue."""

    name = "collate"

    def admits(self, snap: Snapshot, model: str) -> bool:
        if snap.states.get(model) != AWAKE:
            return False
        others = [q[0] for m, q in snap.queues.items() if m != model]
        mine = snap.queues[model][0] if model in snap.queues else snap.now
        return not others or min(others) > mine


BASELINES = {TimeSlicePolicy.name: TimeSlicePolicy, CollatingFifoPolicy.name: CollatingFifoPolicy}
