"""Waiting for descriptors to become readable, without select()'s limit.

Usage::

    ready = readable([pipe_fd, sock], timeout=0.05)

``select`` refuses descriptors from 1024 on, and a proxy holding a thousand
connections hands such numbers to every new pipe and socket: a hook's output
or a client's hang-up would then raise instead of being read. ``poll`` has no
such limit, and gevent's patched ``poll`` waits cooperatively.
"""

from __future__ import annotations

import select


def readable(fds, timeout: float) -> list:
    """Those of ``fds`` (descriptors or sockets) with data or EOF to read, within ``timeout`` s."""
    poller = select.poll()
    by_fd = {}
    for f in fds:
        fd = f if isinstance(f, int) else f.fileno()
        by_fd[fd] = f
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(max(0, int(timeout * 1000)))]
