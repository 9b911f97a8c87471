"""Processes as the tests see them, through psutil: an oracle independent of llmux's
own /proc reading."""

from collections.abc import Iterable

import psutil


def process_alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def survivors(pids: Iterable[int]) -> list[int]:
    """Those of ``pids`` still alive: what a test expects to be empty once llmux cleaned up."""
    return [pid for pid in pids if process_alive(pid)]
