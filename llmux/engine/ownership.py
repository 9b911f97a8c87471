"""Who may run hooks for a config, and what the last owner left awake.

Usage::

    owner = Ownership("/etc/llmux/llmux.yaml")
    owner.acquire(wait=True)          # blocks (cooperatively) while another process owns it
    awake = reconcile(owner.recorded(), models, hooks.run)   # the models kept awake
    ...
    owner.record({"qwen": "awake"})   # on every state change

gunicorn's SIGHUP starts a new worker while the old one drains, a crashed
worker is replaced while its hooks may still run, and an operator may start a
second llmux on the same config. Only the holder of an exclusive ``flock`` on
a lock file derived from the config path runs hooks; the kernel releases it
when the holder exits, however it exits. A small state file next to it records
which models are not asleep, so the next owner probes exactly those with
``alive`` instead of waking a second model on top of a live one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import tempfile
import time

from .events import Observer
from .hooks import group_members
from .states import ASLEEP, AWAKE, FAILED, WAKING

log = logging.getLogger("llmux.ownership")

WAIT_LOG_EVERY = 30.0


def runtime_dir() -> str:
    explicit = os.environ.get("LLMUX_RUNTIME_DIR")
    if explicit:
        return explicit
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "llmux")
    return os.path.join(tempfile.gettempdir(), f"llmux-{os.getuid()}")


class Ownership:
    """The right to run one config's hooks (an ``flock`` on a file named after the
    config's path, in ``directory``, default :func:`runtime_dir`) and the state
    file beside it. Held for the life of the process; the kernel drops it at exit."""

    def __init__(self, config_path: str, directory: str | None = None):
        directory = directory or runtime_dir()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        key = hashlib.sha256(os.path.abspath(config_path).encode()).hexdigest()[:16]
        self.lock_path = os.path.join(directory, f"llmux-{key}.lock")
        self.state_path = os.path.join(directory, f"llmux-{key}.state")
        self.config_path = os.path.abspath(config_path)
        self._fd: int | None = None

    @property
    def owned(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (and write our pid into it); False if held.
        Raises OSError if the lock file cannot be opened."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def acquire(self, *, poll: float = 0.1) -> None:
        """Wait until this process owns the config (time.sleep is gevent's under gunicorn)."""
        last_log = 0.0
        while not self.try_acquire():
            now = time.monotonic()
            if now - last_log >= WAIT_LOG_EVERY:
                last_log = now
                log.warning(
                    "another llmux process (pid %s) runs the hooks of %s; waiting for it to exit",
                    self.owner_pid(),
                    self.config_path,
                    extra={"event": "ownership_waiting", "owner_pid": self.owner_pid()},
                )
            time.sleep(poll)
        log.info(
            "this process runs the hooks of %s",
            self.config_path,
            extra={"event": "ownership_acquired", "lock": self.lock_path},
        )

    def owner_pid(self) -> int | None:
        try:
            with open(self.lock_path) as fh:
                return int(fh.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    # --- the state file ---

    def record(self, states: dict[str, str], hook_groups: list[int] | None = None) -> None:
        """Remember which models are not asleep and which hooks run (written atomically)."""
        if not self.owned:
            return
        tmp = f"{self.state_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump({"pid": os.getpid(), "models": states, "hooks": hook_groups or []}, fh)
        os.replace(tmp, self.state_path)

    def _read(self) -> dict:
        try:
            with open(self.state_path) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def recorded(self) -> dict[str, str]:
        models = self._read().get("models") or {}
        return {k: v for k, v in models.items() if isinstance(k, str) and isinstance(v, str)}

    def kill_orphaned_hooks(self) -> list[int]:
        """SIGKILL the process groups of hooks a dead owner left running.

        Only groups that still hold a process with ``LLMUX_HOOK`` in its
        environment are touched, so a recycled process id is left alone.
        """
        killed = []
        for pgid in self._read().get("hooks") or []:
            if isinstance(pgid, int) and pgid > 1 and _is_hook_group(pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                    killed.append(pgid)
                except (ProcessLookupError, PermissionError):
                    pass
        if killed:
            log.warning(
                "killed hooks left running by a previous llmux process: groups %s",
                killed,
                extra={"event": "orphaned_hooks_killed", "groups": killed},
            )
        return killed


def _is_hook_group(pgid: int) -> bool:
    for pid, _state in group_members(pgid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if any(v.startswith(b"LLMUX_HOOK=") for v in fh.read().split(b"\0")):
                    return True
        except OSError:
            continue
    return False


class StateRecorder(Observer):
    """Keeps the state file in step with the switcher (models not asleep, running hooks)."""

    def __init__(self, ownership: Ownership):
        self.ownership = ownership
        self.states: dict[str, str] = {}
        self.hook_groups: set[int] = set()

    def state_changed(self, model, state):
        if state == ASLEEP:
            self.states.pop(model, None)
        else:
            self.states[model] = state
        self._write()

    # the hook runner's tracker interface
    def spawned(self, pgid: int) -> None:
        self.hook_groups.add(pgid)
        self._write()

    def exited(self, pgid: int) -> None:
        self.hook_groups.discard(pgid)
        self._write()

    def _write(self) -> None:
        try:
            self.ownership.record(dict(self.states), sorted(self.hook_groups))
        except OSError as exc:
            log.warning("cannot write the state file: %s", exc, extra={"event": "state_unwritable"})


def reconcile(
    recorded: dict[str, str],
    models,
    run_hook,
    *,
    adopt: bool = False,
    prefer: str | None = None,
    choose=None,
    fits=None,
) -> list[str]:
    """Find the models awake at start; keep what may stay awake, put every other
    live one to sleep. Returns the models kept, the preferred first.

    Probes with ``alive`` the models a previous owner left not asleep, or with
    ``adopt`` every configured model (one started by hand, or by a service
    manager). ``run_hook(model, kind)`` returns a HookResult. The live models
    are ordered: the one recorded awake, then half-started ones, then ``prefer``
    (the preload), then config order; ``choose(alive)`` (the policy's
    ``keep_at_start``; default: the first) picks the one kept first. Under a
    memory budget, ``fits(models)`` says whether models may be awake together:
    every other live model is then kept too, in that order, while they fit
    (a previous llmux left several awake). A half-woken one is put to sleep
    unless it is kept; every model put to sleep is logged.
    """
    candidates = [m for m, state in recorded.items() if m in models and state != ASLEEP]
    candidates.sort(key=lambda m: recorded[m] != AWAKE)  # the awake one first
    if adopt:
        rest = sorted(
            (m for m in models if m not in candidates), key=lambda m: m != prefer
        )  # stable: config order after the preload
        candidates += rest
    if not candidates:
        return []
    alive = [m for m in candidates if run_hook(m, "alive").ok]
    keep = choose(alive) if choose is not None and alive else None
    if alive and keep not in alive:  # a policy answer outside its choices: take the first
        keep = alive[0]
    kept = [keep] if keep is not None else []
    if fits is not None:
        for model in alive:
            if model not in kept and recorded.get(model) == AWAKE and fits([*kept, model]):
                kept.append(model)
    for model in candidates:
        if model not in kept and (model in alive or recorded.get(model) in (WAKING, FAILED)):
            log.info(  # a second live model, or a half-started one
                "putting %s to sleep at start",
                model,
                extra={"event": "reconcile_sleep", "model": model},
            )
            run_hook(model, "sleep")
    log.info(
        "found %s awake at start",
        ", ".join(kept) or "no model",
        extra={
            "event": "reconciled",
            "model": keep,
            "models": kept,
            "probed": candidates,
            "alive": alive,
        },
    )
    return kept
