"""A fake GPU for the demo and the tests: a ledger of device memory that fake backends
reserve when they start and give back when they end, failing like a real out-of-memory
when the device is full.

Usage (hooks are shell snippets, so this is a command line)::

    python -m llmux.demo.fake_gpu init    --ledger run/gpu.json --capacity 24GiB
    python -m llmux.demo.fake_gpu reserve --ledger run/gpu.json --owner 8001 --bytes 10GiB
                                     # (--capacity 24GiB makes the ledger if it is missing)
    python -m llmux.demo.fake_gpu used    --ledger run/gpu.json     # prints MiB used, as
                          # nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits
    python -m llmux.demo.fake_gpu release --ledger run/gpu.json --owner 8001

``reserve`` exits 1 with ``CUDA out of memory. Tried to allocate ...`` on standard error
when the memory is not free (the message PyTorch prints), so a wake hook that runs it
fails the way a real one does. A backend started after it binds the reservation to its
process (:func:`claim`); once that process is gone, the memory comes back after the
ledger's ``release_ms`` (a real driver frees a dead process's memory, not at once).

The ledger is one JSON file, changed under an exclusive ``flock``. It stands alone:
nothing here imports the rest of llmux.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time

MiB = 1024**2
UNITS = {"": 1, "b": 1, "kib": 1024, "mib": MiB, "gib": 1024**3, "tib": 1024**4,
         "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}  # fmt: skip
UNCLAIMED_SECS = 120.0  # a reservation no backend claimed in this long is dropped


class OutOfMemory(Exception):
    """Not enough free memory on the fake device."""


def size(text: str) -> int:
    """Bytes from ``"10GiB"``, ``"512MiB"``, ``"1.5GB"`` or a number of bytes."""
    raw = text.strip().lower()
    number = raw.rstrip("kmgtib")
    unit = raw[len(number) :]
    if unit not in UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(float(number) * UNITS[unit])


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@contextlib.contextmanager
def _ledger(path: str):
    """The ledger's content, locked; written back when the block ends without error."""
    with open(path, "r+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        data = json.load(fh)
        _expire(data, time.time())
        yield data
        fh.seek(0)
        fh.truncate()
        json.dump(data, fh)


def _expire(data: dict, now: float) -> None:
    """Drop what dead processes held once ``release_ms`` passed, and stale unclaimed holds."""
    release = data.get("release_ms", 0) / 1000.0
    for owner, held in list(data["owners"].items()):
        pid = held.get("pid")
        if pid is None:
            if now - held["since"] > UNCLAIMED_SECS:
                del data["owners"][owner]
            continue
        if held.get("gone_at") is None and not _running(pid):
            held["gone_at"] = now
        if held.get("gone_at") is not None and now >= held["gone_at"] + release:
            del data["owners"][owner]


def used(data: dict) -> int:
    return sum(held["bytes"] for held in data["owners"].values())


def init(path: str, capacity: int, release_ms: int = 0) -> None:
    """A fresh, empty device of ``capacity`` bytes (replacing any ledger at ``path``)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"capacity": capacity, "release_ms": release_ms, "owners": {}}, fh)


def reserve(
    path: str, owner: str, nbytes: int, capacity: int | None = None, release_ms: int = 0
) -> None:
    """Hold ``nbytes`` for ``owner`` (replacing what it held); OutOfMemory if not free.
    With ``capacity``, a missing ledger is made first (an empty device that size, giving
    a dead process's memory back after ``release_ms``)."""
    if capacity is not None:
        with contextlib.suppress(FileExistsError), open(path, "x", encoding="utf-8") as fh:
            json.dump({"capacity": capacity, "release_ms": release_ms, "owners": {}}, fh)
    with _ledger(path) as data:
        held = data["owners"].pop(owner, None)
        free = data["capacity"] - used(data)
        if nbytes > free:
            if held is not None:
                data["owners"][owner] = held
            raise OutOfMemory(
                f"CUDA out of memory. Tried to allocate {nbytes / MiB:.0f} MiB "
                f"({free / MiB:.0f} MiB free of {data['capacity'] / MiB:.0f} MiB)"
            )
        data["owners"][owner] = {"bytes": nbytes, "pid": None, "since": time.time()}


def claim(path: str, owner: str, pid: int) -> bool:
    """Bind ``owner``'s reservation to process ``pid``: freed once it is gone. False if
    ``owner`` holds nothing."""
    with _ledger(path) as data:
        held = data["owners"].get(owner)
        if held is None:
            return False
        held["pid"] = pid
        held.pop("gone_at", None)
        return True


def release(path: str, owner: str) -> None:
    """Give back what ``owner`` holds now (as a process that freed its memory)."""
    with _ledger(path) as data:
        data["owners"].pop(owner, None)


def read(path: str) -> dict:
    """``{"capacity", "used", "owners": {owner: bytes}}`` in bytes, as the device is now."""
    with _ledger(path) as data:
        return {
            "capacity": data["capacity"],
            "used": used(data),
            "owners": {o: h["bytes"] for o, h in data["owners"].items()},
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmux.demo.fake_gpu", description=__doc__)
    parser.add_argument("command", choices=("init", "reserve", "claim", "release", "used", "show"))
    parser.add_argument("--ledger", default=os.environ.get("FAKE_GPU_LEDGER"), required=False)
    parser.add_argument("--capacity", type=size)
    parser.add_argument("--release-ms", type=int, default=0)
    parser.add_argument("--owner")
    parser.add_argument("--bytes", type=size)
    parser.add_argument("--pid", type=int)
    args = parser.parse_args(argv)
    if not args.ledger:
        parser.error("--ledger (or FAKE_GPU_LEDGER) is required")
    try:
        if args.command == "init":
            init(args.ledger, args.capacity, args.release_ms)
        elif args.command == "reserve":
            reserve(args.ledger, args.owner, args.bytes, args.capacity, args.release_ms)
        elif args.command == "claim":
            return 0 if claim(args.ledger, args.owner, args.pid) else 1
        elif args.command == "release":
            release(args.ledger, args.owner)
        elif args.command == "used":  # no ledger yet: nothing was ever allocated
            print(read(args.ledger)["used"] // MiB if os.path.exists(args.ledger) else 0)
        else:
            print(json.dumps(read(args.ledger)))
    except OutOfMemory as exc:
        print(f"torch.OutOfMemoryError: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"fake_gpu: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
