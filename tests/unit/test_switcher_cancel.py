"""Taking a queued request out of its queue from outside: ``Switcher.cancel``."""

from __future__ import annotations

import pytest

from llmux.engine.switcher import Switcher
from llmux.errors import ClientGone

from .test_switcher import join, spawn, wait_for
from .test_switcher_estimates import GatedHooks


def make():
    hooks = GatedHooks()
    sw = Switcher(["a", "b", "c"], hooks)
    sw.acquire("a", timeout=5).release()
    return sw, hooks


def test_a_cancelled_waiter_leaves_at_once_and_its_acquire_raises():
    sw, hooks = make()
    places = []
    box = spawn(sw.acquire, "b", queued=places.append)  # no timeout, no probe: waits on
    wait_for(lambda: len(places) == 1)  # b's wake is held at the gate: it stays queued
    assert sw.cancel(places[0]) is True
    join(box, timeout=2)  # woken by the cancel, not by a poll
    assert isinstance(box["error"], ClientGone)
    assert sw.status()["models"]["b"]["queued"] == 0
    assert sw.cancel(places[0]) is False  # twice: nothing changes
    hooks.gate.set()


def test_cancelling_an_admitted_request_changes_nothing():
    sw, hooks = make()
    places = []
    box = spawn(sw.acquire, "b", timeout=10, queued=places.append)
    wait_for(lambda: len(places) == 1)
    hooks.gate.set()
    join(box)
    assert sw.cancel(places[0]) is False
    assert sw.status()["models"]["b"]["in_flight"] == 1
    box["value"].release()
    assert sw.status()["models"]["b"]["in_flight"] == 0


def test_a_queued_callback_that_raises_takes_the_request_out_again():
    sw, hooks = make()

    def refuse(waiter):
        raise ClientGone("client disconnected while queued")

    with pytest.raises(ClientGone):
        sw.acquire("c", timeout=5, queued=refuse)
    assert sw.status()["models"]["c"]["queued"] == 0
