"""A :class:`~llmux.timeline.story.Story` for people: a text Gantt chart for a terminal, and a
self-contained HTML page (no script, no external file; every text escaped).

Usage::

    print(text(story, width=80, requests=False))
    Path("timeline.html").write_text(html_page(story))
"""

from __future__ import annotations

import html
import re
import statistics
from collections import Counter
from datetime import UTC, datetime
from operator import itemgetter

from .story import UNKNOWN, Story

# one character per state in the text chart; asleep is blank
STATE_CHARS = {
    "awake": "=",
    "waking": "+",
    "draining": "-",
    "sleeping": "~",
    "failed": "X",
    "asleep": " ",
    UNKNOWN: "?",
}
# when several states share a column, the one shown: short, rare states stay visible
SHOWN_FIRST = ("failed", "waking", "sleeping", "draining", "awake", UNKNOWN, "asleep")
COLOURS = {
    "awake": "#1f9d55",
    "waking": "#e0a100",
    "draining": "#3b82f6",
    "sleeping": "#8b5cf6",
    "failed": "#d0342c",
    "asleep": "#e5e7eb",
    UNKNOWN: "#ffffff",
}

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#111}
.row{display:flex;align-items:center;margin:2px 0}
.name{width:12em;font-family:monospace;overflow:hidden}
.lane{position:relative;flex:1;height:18px;background:#f9fafb;border:1px solid #ddd}
.bar{position:absolute;top:0;bottom:0}
.axis{position:relative;flex:1;height:1.4em;font:11px monospace;color:#555}
.tick{position:absolute;top:0;transform:translateX(-50%);white-space:nowrap}
.tick:first-child{transform:none}.tick:last-child{transform:translateX(-100%)}
.key{display:inline-block;width:1em;height:1em;margin:0 .3em 0 1em;
  border:1px solid #999;vertical-align:middle}
table{border-collapse:collapse;margin-bottom:1em}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top;
  font-family:monospace;white-space:pre-wrap}
.gaps li{color:#b91c1c}
"""


def _secs(key: str):
    return lambda x: f"{x[key]:.3f}"


def _started(x: dict) -> str:
    return clock(x["started_at"])


# the HTML page's tables: (title, Story attribute, [(column, cell of an entry)])
TABLES = (
    ("Switches", "switches", [
        ("started", _started), ("from", itemgetter("from")), ("to", itemgetter("to")),
        ("result", itemgetter("result")), ("seconds", _secs("duration_secs")),
        ("phases", lambda x: ", ".join(f"{k} {v:.3f}" for k, v in x["phases"].items())),
        ("error", itemgetter("error")),
    ]),
    ("Sleeps", "sleeps", [
        ("started", _started), ("model", itemgetter("from")), ("reason", itemgetter("reason")),
        ("ok", itemgetter("ok")), ("seconds", _secs("duration_secs")),
        ("error", itemgetter("error")),
    ]),
    ("Hook runs", "hooks", [
        ("started", _started), ("model", itemgetter("model")), ("hook", itemgetter("hook")),
        ("result", itemgetter("result")), ("seconds", _secs("duration_secs")),
        ("exit", lambda x: x.get("exit_code", "")),
        ("stderr", lambda x: (x.get("stderr") or "")[-500:]),
    ]),
    ("Requests", "requests", [
        ("arrived", lambda x: clock(x["arrived_at"])), ("request id", itemgetter("request_id")),
        ("model", itemgetter("model")), ("status", itemgetter("status")),
        ("outcome", itemgetter("outcome")), ("waited s", _secs("wait_secs")),
        ("took s", _secs("duration_secs")),
    ]),
)  # fmt: skip


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain(value) -> str:
    """``value`` as text safe for a terminal: control characters (a carriage return that
    would overwrite the line, an escape sequence) shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def clock(t: float | None, date: bool = False) -> str:
    """``t`` (Unix seconds) as UTC wall time, to the millisecond."""
    if t is None:
        return "?"
    try:
        stamp = datetime.fromtimestamp(t, UTC)
    except (ValueError, OverflowError, OSError):  # a timestamp no clock shows
        return f"{t:.3f}"
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f" if date else "%H:%M:%S.%f")[:-3]


def _chart_row(intervals: list[dict], start: float, span: float, width: int) -> str:
    cells: list[set[str]] = [set() for _ in range(width)]
    for interval in intervals:
        a = int((interval["from"] - start) / span * width)
        b = int((interval["to"] - start) / span * width)
        for i in range(max(a, 0), min(max(b, a + 1), width)):
            cells[i].add(interval["state"])
    return "".join(
        STATE_CHARS[next((s for s in SHOWN_FIRST if s in cell), "asleep")] for cell in cells
    )


def _request_summary(story: Story) -> list[str]:
    lines = []
    by_model: dict[str, list[dict]] = {}
    for request in story.requests:
        by_model.setdefault(request["model"] or "?", []).append(request)
    for model, requests in sorted(by_model.items()):
        statuses = Counter(str(r["status"]) for r in requests)
        waits = sorted(r["wait_secs"] for r in requests)
        p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))]
        lines.append(
            f"  {plain(model)}: {len(requests)} "
            f"({', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))}); "
            f"wait p50 {statistics.median(waits):.3f} s, p99 {p99:.3f} s"
        )
    return lines


def text(story: Story, width: int = 72, requests: bool = False) -> str:
    """The story as lines for a terminal: chart, switches, sleeps, failed hooks, gaps."""
    out = []
    if story.start is None:
        return "no llmux log lines read\n"
    span = max(story.end - story.start, 1e-6)
    out.append(
        f"llmux timeline {clock(story.start, True)} -> {clock(story.end)} UTC ({span:.3f} s), "
        f"{story.lines} lines from {len(story.sources)} source(s)"
    )
    name_width = max([len(m) for m in story.states] + [5])
    if width >= 2 * 12 + 2:
        out.append(f"{'':{name_width}} |{clock(story.start):<{width - 12}}{clock(story.end):>12}|")
    else:  # no room for both times: the first line has them
        out.append(f"{'':{name_width}} |{'':{width}}|")
    for model, intervals in sorted(story.states.items()):
        row = _chart_row(intervals, story.start, span, width)
        out.append(f"{plain(model):{name_width}} |{row}|")
    legend = "  ".join(f"{c!r} {s}" for s, c in STATE_CHARS.items())
    out.append(f"{'':{name_width}}  {legend}")
    out.append("")
    out.append(f"switches ({len(story.switches)})")
    for s in story.switches:
        phases = ", ".join(f"{k} {v:.3f}" for k, v in s["phases"].items())
        note = f": {plain(s['error'])}" if s["error"] else ""
        out.append(
            f"  {clock(s['started_at'])}  {plain(s['from'])} -> {plain(s['to'])}  {s['result']}  "
            f"{s['duration_secs']:.3f} s" + (f" ({phases})" if phases else "") + note
        )
    if story.sleeps:
        out.append(f"sleeps ({len(story.sleeps)})")
        for s in story.sleeps:
            result = "ok" if s["ok"] else f"failed: {plain(s['error'])}"
            out.append(
                f"  {clock(s['started_at'])}  {plain(s['from'])} ({s['reason']})  {result}  "
                f"{s['duration_secs']:.3f} s"
            )
    kinds = Counter(h["result"] for h in story.hooks)
    out.append(
        f"hook runs ({len(story.hooks)}): "
        + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    )
    for h in story.hooks:
        if h["result"] != "ok":
            why = "timed out" if h.get("timed_out") else f"exit {h.get('exit_code')}"
            if h["result"] == "stopped":
                why = "stopped: nobody waited for it"
            stderr = (h.get("stderr") or "").strip().splitlines()
            out.append(
                f"  {clock(h['started_at'])}  {plain(h['model'])} {h['hook']}  {why} "
                f"({h['duration_secs']:.3f} s)" + (f": {plain(stderr[-1])}" if stderr else "")
            )
    out.append(f"requests ({len(story.requests)})")
    out.extend(_request_summary(story))
    if requests:
        for r in story.requests:
            why = ", ".join(
                str(x)
                for x in (r.get("code"), r.get("left_queue") and "left queue: " + r["left_queue"])
                if x
            )
            out.append(
                f"  {clock(r['arrived_at'])}  {plain(r['request_id'])}  {plain(r['model'])}  "
                f"{r['status']} {r['outcome']}"
                + (f" ({why})" if why else "")
                + f"  waited {r['wait_secs']:.3f} s, took {r['duration_secs']:.3f} s"
            )
    out.append("")
    if story.gaps:
        out.append(f"gaps: what this log cannot tell ({len(story.gaps)})")
        for g in story.gaps:
            out.append(f"  {clock(g.at)}  {g.kind}: {plain(g.detail)}")
    else:
        out.append("gaps: none (every process's lines are all here)")
    return "\n".join(out) + "\n"


def html_page(story: Story) -> str:
    """The story as one HTML page a person can read in any browser, offline."""
    e = html.escape
    if story.start is None:
        return "<!doctype html><meta charset=utf-8><title>llmux timeline</title><p>No lines."
    span = max(story.end - story.start, 1e-6)

    def pct(t: float) -> float:
        return round((t - story.start) / span * 100, 4)

    rows = []
    for model, intervals in sorted(story.states.items()):
        bars = "".join(
            f'<div class="bar" style="left:{pct(i["from"])}%;'
            f"width:{max(pct(i['to']) - pct(i['from']), 0.05)}%;"
            f'background:{COLOURS[i["state"]]}" title="{e(model)}: {e(i["state"])} '
            f'{clock(i["from"])} - {clock(i["to"])}"></div>'
            for i in intervals
        )
        name = f'<div class="name">{e(model)}</div>'
        rows.append(f'<div class="row">{name}<div class="lane">{bars}</div></div>')
    ticks = "".join(
        f'<span class="tick" style="left:{i * 25}%">{clock(story.start + span * i / 4)}</span>'
        for i in range(5)
    )
    rows.append(f'<div class="row"><div class="name"></div><div class="axis">{ticks}</div></div>')
    legend = " ".join(
        f'<span class="key" style="background:{c}"></span>{e(s)}' for s, c in COLOURS.items()
    )

    def table(title: str, entries: list[dict], columns) -> str:
        header = "".join(f"<th>{e(name)}</th>" for name, _ in columns)
        cells = "".join(
            "<tr>" + "".join(f"<td>{e(str(cell(x)))}</td>" for _, cell in columns) + "</tr>"
            for x in entries
        )
        return f"<h2>{e(title)} ({len(entries)})</h2><table><tr>{header}</tr>{cells}</table>"

    tables = "".join(table(title, getattr(story, kind), columns) for title, kind, columns in TABLES)
    gaps = (
        "<ul class=gaps>"
        + "".join(f"<li>{clock(g.at)} <b>{e(g.kind)}</b>: {e(g.detail)}</li>" for g in story.gaps)
        + "</ul>"
        if story.gaps
        else "<p>No gaps: every process's lines are all here.</p>"
    )
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>llmux timeline {clock(story.start, True)}</title>
<style>{STYLE}</style></head><body>
<h1>llmux timeline</h1>
<p>{clock(story.start, True)} to {clock(story.end)} UTC ({span:.3f} s), {story.lines} lines from
{e(", ".join(story.sources))}.</p>
<h2>Gaps: what the log cannot tell ({len(story.gaps)})</h2>{gaps}
<h2>Model states</h2>{"".join(rows)}<p>{legend}</p>
{tables}
</body></html>
"""
