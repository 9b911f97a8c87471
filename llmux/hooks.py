"""Running the user's ``wake``/``sleep``/``alive`` shell snippets.

Usage::

    result = run_hook("./wake.sh", timeout=900, kill_grace=5, cwd="/etc/llmux", env=env)
    if not result.ok:
        print(result.describe())     # "exit code 3: <stderr tail>" or "timed out after 900s"

A hook runs as ``/bin/sh -c SNIPPET`` in a session of its own, so a timeout can
signal its whole process group (grandchildren included): SIGTERM, then SIGKILL
after ``kill_grace``. We wait for the shell to exit, not for its pipes to close:
a hook that starts a daemon in the background returns as soon as the shell does
(``subprocess.run(timeout=)`` would wait for the daemon's copy of the pipe, see
docs in ``python-stack.md`` §2). Output is read as it comes and only the last
64 KiB of each stream is kept.

Under gunicorn's gevent worker, ``subprocess``, ``select`` and ``time`` are
patched, so a running hook never blocks other requests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from .polling import readable

TAIL_BYTES = 64 * 1024
_POLL_MIN, _POLL_MAX = 0.002, 0.05


@dataclass(frozen=True)
class HookResult:
    hook: str
    returncode: int | None
    duration: float
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""
    error: str = ""  # the hook could not even be started

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.error

    def describe(self) -> str:
        if self.error:
            return f"{self.hook} hook could not start: {self.error}"
        if self.timed_out:
            what = f"{self.hook} hook timed out after {self.duration:.1f}s"
        else:
            what = f"{self.hook} hook failed with exit code {self.returncode}"
        tail = self.stderr.strip()[-500:]
        return f"{what}: {tail}" if tail else what


class _Tail:
    """Keeps the last ``limit`` bytes written to it."""

    def __init__(self, limit: int = TAIL_BYTES):
        self.limit = limit
        self.buf = bytearray()

    def add(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > 2 * self.limit:
            del self.buf[: len(self.buf) - self.limit]

    def text(self) -> str:
        return bytes(self.buf[-self.limit :]).decode("utf-8", "replace")


def run_hook(
    snippet: str,
    *,
    hook: str = "hook",
    timeout: float,
    kill_grace: float = 5.0,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    tracker=None,
) -> HookResult:
    """Run one hook; ``tracker.spawned(pgid)``/``tracker.exited(pgid)`` bracket its life."""
    start = time.monotonic()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", snippet],
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            cwd=cwd,
            env=env,
            close_fds=True,
            start_new_session=True,  # own process group: pgid == proc.pid
        )
    except OSError as exc:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        return HookResult(hook, None, time.monotonic() - start, error=str(exc))
    os.close(out_w)
    os.close(err_w)
    tails = {out_r: _Tail(), err_r: _Tail()}
    timed_out = False
    if tracker is not None:
        tracker.spawned(proc.pid)
    try:
        deadline = start + timeout
        if not _pump_until_exit(proc, tails, deadline):
            timed_out = True
            _terminate_group(proc, tails, kill_grace)
        _drain_ready(tails)
    finally:
        for fd in tails:
            os.close(fd)
        if proc.returncode is None:  # only on an exception above: never leave a zombie
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if tracker is not None:
            tracker.exited(proc.pid)
    return HookResult(
        hook,
        proc.returncode,
        time.monotonic() - start,
        timed_out=timed_out,
        stdout=tails[out_r].text(),
        stderr=tails[err_r].text(),
    )


def _pump_until_exit(proc: subprocess.Popen, tails: dict[int, _Tail], deadline: float) -> bool:
    """Read output until the shell exits (True) or the deadline passes (False)."""
    open_fds = list(tails)
    pause = _POLL_MIN
    while True:
        if proc.poll() is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if open_fds:
            # Both pipes at EOF usually means the shell exited; then wait() is immediate.
            ready = readable(open_fds, min(left, pause))
            for fd in ready:
                data = _read(fd)
                if data:
                    tails[fd].add(data)
                    pause = _POLL_MIN
                elif data is not None:
                    open_fds.remove(fd)
            if not ready:
                pause = min(pause * 2, _POLL_MAX)
        else:
            try:
                proc.wait(timeout=left)
                return True
            except subprocess.TimeoutExpired:
                return False


def _drain_ready(tails: dict[int, _Tail]) -> None:
    """Collect what is already in the pipes without waiting for background writers."""
    fds = list(tails)
    while fds:
        ready = readable(fds, 0)
        if not ready:
            return
        for fd in ready:
            data = _read(fd)
            if data:
                tails[fd].add(data)
            else:  # end of file, or a spurious wake-up: either way, nothing more now
                fds.remove(fd)


def _read(fd: int) -> bytes | None:
    """Bytes read, ``b""`` at end of file, ``None`` when nothing is there after all."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _terminate_group(proc: subprocess.Popen, tails: dict[int, _Tail], grace: float) -> None:
    """SIGTERM the hook's process group, SIGKILL it after ``grace``, and reap the shell."""
    _killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _drain_ready(tails)
        if proc.poll() is not None and not _group_alive(proc.pid):
            return
        time.sleep(0.02)
    _killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # SIGKILL cannot be ignored; give the kernel a moment to take the rest of the group.
    deadline = time.monotonic() + 1.0
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process is in the group.

    ``killpg(pgid, 0)`` also counts zombies, which linger until init reaps them.
    """
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    return any(state not in (b"Z", b"X") for _, state in group_members(pgid))


def group_members(pgid: int):
    """``(pid, state)`` of every process in process group ``pgid``, read from /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
            state, _ppid, pgrp = stat[stat.rfind(b")") + 2 :].split()[:3]
            if int(pgrp) == pgid:
                yield int(entry.name), state
        except (OSError, ValueError):
            continue


class HookRunner:
    """Runs a configured model's hooks with the environment and limits of SPEC §4.

    Nothing from a request ever reaches a hook: the snippet, the working
    directory and the environment come from the config and llmux's own
    environment only. A reload swaps the config as a whole; a model it removed
    keeps its old definition until :meth:`forget`, so it can still be put to sleep.
    """

    def __init__(self, config, tracker=None):
        self.config = config
        self.tracker = tracker  # told each hook's process group, for recovery after a crash
        self._former: dict = {}  # removed model -> the config that still defines it

    def update(self, config) -> None:
        """Use ``config`` from the next hook run on."""
        for name in self.config.models:
            if name not in config.models:
                self._former[name] = self.config
        for name in config.models:
            self._former.pop(name, None)
        self.config = config

    def forget(self, model: str) -> None:
        self._former.pop(model, None)

    def _config_of(self, model: str):
        config = self.config
        return config if model in config.models else self._former[model]

    def run(self, model: str, kind: str) -> HookResult:
        config = self._config_of(model)
        spec = config.models[model]
        env = dict(os.environ)
        env.update(spec.env)
        env.update(LLMUX_MODEL=model, LLMUX_PORT=str(spec.port), LLMUX_HOOK=kind)
        # lets a hook run llmux's own tools (the demo's fake backend) from any venv
        env.setdefault("LLMUX_PYTHON", sys.executable)
        return run_hook(
            spec.hook(kind),
            hook=kind,
            timeout=config.hook_timeout(model, kind),
            kill_grace=config.kill_grace(model),
            cwd=config.base_dir,
            env=env,
            tracker=self.tracker,
        )

    def ready_timeout(self, model: str) -> float:
        return self._config_of(model).hook_timeout(model, "ready")
