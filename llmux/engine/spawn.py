"""Starting a hook's shell: ``posix_spawn`` under gevent, ``subprocess.Popen`` otherwise.

Usage::

    child = start(["/bin/sh", "-c", snippet], env=env, cwd=cwd, stdout=out_w, stderr=err_w)
    child.poll()            # None while it runs, else its exit code (-N: killed by signal N)
    child.wait(timeout=5)   # its exit code; subprocess.TimeoutExpired

Both start the child in a session of its own (its process group id is its pid),
with stdin from /dev/null and stdout/stderr on the given descriptors, and leave it
no other descriptor of llmux's.

Why two ways: gevent's ``subprocess.Popen`` forks in Python and runs Python code
in the child until ``exec`` while the parent waits on an error pipe, about 4-8 ms
a run against 1 ms for the standard library's C ``fork_exec`` (three runs per
switch: sleep, wake, alive). Under gevent, ``os.posix_spawn`` (one C call, no
Python in the child) starts the shell instead, and the child is registered with
gevent's child watcher (``gevent.os.fork_and_watch``, whose ``fork`` argument is
given the spawn) before anything can yield, so the watcher, which reaps every
child on SIGCHLD, keeps its exit status for :meth:`Child.poll`. ``posix_spawn``
has no working-directory action before Python 3.13, so the parent changes its
own directory around the call: nothing can run in between under gevent, one
thread. Descriptors marked inheritable (gunicorn's listening sockets are, for
its re-exec) get a close action, as ``close_fds=True`` does for ``Popen``.
"""

from __future__ import annotations

import os
import subprocess


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("os") and monkey.is_module_patched("subprocess")


def start(argv: list[str], *, env: dict, cwd: str | None, stdout: int, stderr: int):
    """Start ``argv`` as described in the module docstring; a :class:`Child`, or the
    ``subprocess.Popen`` (same methods) when gevent is not in charge. Raises OSError
    when it cannot start (no such directory, no /bin/sh, out of processes)."""
    if not _gevent_patched():
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            close_fds=True,
            start_new_session=True,  # own process group: pgid == pid
        )
    return Child(_spawn_watched(argv, env, cwd, stdout, stderr), argv)


def _spawn_watched(argv, env, cwd, stdout: int, stderr: int) -> int:
    import gevent
    import gevent.os

    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, stdout, 1),
        (os.POSIX_SPAWN_DUP2, stderr, 2),
    ]
    actions += [
        (os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd not in (stdout, stderr)
    ]
    gevent.get_hub().loop.install_sigchld()  # what gevent's Popen does before its first child

    def spawn() -> int:
        here = os.open(".", os.O_RDONLY)
        try:
            if cwd:
                os.chdir(cwd)
            return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
        finally:
            os.fchdir(here)
            os.close(here)

    return gevent.os.fork_and_watch(fork=spawn)


def _inheritable_fds() -> list[int]:
    """Descriptors above stderr that a child would inherit."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                out.append(fd)
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return out


class Child:
    """A child started by :func:`start` under gevent: ``pid``, ``returncode`` (None
    while it runs) and the ``poll``/``wait`` of ``subprocess.Popen``. Both go through
    gevent's ``os.waitpid``, which reads the status its watcher kept, or sleeps on a
    watcher until there is one."""

    def __init__(self, pid: int, argv: list[str]):
        self.pid = pid
        self.args = argv
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import gevent

        if self.poll() is not None:
            return self.returncode
        try:
            with gevent.Timeout(timeout):
                # gevent's waitpid: sleeps on a child watcher until the exit, no polling
                _, status = os.waitpid(self.pid, 0)
        except gevent.Timeout:
            raise subprocess.TimeoutExpired(self.args, timeout) from None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode
