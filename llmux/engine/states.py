"""A model's state, and the only transitions the engine may make between them.

Usage::

    m.state = transition(m.state, ModelState.DRAINING)   # IllegalTransition if not allowed

States are :class:`enum.StrEnum` members, so they are also the plain strings
(``"awake"``) that the status API, logs and metrics show.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class ModelState(StrEnum):
    ASLEEP = "asleep"
    WAKING = "waking"  # its wake hook or alive polling runs
    AWAKE = "awake"
    DRAINING = "draining"  # a switch or sleep waits for its requests in flight
    SLEEPING = "sleeping"  # its sleep hook runs
    FAILED = "failed"  # its wake failed; asleep as far as anyone knows


ASLEEP, WAKING, AWAKE, DRAINING, SLEEPING, FAILED = ModelState

TRANSITIONS: Mapping[ModelState, frozenset[ModelState]] = {
    # woken; found awake at start-up
    ASLEEP: frozenset({WAKING, AWAKE}),
    # woke; failed; stopped because nobody waits for it (then its sleep hook runs)
    WAKING: frozenset({AWAKE, FAILED, SLEEPING}),
    # a switch or sleep begins; its backend was found gone
    AWAKE: frozenset({DRAINING, ASLEEP}),
    # drained; the switch or sleep was abandoned (it keeps serving)
    DRAINING: frozenset({SLEEPING, AWAKE}),
    # slept; the sleep hook failed but it is alive; a crash left it unknown
    SLEEPING: frozenset({ASLEEP, AWAKE, FAILED}),
    FAILED: frozenset({WAKING}),
}


class IllegalTransition(RuntimeError):
    """A transition not in :data:`TRANSITIONS`: a bug in the engine, never a user error."""


def transition(current: ModelState, new: ModelState) -> ModelState:
    """``new``, if a model may go there from ``current``; raises :class:`IllegalTransition`."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"a model may not go from {current} to {new}")
    return new
