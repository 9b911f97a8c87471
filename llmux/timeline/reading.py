"""Reading llmux's JSON log lines back: files (rotated, compressed or not) or a stream.

Usage::

    lines = read_logs(["/var/log/llmux/llmux.log", "/var/log/llmux/llmux.log.2.gz"])
    for record in lines.records: ...       # dicts, in the order they were written
    lines.gaps                             # [Gap]: unparsable lines, lines lost

Files are put in the order they were written: by the time of their first record
(logrotate's ``.N`` numbers run backwards, and a shell glob sorts them wrong).
Each record gets ``_t`` (Unix seconds from its ``timestamp``) and ``_where``
(``file:line``). Lines are numbered by the writing process (``pid`` and ``seq``,
:class:`llmux.telemetry.logs.SequenceFilter`): a jump in a process's numbers is
reported as lines lost. Text-format logs cannot be read back; their lines count
as unparsable.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class Gap:
    """Something the log cannot tell: ``kind`` is ``unparsable``, ``lines_lost``,
    ``restart``, ``unknown_start``, ``missing_event`` or ``no_end``; ``at`` Unix seconds
    (None when unknown)."""

    at: float | None
    kind: str
    detail: str

    def as_dict(self) -> dict:
        return {"at": self.at, "kind": self.kind, "detail": self.detail}


@dataclass
class Lines:
    """What :func:`read_logs` read: the records in write order, and what is missing."""

    records: list[dict] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    numbered: bool = False  # whether lines carry pid and seq (lost lines are detectable)


def read_logs(paths: Iterable[str | Path], stdin: IO[str] | None = None) -> Lines:
    """Read ``paths`` (``-``: ``stdin``) into :class:`Lines`.

    Raises OSError for a file that cannot be read; a line that is not a JSON object
    with a parsable ``timestamp`` is a gap, not an error.
    """
    chunks = []
    seen: set[tuple[int, int]] = set()
    for path in paths:
        if str(path) != "-":
            stat = Path(path).stat()
            if (stat.st_dev, stat.st_ino) in seen:  # the same file twice (a link, a glob)
                continue
            seen.add((stat.st_dev, stat.st_ino))
        if str(path) == "-":
            if stdin is None:
                raise ValueError("'-' (stdin) given, but no stdin")
            chunks.append(_parse("<stdin>", stdin))
        else:
            with _open(Path(path)) as f:
                chunks.append(_parse(str(path), f))
    # in the order they were written: by first record; an empty file goes first
    chunks.sort(key=lambda c: c[0][0]["_t"] if c[0] else float("-inf"))
    lines = Lines()
    for records, gaps, name in chunks:
        lines.records.extend(records)
        lines.gaps.extend(gaps)
        lines.sources.append(name)
    lines.numbered = any("seq" in r for r in lines.records)
    lines.gaps.extend(_lost(lines.records))
    lines.gaps.sort(key=lambda g: (g.at is None, g.at or 0.0))
    return lines


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - the caller closes


def _parse(name: str, stream: IO[str]) -> tuple[list[dict], list[Gap], str]:
    records: list[dict] = []
    gaps: list[Gap] = []
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
            record["_t"] = datetime.fromisoformat(record["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            at = records[-1]["_t"] if records else None
            gaps.append(Gap(at, "unparsable", f"{name}:{number}: not a JSON log line"))
            continue
        record["_where"] = f"{name}:{number}"
        records.append(record)
    return records, gaps, name


def _lost(records: list[dict]) -> list[Gap]:
    """Jumps in each process's line numbers."""
    last: dict[int, tuple[int, float]] = {}
    gaps = []
    for record in records:
        pid, seq = record.get("pid"), record.get("seq")
        if not isinstance(pid, int) or not isinstance(seq, int):
            continue
        before = last.get(pid)
        if before is not None and seq != before[0] + 1:
            if seq > before[0] + 1:
                detail = (
                    f"{seq - before[0] - 1} lines of process {pid} lost "
                    f"(its lines {before[0] + 1}-{seq - 1}) before {record['_where']}"
                )
            else:
                detail = f"process {pid}'s lines out of order at {record['_where']}"
            gaps.append(Gap(before[1], "lines_lost", detail))
        last[pid] = (seq, record["_t"])
    return gaps
