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
64 KiB of each stream is kept. Pipes the daemon still holds are not closed under
it (its next log line would get SIGPIPE): :class:`~llmux.engine.hook_output.OutputKeeper`
reads them on until end of file.

Under gunicorn's gevent worker, ``subprocess``, ``select`` and ``time`` are
patched, so a running hook never blocks other requests.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from ..polling import readable
from . import spawn
from .hook_output import TAIL_BYTES, OutputKeeper, Progress, Tail, read_some

log = logging.getLogger("llmux.hooks")

__all__ = ["TAIL_BYTES", "HookResult", "HookRunner", "OutputKeeper", "Progress", "run_hook"]
_POLL_MIN, _POLL_MAX = 0.002, 0.05
EXITED, TIMED_OUT, STOPPED = "exited", "timed out", "stopped"  # how a hook run ended


@dataclass(frozen=True)
class HookResult:
    """How one hook run ended: ``hook`` is its kind (wake, sleep, alive, ...),
    ``returncode`` None when it never started or was killed, ``duration`` in
    seconds, ``stdout``/``stderr`` their bounded tails (hook_output.TAIL_BYTES)."""

    hook: str
    returncode: int | None
    duration: float
    timed_out: bool = False
    aborted: bool = False  # stopped by llmux (its ``stop`` event was set)
    stdout: str = ""
    stderr: str = ""
    error: str = ""  # the hook could not even be started

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.aborted and not self.error

    def describe(self) -> str:
        if self.error:
            return f"{self.hook} hook could not start: {self.error}"
        if self.aborted:
            what = f"{self.hook} hook stopped by llmux after {self.duration:.1f}s"
        elif self.timed_out:
            what = f"{self.hook} hook timed out after {self.duration:.1f}s"
        else:
            what = f"{self.hook} hook failed with exit code {self.returncode}"
        tail = self.stderr.strip()[-500:]
        return f"{what}: {tail}" if tail else what


def _mib_used(stdout: str) -> float | None:
    """The MiB a probe printed: the sum of its lines' numbers; None if a line is not one."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    try:
        values = [float(line.split()[0].rstrip(",")) for line in lines]
    except ValueError:
        return None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        return None
    return sum(values)


def run_hook(
    snippet: str,
    *,
    hook: str = "hook",
    timeout: float,
    kill_grace: float = 5.0,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    tracker=None,
    keeper: OutputKeeper | None = None,
    owner: str = "",
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> HookResult:
    """Run one hook; ``tracker.spawned(pgid)``/``tracker.exited(pgid)`` bracket its life.

    ``progress`` is fed the hook's output as it comes (``LLMUX_PROGRESS`` lines).
    Once ``stop`` is set, the hook's process group is ended as on a timeout (within
    about 50 ms) and the result says ``aborted``.

    Output pipes still held open by background processes once the shell has
    exited go to ``keeper`` under ``owner``, which reads them to the end;
    without a keeper they are closed (and such a process may get SIGPIPE).
    """
    start = time.monotonic()
    if stop is not None and stop.is_set():  # stopped before it began: start nothing
        return HookResult(hook, None, 0.0, aborted=True)
    fds: list[int] = []
    try:
        fds += os.pipe()
        fds += os.pipe()
    except OSError as exc:  # out of descriptors: a failed hook, not a crashed switch
        for fd in fds:
            os.close(fd)
        return HookResult(hook, None, time.monotonic() - start, error=str(exc))
    out_r, out_w, err_r, err_w = fds
    try:  # in a session of its own: its process group id is its pid
        proc = spawn.start(
            ["/bin/sh", "-c", snippet],
            env=env if env is not None else dict(os.environ),
            cwd=cwd,
            stdout=out_w,
            stderr=err_w,
        )
    except OSError as exc:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        return HookResult(hook, None, time.monotonic() - start, error=str(exc))
    os.close(out_w)
    os.close(err_w)
    if progress is not None:
        tails = {out_r: Tail(listener=progress.reader()), err_r: Tail(listener=progress.reader())}
    else:
        tails = {out_r: Tail(), err_r: Tail()}
    still_open = set(tails)  # not at end of file yet
    ended = EXITED
    if tracker is not None:
        tracker.spawned(proc.pid)
    try:
        deadline = start + timeout
        ended = _pump_until_exit(proc, tails, still_open, deadline, stop)
        if ended != EXITED:
            _terminate_group(proc, tails, still_open, kill_grace)
        _drain_ready(tails, still_open)
    finally:
        if proc.returncode is None:  # only on an exception above: never leave a zombie
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kept = still_open if keeper is not None else set()
        if kept:  # a background process still holds them: read on, never close under it
            keeper.adopt(owner, kept)
        for fd in tails:
            if fd not in kept:
                os.close(fd)
        if tracker is not None:
            tracker.exited(proc.pid)
    return HookResult(
        hook,
        proc.returncode,
        time.monotonic() - start,
        timed_out=ended == TIMED_OUT,
        aborted=ended == STOPPED,
        stdout=tails[out_r].text(),
        stderr=tails[err_r].text(),
    )


def _pump_until_exit(
    proc: subprocess.Popen,
    tails: dict[int, Tail],
    still_open: set[int],
    deadline: float,
    stop: threading.Event | None = None,
) -> str:
    """Read output until the shell exits (:data:`EXITED`), the deadline passes
    (:data:`TIMED_OUT`) or ``stop`` is set (:data:`STOPPED`).

    Descriptors that reach end of file are taken out of ``still_open``.
    """
    pause = _POLL_MIN
    while True:
        if proc.poll() is not None:
            return EXITED
        if stop is not None and stop.is_set():
            return STOPPED
        left = deadline - time.monotonic()
        if left <= 0:
            return TIMED_OUT
        if still_open:
            # Both pipes at EOF usually means the shell exited; then wait() is immediate.
            ready = readable(list(still_open), min(left, pause))
            for fd in ready:
                data = read_some(fd)
                if data:
                    tails[fd].add(data)
                    pause = _POLL_MIN
                elif data is not None:
                    still_open.discard(fd)
            if not ready:
                pause = min(pause * 2, _POLL_MAX)
        else:
            try:  # in slices, so that a stop is seen
                proc.wait(timeout=min(left, _POLL_MAX))
                return EXITED
            except subprocess.TimeoutExpired:
                continue


def _drain_ready(tails: dict[int, Tail], still_open: set[int]) -> None:
    """Collect what is already in the pipes without waiting for background writers.

    Bounded: a background process that writes without pause would otherwise
    keep this loop, and the hook's result, for ever. At most two tails' worth
    is read here; the rest is the keeper's.
    """
    fds = list(still_open)
    budget = 2 * TAIL_BYTES * len(fds)
    while fds and budget > 0:
        ready = readable(fds, 0)
        if not ready:
            return
        for fd in ready:
            data = read_some(fd)
            if data:
                tails[fd].add(data)
                budget -= len(data)
                continue
            if data is not None:  # end of file
                still_open.discard(fd)
            fds.remove(fd)  # end of file, or a spurious wake-up: either way, nothing more now


def _terminate_group(
    proc: subprocess.Popen, tails: dict[int, Tail], still_open: set[int], grace: float
) -> None:
    """SIGTERM the hook's process group, SIGKILL it after ``grace``, and reap the shell."""
    _killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _drain_ready(tails, still_open)
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

    def __init__(self, config, tracker=None, keeper: OutputKeeper | None = None):
        self.config = config
        self.tracker = tracker  # told each hook's process group, for recovery after a crash
        # reads what a hook's background processes (a server it started) keep writing
        self.keeper = keeper if keeper is not None else OutputKeeper()
        self._former: dict = {}  # removed model -> the config that still defines it
        self._progress: dict[str, Progress] = {}  # model -> its last wake hook's progress

    def update(self, config) -> None:
        """Use ``config`` from the next hook run on."""
        for name in self.config.models:
            if name not in config.models:
                self._former[name] = self.config
        for name in config.models:
            self._former.pop(name, None)
        self.config = config

    def forget(self, model: str) -> None:
        """``model`` was removed by a reload and is asleep: drop what is kept for it."""
        self._former.pop(model, None)
        self._progress.pop(model, None)
        self.keeper.release(model)

    def _config_of(self, model: str):
        config = self.config
        return config if model in config.models else self._former[model]

    def run(self, model: str, kind: str, stop: threading.Event | None = None) -> HookResult:
        """Run ``model``'s ``kind`` hook and wait for it; never raises for what the
        hook does (a failure, a timeout, a hook that cannot start, a ``stop`` are all
        in the result). KeyError for a model no config defines."""
        config = self._config_of(model)
        spec = config.models[model]
        env = dict(os.environ)
        env.update(spec.env)
        env.update(LLMUX_MODEL=model, LLMUX_PORT=str(spec.port), LLMUX_HOOK=kind)
        # lets a hook run llmux's own tools (the demo's fake backend) from any venv
        env.setdefault("LLMUX_PYTHON", sys.executable)
        progress = None
        if kind == "wake":
            progress = self._progress[model] = Progress()
        return run_hook(
            spec.hook(kind),
            hook=kind,
            timeout=config.hook_timeout(model, kind),
            kill_grace=config.kill_grace(model),
            cwd=config.base_dir,
            env=env,
            tracker=self.tracker,
            keeper=self.keeper,
            owner=model,
            progress=progress,
            stop=stop,
        )

    def probe_memory(self) -> int | None:
        """Bytes the device has in use, from ``memory.probe`` (a shell command that
        prints MiB used, as ``nvidia-smi --query-gpu=memory.used
        --format=csv,noheader,nounits`` does; with several lines, one per GPU, their
        sum); None without a probe, or when it fails, times out or prints no number
        (the reason logged as ``memory_probe_failed``)."""
        config = self.config
        snippet = config.memory.probe
        if not snippet:
            return None
        env = dict(os.environ)
        env.setdefault("LLMUX_PYTHON", sys.executable)
        result = run_hook(
            snippet,
            hook="probe",
            timeout=config.memory.probe_timeout_secs,
            kill_grace=1.0,
            cwd=config.base_dir,
            env=env,
            tracker=self.tracker,
        )
        mib = _mib_used(result.stdout) if result.ok else None
        if mib is None:
            why = result.describe() if not result.ok else f"no number in {result.stdout[-200:]!r}"
            log.warning("memory probe failed: %s", why, extra={"event": "memory_probe_failed"})
            return None
        return int(mib * 1024 * 1024)

    def progress(self, model: str) -> float | None:
        """The fraction (0-1) the last wake hook of ``model`` said it reached, or None."""
        progress = self._progress.get(model)
        return progress.fraction if progress is not None else None

    def ready_timeout(self, model: str) -> float:
        """Seconds ``alive`` may take to pass after a wake (``hook_timeouts.ready``)."""
        return self._config_of(model).hook_timeout(model, "ready")

    def port(self, model: str) -> int:
        """The port ``model``'s hooks were given (``$LLMUX_PORT``); KeyError if unknown.

        A reload may change a port only while its model is asleep, so for a model
        that is awake this is the port its backend was woken with.
        """
        return self._config_of(model).models[model].port
