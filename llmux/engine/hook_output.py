"""What hooks write: a bounded tail, and the pipes their background processes keep writing to.

Usage::

    keeper = OutputKeeper()
    keeper.adopt("llama", [out_fd, err_fd])    # the wake hook's shell exited; a daemon still writes
    keeper.tail("llama")                       # the last 64 KiB it wrote
    keeper.release("llama")                    # removed from the config: close its pipes

A wake hook that starts a server in the background without redirecting its
output (``llama-server --port $LLMUX_PORT &``) leaves the server holding the
hook's stdout and stderr. llmux reports the hook's result as soon as its shell
exits, but must not close the reading ends then: the server's next log line
would get SIGPIPE, which kills C, C++ and Go servers outright. So the ends go
to one keeper thread (a greenlet under gevent) that reads until end of file,
keeping only a bounded tail per model: a chatty daemon costs one pipe pair
(and its model 64 KiB) until it exits, or until a reload removes its model.
Not when its model is put to sleep: a server that sleeps in place (vLLM's
sleep mode) keeps running, and writing.

Only the keeper thread closes a kept descriptor; :meth:`OutputKeeper.release`
marks them, so a descriptor number is never closed twice or while polled.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable

from ..polling import readable

TAIL_BYTES = 64 * 1024


class Tail:
    """Keeps the last ``limit`` bytes written to it; ``listener`` sees every byte."""

    def __init__(self, limit: int = TAIL_BYTES, listener: Callable[[bytes], None] | None = None):
        self.limit = limit
        self.buf = bytearray()
        self.listener = listener

    def add(self, data: bytes) -> None:
        if self.listener is not None:
            self.listener(data)
        self.buf += data
        if len(self.buf) > 2 * self.limit:
            del self.buf[: len(self.buf) - self.limit]

    def text(self) -> str:
        return bytes(self.buf[-self.limit :]).decode("utf-8", "replace")


_PROGRESS = re.compile(rb"LLMUX_PROGRESS[ \t]+([0-9]{1,3}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})")
_LINE_MAX = 256  # a progress line is short; longer ones are not looked into


class Progress:
    """How far a wake hook says it is: the last ``LLMUX_PROGRESS F`` line it printed.

    ``F`` is a fraction from 0 to 1 (clamped), alone on its line after the
    keyword, on stdout or stderr. ``fraction`` is None until such a line came.
    """

    def __init__(self):
        self.fraction: float | None = None

    def reader(self) -> Callable[[bytes], None]:
        """A listener for one stream: lines may arrive split across reads."""
        partial = bytearray()

        def feed(data: bytes) -> None:
            partial.extend(data)
            *lines, rest = bytes(partial).split(b"\n")
            partial[:] = rest[-_LINE_MAX:]
            for line in lines:
                match = _PROGRESS.fullmatch(line.strip())
                if match:
                    self.fraction = min(1.0, max(0.0, float(match.group(1))))

        return feed


def read_some(fd: int) -> bytes | None:
    """Bytes read, ``b""`` at end of file, ``None`` when nothing is there after all."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class OutputKeeper:
    """Reads hook pipes that outlive their hook, until end of file or release.

    ``every`` (seconds) bounds how long a release or a newly adopted pipe
    waits for the keeper to notice it.
    """

    def __init__(self, every: float = 0.5):
        self.every = every
        self._lock = threading.Lock()
        self._pipes: dict[int, str] = {}  # fd -> owner
        self._closing: set[int] = set()
        self._tails: dict[str, Tail] = {}
        self._thread: threading.Thread | None = None

    def adopt(self, owner: str, fds) -> None:
        """Keep reading ``fds``, which the keeper closes from now on.

        Earlier pipes of ``owner`` stay: their writer may be a server that is
        still serving. A pipe costs a descriptor only while some process holds
        its other end, so what is kept is bounded by what is running.
        """
        with self._lock:
            for fd in fds:
                self._pipes[fd] = owner
            self._tails.setdefault(owner, Tail())
            if self._thread is None and self._pipes:
                self._thread = threading.Thread(
                    target=self._run, name="llmux-hook-output", daemon=True
                )
                self._thread.start()

    def release(self, owner: str) -> None:
        """Close ``owner``'s pipes (its model was removed) and forget its tail."""
        with self._lock:
            self._closing.update(fd for fd, who in self._pipes.items() if who == owner)
            self._tails.pop(owner, None)

    def tail(self, owner: str) -> str:
        with self._lock:
            tail = self._tails.get(owner)
            return tail.text() if tail else ""

    def kept(self, owner: str | None = None) -> int:
        """How many descriptors are kept open (for ``owner``, or in all)."""
        with self._lock:
            return sum(1 for who in self._pipes.values() if owner in (None, who))

    def _run(self) -> None:
        while True:
            with self._lock:
                for fd in self._closing:
                    self._close(fd)
                self._closing.clear()
                fds = list(self._pipes)
                if not fds:
                    self._thread = None
                    return
            for fd in readable(fds, self.every):
                data = read_some(fd)
                with self._lock:
                    if fd not in self._pipes or fd in self._closing:
                        continue
                    if data:
                        tail = self._tails.get(self._pipes[fd])
                        if tail is not None:
                            tail.add(data)
                    elif data is not None:  # end of file: every writer is gone
                        self._close(fd)

    def _close(self, fd: int) -> None:
        """Close a kept descriptor (lock held, keeper thread only)."""
        if self._pipes.pop(fd, None) is not None:
            os.close(fd)
