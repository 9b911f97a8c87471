"""Which llmux node should serve a request for a model: the choice a router makes from the
nodes' ``GET /llmux/state``, with no router's types in it (so it is tested on its own).

Usage::

    node = choose("qwen", ["http://gpu-a:3000", "http://gpu-b:3000"], states, spill_factor=2)

The rule, in order (``docs/scale-out.md``):

1. a node where the model is awake, the least loaded (in flight plus queued);
2. else a node where it is waking, the soonest ready;
3. else a *free* node, one with nothing in flight, queued or switching (waking the
   model there cuts nobody's work): an *empty* one (nothing awake: no model is put
   to sleep for it) before one whose models are awake but idle, so two models used
   in turn settle on two nodes instead of evicting each other on one; among equals,
   the one a rendezvous hash of (model, node) ranks first (Thaler & Ravishankar,
   "Using name-based mappings to increase hit rates", IEEE/ACM ToN 6(1), 1998), so
   that every router instance picks the same node, not one each;
4. else, every node being busy, the model's *home* node (the hash's first of all),
   unless its estimated wait exceeds ``spill_factor`` times the best node's, when the
   best node takes it.

A node whose state is unknown (``None``: it did not answer, or its answer is stale)
is used only when no node's state is known, and then by the hash alone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence


def rendezvous(model: str, node: str) -> int:
    """The rendezvous (highest random weight) score of ``node`` for ``model``."""
    digest = hashlib.blake2b(f"{model}\0{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def home(model: str, nodes: Sequence[str]) -> str:
    """The node the hash ranks first for ``model``; ValueError for no nodes."""
    if not nodes:
        raise ValueError("no nodes to choose from")
    return max(nodes, key=lambda node: rendezvous(model, node))


def choose(
    model: str,
    nodes: Sequence[str],
    states: Mapping[str, Mapping | None],
    spill_factor: float = 2.0,
) -> str:
    """The node of ``nodes`` to send a request for ``model`` to.

    ``states`` maps a node to its ``GET /llmux/state`` body, or None when unknown;
    ``spill_factor`` (> 0) is how many times the best node's estimated wait the home
    node may take before the request spills to the best one. Raises ValueError for
    no nodes.
    """
    signals = {}
    for node in nodes:
        state = states.get(node)
        entry = (state or {}).get("models", {}).get(model) if state else None
        if entry is not None:
            signals[node] = entry
    if not signals:
        return home(model, nodes)

    def tie(node: str) -> int:
        return -rendezvous(model, node)

    awake = [n for n, s in signals.items() if s["state"] == "awake"]
    if awake:
        return min(awake, key=lambda n: (signals[n]["in_flight"] + signals[n]["queued"], tie(n)))
    waking = [n for n, s in signals.items() if s["state"] == "waking"]
    if waking:
        return min(waking, key=lambda n: (_wait(signals[n]), tie(n)))
    free = [n for n in signals if not _busy(states[n])]
    if free:
        empty = [n for n in free if not _awake(states[n])]
        return home(model, empty or free)
    first = home(model, list(signals))
    best = min(signals, key=lambda n: (_wait(signals[n]), tie(n)))
    if _wait(signals[first]) > spill_factor * _wait(signals[best]):
        return best
    return first


def _busy(state: Mapping) -> bool:
    """Whether a node is serving or switching: any model with requests in flight or
    queued, or waking, draining or being put to sleep."""
    return any(
        entry.get("in_flight", 0) or entry.get("queued", 0) or entry.get("state") in SWITCHING
        for entry in state.get("models", {}).values()
    )


SWITCHING = ("waking", "draining", "sleeping")


def _awake(state: Mapping) -> bool:
    """Whether a node has any model awake."""
    return any(entry.get("state") == "awake" for entry in state.get("models", {}).values())


def _wait(signal: Mapping) -> float:
    """A node's estimated wait for the model; unknown counts as longest."""
    wait = signal.get("estimated_wait_secs")
    return math.inf if wait is None else float(wait)
