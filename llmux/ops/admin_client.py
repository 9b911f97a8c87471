"""Talking to a running llmux's admin API, and showing its status to people.

Usage::

    client = AdminClient("http://127.0.0.1:3000", token=None)
    status = client.call("GET", "/llmux/status")
    print(format_status(status))

Standard library only: the ``llmux`` command runs this in gunicorn's master
environment, where requests must not be imported before gevent patches.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from ..engine.residency import format_bytes


class AdminError(Exception):
    """The admin API could not be reached, or answered with an error."""


class AdminClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, timeout: float | None = None) -> dict:
        body = b"" if method == "POST" else None
        request = urllib.request.Request(self.url + path, method=method, data=body)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AdminError(_describe_error(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach llmux at {self.url}: {reason}") from None
        except ValueError:
            raise AdminError(f"{self.url}{path} did not answer with JSON") from None


def _describe_error(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read())["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code}"
    lines = [f"HTTP {exc.code} {error.get('code')}: {error.get('message')}"]
    lines += [f"  {problem}" for problem in error.get("problems") or []]
    return "\n".join(lines)


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    return f"{value / 60:.1f}min"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def format_status(status: dict) -> str:
    """The status as text for a terminal: models, last switch, hook failures."""
    awake = status.get("awake") or ([status["active"]] if status.get("active") else [])
    memory = status.get("memory")
    lines = [
        f"llmux {status['version']}, up {_secs(status['uptime_secs'])}, "
        f"awake: {', '.join(awake) or 'none'}" + (", switching" if status["switching"] else ""),
    ]
    if memory:
        measured = memory["used_measured"]
        lines.append(
            f"memory: {format_bytes(memory['used_declared'])} of "
            f"{format_bytes(memory['budget'])} by model sizes"
            + (f", {format_bytes(measured)} in use by the probe" if measured is not None else "")
            + f"; headroom {format_bytes(memory['headroom'])}, eviction {memory['eviction']}"
        )
    lines.append("")
    head = ["MODEL", "STATE", "PORT", "IN-FLIGHT", "QUEUED", "OLDEST-WAIT", "IDLE", "FAILED"]
    rows = [head + (["MEMORY"] if memory else [])]
    for name in sorted(status["models"]):
        m = status["models"][name]
        failure = m.get("last_hook_failure")
        row = [
            name + (" (removed)" if m.get("removed") else ""),
            m["state"],
            str(m.get("port") or "-"),
            str(m["in_flight"]),
            str(m["queued"]),
            _secs(m["oldest_wait_secs"]) if m["queued"] else "-",
            _secs(m.get("idle_secs")),
            f"{failure['hook']} {_ago(status['now'], failure['at'])} ago" if failure else "-",
        ]
        if memory:
            row.append(_model_memory(memory["models"].get(name)))
        rows.append(row)
    lines += _table(rows)
    if memory and memory["evictions"]:
        lines += ["", "put to sleep to make room:"]
        for e in memory["evictions"][:5]:
            ago = _secs(e["secs_ago"])
            lines.append(f"  {e['model']} for {e['for']} ({e['reason']}), {ago} ago")
    last = status.get("last_switch")
    if last:
        phases = ", ".join(f"{k} {_secs(v)}" for k, v in last["phases"].items())
        result = last.get("result") or ("success" if last["ok"] else "failure")
        outcome = {"success": "ok", "abandoned": f"abandoned: {last['error']}"}.get(
            result, f"failed: {last['error']}"
        )
        lines += [
            "",
            f"last switch: {last['from'] or 'idle'} -> {last['to']} {outcome} "
            f"in {_secs(last['duration_secs'])}" + (f" ({phases})" if phases else ""),
        ]
    failures = status.get("hook_failures") or []
    if failures:
        lines += ["", "recent hook failures:"]
        for f in failures[:5]:
            ago = _ago(status["now"], f["at"])
            lines.append(f"  {f['model']} {f['hook']}, {ago} ago: {f['error']}")
    return "\n".join(lines)


def _model_memory(sizes: dict | None) -> str:
    """``10.0GiB`` declared, ``+ 12.0GiB measured`` when measured, ``pinned``."""
    if not sizes:
        return "-"
    text = format_bytes(sizes["declared"])
    if sizes["measured"] is not None:
        text += f", measured {format_bytes(sizes['measured'])}"
        if sizes["over_declared"]:
            text += " (over)"
    return text + (", pinned" if sizes["pin"] else "")


def _ago(now: float, then: float) -> str:
    return _secs(max(0.0, (now or time.time()) - then))
