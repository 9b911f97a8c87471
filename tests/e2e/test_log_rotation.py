"""Logs written to a file (``llmux serve --log-file``) and rotated by the real logrotate while
requests and switches run: no line lost, none split, none written twice."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import requests

from tests.support import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ROTATIONS = 8
CLIENTS = 6


def logrotate() -> str:
    for path in (shutil.which("logrotate"), "/usr/sbin/logrotate"):
        if path and Path(path).exists():
            return path
    pytest.fail("this test needs logrotate: apt-get install logrotate")


def rotated_in_order(log: Path) -> list[Path]:
    """The rotated files oldest first (logrotate numbers the newest .1, compresses from .2
    on), then the live one."""
    numbered = sorted(
        log.parent.glob(log.name + ".*"),
        key=lambda p: -int(p.name[len(log.name) + 1 :].split(".")[0]),
    )
    return [*numbered, log] if log.exists() else numbered


def read(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def shipped_config(log: Path, mode: str) -> str:
    """conf/logrotate/llmux for ``log``, run as whoever runs the test, with ``mode`` as the
    way the new file appears (the shipped ``nocreate``, or logrotate's default ``create``)."""
    text = (ROOT / "conf/logrotate/llmux").read_text()
    text = text.replace("/var/log/llmux/llmux.log", str(log)).replace("su llmux llmux", "")
    text = text.replace("rotate 14", "rotate 1000").replace("notifempty", "ifempty")
    assert "    nocreate\n" in text
    return text.replace("    nocreate\n", f"    {mode}\n")


@pytest.mark.parametrize("mode", ["nocreate", "create"])
def test_rotation_under_load_loses_and_splits_no_line(llmux_factory, tmp_path, mode):
    log = tmp_path / "logs" / "llmux.log"
    log.parent.mkdir()
    server = llmux_factory(models=("a", "b"), extra_args=("--log-file", str(log)))
    conf = tmp_path / "logrotate.conf"
    conf.write_text(shipped_config(log, mode))
    sent: list[str] = []
    stop = threading.Event()
    errors: list[str] = []

    def client(n: int) -> None:
        with requests.Session() as s:
            i = 0
            while not stop.is_set():
                rid = f"rot-{n}-{i}-{uuid.uuid4().hex[:8]}"
                model = "ab"[(i // 5 + n) % 2]  # runs of five, so switches happen too
                r = s.post(
                    server.url + "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "x" * 300}]},
                    headers={"X-Request-Id": rid},
                    timeout=30,
                )
                if r.status_code != 200:
                    errors.append(f"{rid}: {r.status_code} {r.text[:200]}")
                sent.append(rid)
                i += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        for _ in range(ROTATIONS):
            # rotate once the live file has lines again: each rotation lands under load
            wait_for(lambda: log.exists() and log.stat().st_size > 20_000, 30, every=0.02)
            run = subprocess.run(
                [logrotate(), "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert run.returncode == 0, run.stderr
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:5]
    count = len(sent)
    wait_for(lambda: finished_ids(log).count("") == 0 and len(finished_ids(log)) >= count, 30)
    assert server.terminate() == 0

    files = rotated_in_order(log)
    assert len(files) >= ROTATIONS  # every rotation took a file with lines away
    assert any(path.suffix == ".gz" for path in files)  # compress, delayed by one rotation
    records = []
    for path in files:
        data = read(path)
        assert not data or data.endswith(b"\n"), f"{path.name} ends inside a line"
        for line in data.decode("utf-8").splitlines():
            records.append(json.loads(line))  # a split or glued line fails here
    finished = [r["request_id"] for r in records if r.get("event") == "request_finished"]
    assert sorted(finished) == sorted(sent)  # none lost, none twice
    access = [r.get("request_id") for r in records if r["logger"] == "gunicorn.access"]
    assert sorted(rid for rid in access if rid and rid.startswith("rot-")) == sorted(sent)
    # each process's lines are in its own order across the files, none missing
    for pid in {r["pid"] for r in records}:
        numbers = [r["seq"] for r in records if r["pid"] == pid]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), pid


def finished_ids(log: Path) -> list[str]:
    """request_ids of every complete request_finished line in the live and rotated files."""
    ids = []
    for path in rotated_in_order(log):
        text = read(path).decode(errors="replace")
        for line in text[: text.rfind("\n") + 1].splitlines():
            record = json.loads(line)
            if record.get("event") == "request_finished":
                ids.append(record.get("request_id", ""))
    return ids
