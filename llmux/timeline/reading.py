"""Reading llmux's JSON log lines back: files (rotated, compressed or not) or a stream.

Usage::

    lines = read_logs(["/var/log/llmux/llmux.log", "/var/log/llmux/llmux.log.2.gz"])
    for record in lines.records: ...       # dicts, one at a time, in the order written
    lines.gaps                             # [Gap]: unparsable lines, lines lost (so far)

Records are read one at a time, never all at once: a day of a busy llmux is
hundreds of millions of lines. Files are put in the order they were written, by
the time of their first record (logrotate's ``.N`` numbers run backwards, and a
shell glob sorts them wrong); a file named twice is read once. Each record gets
``_t`` (Unix seconds from its ``timestamp``) and ``_where`` (``file:line``). Lines
are numbered by the writing process (``pid`` and ``seq``,
:class:`llmux.telemetry.logs.SequenceFilter`): a jump in a process's numbers is
reported as lines lost. Text-format logs cannot be read back; their lines count
as unparsable.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class Gap:
    """Something the log cannot tell: ``kind`` is ``unparsable``, ``lines_lost``,
    ``restart``, ``stopped``, ``unknown_start``, ``missing_event`` or ``no_end``;
    ``at`` Unix seconds (None when unknown)."""

    at: float | None
    kind: str
    detail: str

    def as_dict(self) -> dict:
        return {"at": self.at, "kind": self.kind, "detail": self.detail}


@dataclass
class Lines:
    """What :func:`read_logs` reads: ``records``, an iterator in write order; ``gaps``,
    filled in as they are met; ``numbered``, whether any line so far carried pid and seq
    (without them, lost lines cannot be seen); ``count``, records read so far."""

    records: Iterator[dict]
    sources: list[str]
    gaps: list[Gap] = field(default_factory=list)
    numbered: bool = False
    count: int = 0


def read_logs(paths: Iterable[str | Path], stdin: IO[str] | None = None) -> Lines:
    """Open ``paths`` (``-``: ``stdin``) for reading in write order.

    Raises OSError for a file that does not exist (at once, before any record), and
    ValueError for ``-`` without ``stdin``. A file that cannot be read (no permission,
    not gzip after all, truncated) and a line that is not a JSON object with a parsable
    ``timestamp`` are gaps, not errors. Standard input may be several files one after
    another in any order (``zcat -f llmux.log* |``): it is cut where time goes back and
    the pieces, kept in temporary files, are read in write order too.
    """
    sources: list[tuple[float, str, Iterator[str]]] = []
    early: list[Gap] = []
    seen: set[tuple[int, int]] = set()
    for path in paths:
        if str(path) == "-":
            if stdin is None:
                raise ValueError("'-' (stdin) given, but no stdin")
            sources.extend(_pieces(stdin))
            continue
        stat = Path(path).stat()
        if (stat.st_dev, stat.st_ino) in seen:  # the same file twice (a link, a glob)
            continue
        seen.add((stat.st_dev, stat.st_ino))
        try:
            head, stream = _first_time(_lines_of(Path(path)))
        except (OSError, EOFError) as exc:  # not gzip after all, cut short
            early.append(Gap(None, "unparsable", f"{path}: unreadable: {exc}"))
            continue
        sources.append((head, str(path), stream))
    sources.sort(key=lambda s: s[0])  # an empty one first
    lines = Lines(records=iter(()), sources=[name for _, name, _ in sources], gaps=early)
    lines.records = _records(lines, sources)
    return lines


# how far back a timestamp on stdin may go before it is taken for another file's start
# (lines of gunicorn's master and worker interleave within milliseconds)
BACKWARDS_SECS = 1.0


def _pieces(stream: IO[str]) -> list[tuple[float, str, Iterator[str]]]:
    """``stream`` cut where another file begins, each piece spooled to a temporary file.

    A file begins where time goes back, or where a process's line numbers do not
    follow on (a shell glob puts ``llmux.log.14.gz`` before ``llmux.log.2.gz``: time
    goes forward there, but the numbers jump); gunicorn starting again restarts them.
    """
    pieces = []
    current, head, latest = None, None, float("-inf")
    numbers: dict[int, int] = {}  # pid -> its last seq in this piece
    for line in stream:
        record = _parse(line)
        if record is not None:
            if current is not None and head is not None and _begins(record, latest, numbers):
                pieces.append((head, current))
                current, head, numbers = None, None, {}
            _restarts(record, numbers)
            if head is None:
                head = latest = record["_t"]
            latest = max(latest, record["_t"])
            pid, seq = record.get("pid"), record.get("seq")
            if isinstance(pid, int) and isinstance(seq, int):
                numbers[pid] = seq
        if current is None:
            current = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        current.write(line if line.endswith("\n") else line + "\n")
    if current is not None:
        pieces.append((float("-inf") if head is None else head, current))
    named = []
    for number, (first, spool) in enumerate(pieces, 1):
        spool.seek(0)
        name = "<stdin>" if len(pieces) == 1 else f"<stdin, part {number}>"
        named.append((first, name, _spooled(spool)))
    return named


def _begins(record: dict, latest: float, numbers: dict[int, int]) -> bool:
    """Whether ``record`` starts another file: time goes back, or its numbers jump."""
    if record["_t"] < latest - BACKWARDS_SECS:
        return True
    pid, seq = record.get("pid"), record.get("seq")
    return isinstance(seq, int) and pid in numbers and seq != numbers[pid] + 1


def _restarts(record: dict, numbers: dict) -> None:
    """gunicorn starting (again): its processes number their lines from 1, maybe with
    the pids of the last run (a container's pids repeat)."""
    if record.get("logger") != "gunicorn.error" or not isinstance(record.get("message"), str):
        return
    if record["message"].startswith("Starting gunicorn"):
        numbers.clear()
    worker = booted_worker(record)
    if worker is not None:
        numbers.pop(worker, None)


def booted_worker(record: dict) -> int | None:
    """The pid in gunicorn's "Booting worker with pid: N" line, None for any other."""
    message = record.get("message")
    if record.get("logger") != "gunicorn.error" or not isinstance(message, str):
        return None
    if not message.startswith("Booting worker with pid: "):
        return None
    worker = message.rsplit(" ", 1)[-1]
    return int(worker) if worker.isdigit() else None


def _spooled(spool: IO[str]) -> Iterator[str]:
    with spool:
        yield from spool


def _lines_of(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw:  # opened now: a missing file fails read_logs
        yield from io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


def _first_time(stream: Iterator[str]) -> tuple[float, Iterator[str]]:
    """The time of the first record in ``stream`` (-inf if none), and the stream, whole."""
    taken = []
    for line in stream:
        taken.append(line)
        record = _parse(line)
        if record is not None:
            return record["_t"], itertools.chain(taken, stream)
    return float("-inf"), iter(taken)


def _parse(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
        record["_t"] = datetime.fromisoformat(record["timestamp"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None
    return record


def _records(lines: Lines, sources) -> Iterator[dict]:
    last: dict[int, tuple[int, float]] = {}  # pid -> (seq, at) of its last line
    at = None
    for _, name, stream in sources:
        numbered = enumerate(stream, 1)
        number = 0
        while True:
            try:
                number, line = next(numbered)
            except StopIteration:
                break
            except (OSError, EOFError) as exc:  # a truncated .gz, a disk error
                lines.gaps.append(
                    Gap(at, "unparsable", f"{name}: unreadable after line {number}: {exc}")
                )
                break
            record = _parse(line)
            if record is None:
                if line.strip():
                    lines.gaps.append(
                        Gap(at, "unparsable", f"{name}:{number}: not a JSON log line")
                    )
                continue
            at = record["_t"]
            record["_where"] = f"{name}:{number}"
            _restarts(record, last)
            pid, seq = record.get("pid"), record.get("seq")
            if isinstance(pid, int) and isinstance(seq, int):
                lines.numbered = True
                before = last.get(pid)
                if before is not None and seq != before[0] + 1:
                    lines.gaps.append(_jump(pid, before, seq, record["_where"]))
                last[pid] = (seq, at)
            lines.count += 1
            yield record


def _jump(pid: int, before: tuple[int, float], seq: int, where: str) -> Gap:
    if seq > before[0] + 1:
        detail = (
            f"{seq - before[0] - 1} lines of process {pid} lost "
            f"(its lines {before[0] + 1}-{seq - 1}) before {where}"
        )
    else:
        detail = f"process {pid}'s lines out of order at {where}"
    return Gap(before[1], "lines_lost", detail)
