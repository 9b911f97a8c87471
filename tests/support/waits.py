"""Waiting for observable state, with a deadline (never a fixed sleep)."""

import time


def wait_for(predicate, timeout=15.0, every=0.01):
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(every)
