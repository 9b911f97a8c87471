"""Request traces for the scheduling simulator and the real-server replay.

A trace is a list of arrivals (when, which model, how long the backend needs) on one time axis
starting at 0, read from files (the Azure LLM inference trace 2023, a generic CSV, JSON lines)
or made by seeded generators, then cut, thinned and sped up as needed::

    from llmux.sim.traces import azure_two_models, load_trace, write_replay, zipf_bursty

    trace = azure_two_models()  # None when the Azure files are not on this machine
    if trace is not None:
        trace = trace.window(1200).sample(0.25, seed=1).compress(10)
        costs = {m: {"wake_secs": 1.0, "sleep_secs": 0.1} for m in trace.models}
        write_replay(trace, "azure-p25-x10.jsonl", token_ms=5, costs=costs)
    mine = load_trace(["a.csv", "b.jsonl"]).window(600)

Results from the Azure trace must carry ``AZURE_ATTRIBUTION``; its files are read where they
lie (``azure_dir``) and must never be copied into this repository.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

AZURE_ATTRIBUTION = (
    "Azure LLM inference trace 2023 (Azure Public Dataset, CC-BY-4.0): Patel, Choukse, Zhang, "
    'Shah, Goiri, Maleki, Bianchini, "Splitwise: Efficient generative LLM inference using phase '
    'splitting", ISCA 2024.'
)
AZURE_HEADER = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
_AZURE_PREFIX = "AzureLLMInferenceTrace_"
_FRACTION = re.compile(r"(?<=\d\d:\d\d)\.(\d+)")  # seconds' fraction in an ISO time

# zipf_bursty's on/off process. Bursts last 30 s on average and quiet spells 90 s, so a model
# bursts a quarter of the time. A quiet spell keeps a trickle of 2% of the model's mean rate;
# the burst rate is what keeps the long-run mean at the model's share of `rate`: 3.94x.
ON_MEAN_SECS, OFF_MEAN_SECS, OFF_RATE_FACTOR = 30.0, 90.0, 0.02
_ON_SHARE = ON_MEAN_SECS / (ON_MEAN_SECS + OFF_MEAN_SECS)
ON_RATE_FACTOR = (1 - (1 - _ON_SHARE) * OFF_RATE_FACTOR) / _ON_SHARE


class TraceError(ValueError):
    """A trace file is missing or malformed; the message reads ``path:line: what is wrong``."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request: ``at`` seconds from the trace start (>= 0); ``service_secs`` the backend
    needs for it alone (> 0), of which ``prefill_secs`` come before the first token (0 if
    unknown); ``tokens`` output tokens (0 if unknown); ``priority`` the RFC 9218 urgency,
    0 (most urgent) to 7. Raises ValueError for a field out of range."""

    at: float
    model: str
    service_secs: float
    tokens: int
    prefill_secs: float
    priority: int = 3

    def __post_init__(self):
        # finite, and times before year 2286 (absolute ones are shifted later) and
        # services under ~115 days: larger ones are typos, and lose float precision
        ok = 0 <= self.at < 1e10 and 0 < self.service_secs < 1e7 and self.tokens >= 0
        ok = ok and bool(self.model)
        if not (ok and 0 <= self.prefill_secs <= self.service_secs and 0 <= self.priority <= 7):
            raise ValueError(f"arrival out of range: {self!r}")


@dataclass(frozen=True)
class ServiceModel:
    """How token counts become backend seconds. The defaults are the scheduling notes'
    synthetic service model: 0.05 + 1e-4·ContextTokens + 0.025·GeneratedTokens seconds, the
    first two terms being the prefill (the time before the first token)."""

    base_secs: float = 0.05
    per_context_token_secs: float = 1e-4
    per_output_token_secs: float = 0.025

    def service(self, context_tokens: float, output_tokens: float) -> tuple[float, float]:
        """Return ``(service_secs, prefill_secs)`` for a request with these token counts."""
        prefill = self.base_secs + self.per_context_token_secs * context_tokens
        return prefill + self.per_output_token_secs * output_tokens, prefill


_DEFAULT_SERVICE = ServiceModel()


@dataclass
class Trace:
    """Arrivals, sorted by ``at`` (stable), and what a simulator needs around them.

    ``models``: every model name in order of first appearance (given names first); traces
    derived by ``window``/``sample``/``compress`` keep their parent's, even for a model gone
    quiet. ``costs``: per model ``{"wake_secs": s, "sleep_secs": s}`` when the source declares
    them. ``source``: free text saying where the trace came from and what was done to it.
    """

    name: str
    arrivals: list[Arrival]
    models: tuple[str, ...] = ()
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        self.arrivals = sorted(self.arrivals, key=lambda a: a.at)
        self.models = tuple(dict.fromkeys([*self.models, *(a.model for a in self.arrivals)]))

    def __len__(self) -> int:
        return len(self.arrivals)

    @property
    def duration(self) -> float:
        """Seconds from the trace start to the last arrival; 0 for an empty trace."""
        return self.arrivals[-1].at if self.arrivals else 0.0

    def _derive(self, arrivals: list[Arrival], note: str, costs=None) -> Trace:
        costs = self.costs if costs is None else costs
        return Trace(self.name, arrivals, self.models, costs, f"{self.source}; {note}")

    def window(self, seconds: float) -> Trace:
        """The arrivals with ``at < seconds``."""
        return self._derive([a for a in self.arrivals if a.at < seconds], f"window {seconds:g} s")

    def sample(self, p: float, seed: int) -> Trace:
        """Keep each arrival independently with probability ``p`` (0..1), drawn in trace order
        from ``random.Random(seed)``: this scales the load by about p and keeps the burst shape
        (stretching time would smooth it). Raises ValueError for p outside 0..1."""
        if not 0 <= p <= 1:
            raise ValueError(f"p must be within 0..1, got {p}")
        rng = random.Random(seed)
        kept = [a for a in self.arrivals if rng.random() < p]
        return self._derive(kept, f"sample p={p:g} seed={seed}")

    def compress(self, factor: float) -> Trace:
        """Divide arrival, service and prefill times and wake/sleep costs by ``factor`` (> 0):
        load and cost-to-service ratios stay, every wait shrinks by the factor. Token counts
        are kept. Raises ValueError for factor <= 0."""
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        f = factor
        arrivals = [
            replace(
                a, at=a.at / f, service_secs=a.service_secs / f, prefill_secs=a.prefill_secs / f
            )
            for a in self.arrivals
        ]
        costs = {m: {k: v / f for k, v in c.items()} for m, c in self.costs.items()}
        return self._derive(arrivals, f"compressed x{f:g}", costs)


def load_trace(
    paths: Sequence[str | Path] | str | Path,
    *,
    service: ServiceModel = _DEFAULT_SERVICE,
    model_names: Sequence[str] | None = None,
) -> Trace:
    """Read trace files into one trace, telling each file's format from its content.

    - Azure LLM inference CSV: header ``TIMESTAMP,ContextTokens,GeneratedTokens``.
    - Generic CSV: ``at`` (seconds from start) or ``timestamp`` (ISO-8601, or seconds);
      optional ``model``; ``service_secs`` (+ ``prefill_secs``) or ``output_tokens``
      (+ ``prompt_tokens``); optional ``priority`` (0..7).
    - JSON lines: the replay format (header ``{"trace", "token_ms", "models"}``, then
      ``{"at", "model", "tokens"[, "prefill_ms"]}`` rows taking tokens * token_ms), or
      headerless rows with the generic CSV's keys.

    Token counts become time through ``service``. Rows of a file without a model column get
    ``model_names[i]`` (one per path) or the file's stem minus ``AzureLLMInferenceTrace_``.
    Timestamps of all files share one axis whose 0 is the earliest, so merged files keep their
    relative timing. Raises TraceError (``path:line: what``) for a missing file, an unknown
    format or a bad row.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if model_names is not None and len(model_names) != len(paths):
        raise ValueError(f"{len(model_names)} model names for {len(paths)} paths")
    names, models, costs, rows = [], [], {}, []
    for i, path in enumerate(paths):
        default = model_names[i] if model_names else path.stem.removeprefix(_AZURE_PREFIX)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise TraceError(f"{path}: cannot read: {e}") from None
        if text.lstrip().startswith("{"):
            name, file_costs, file_rows = _read_jsonl(path, text, service)
        else:
            name, file_costs, file_rows = None, {}, _read_csv(path, text, default, service)
        names.append(name or default)
        models += [*file_costs, *(a.model for _, a in file_rows)]
        costs.update(file_costs)
        rows += file_rows
    origin = min((a.at for absolute, a in rows if absolute), default=0.0)
    arrivals = [replace(a, at=a.at - origin) if absolute else a for absolute, a in rows]
    source = " + ".join(str(p) for p in paths)
    return Trace("+".join(names), arrivals, tuple(dict.fromkeys(models)), costs, source)


def _read_csv(path: Path, text: str, model: str, service: ServiceModel):
    reader = csv.reader(io.StringIO(text))
    cols = [c.strip() for c in next((row for row in reader if any(row)), [])]
    cols = cols if cols == AZURE_HEADER else [c.lower() for c in cols]  # Azure: _row knows it
    if not {"at", "timestamp", "TIMESTAMP"} & set(cols):
        what = "unknown format: no 'at' or 'timestamp' column" if cols else "empty file"
        raise TraceError(f"{path}:{max(reader.line_num, 1)}: {what}")
    default = None if "model" in cols else model  # a model column must not have holes
    rows = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not any(v.strip() for v in row):
            continue
        if len(row) != len(cols):
            raise TraceError(f"{where}: expected {len(cols)} fields, got {len(row)}")
        rec = {c: v.strip() for c, v in zip(cols, row, strict=False) if v.strip()}
        rows.append(_row(rec, where, default, service, None))
    return rows


def _read_jsonl(path: Path, text: str, service: ServiceModel):
    name, costs, token_ms, rows = None, {}, None, []
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{n}"
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"{where}: not JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise TraceError(f"{where}: expected a JSON object")
        if not rows and token_ms is None and ("token_ms" in rec or "trace" in rec):
            name, token_ms, costs = _replay_header(rec, where)
        else:
            rows.append(_row(rec, where, None, service, token_ms))
    return name, costs, rows


def _replay_header(rec: dict, where: str):
    try:
        token_ms = float(rec["token_ms"])
        models = rec.get("models", {})
        costs = {str(m): {k: float(v) for k, v in c.items()} for m, c in models.items()}
        if not token_ms > 0 or not all(
            math.isfinite(v) and v >= 0 for c in costs.values() for v in c.values()
        ):
            raise ValueError
    except (KeyError, TypeError, ValueError, AttributeError):
        want = "token_ms > 0 and models {MODEL: {wake_secs: S, sleep_secs: S}}"
        raise TraceError(f"{where}: bad replay header, want {want}") from None
    return str(rec.get("trace") or "") or None, token_ms, costs


def _row(rec: Mapping, where: str, model, service: ServiceModel, token_ms):
    """One row, of CSV strings or JSON values, as (is the time absolute?, Arrival)."""

    def num(key: str, whole: bool = False):
        value = rec[key]
        try:
            x = float(value)
            ok = math.isfinite(x) and x >= 0 and not isinstance(value, bool)
        except (TypeError, ValueError):
            ok = False
        if not ok or (whole and x != int(x)):
            kind = "a whole number" if whole else "a number"
            raise TraceError(f"{where}: {key} must be {kind} >= 0, got {value!r}")
        return int(x) if whole else x

    model = rec.get("model", model)
    if not isinstance(model, str) or not model.strip():
        raise TraceError(f"{where}: missing model")
    when = next((k for k in ("at", "timestamp", "TIMESTAMP") if k in rec), None)
    key = next((k for k in ("output_tokens", "tokens", "GeneratedTokens") if k in rec), None)
    context = next((k for k in ("prompt_tokens", "ContextTokens") if k in rec), None)
    if when is None:
        raise TraceError(f"{where}: missing time ('at' or 'timestamp')")
    try:  # "at" is relative; a timestamp, in seconds or ISO-8601, is on an absolute clock
        t = num(when)
    except TraceError:
        if when == "at" or not isinstance(rec[when], str):
            raise
        t = _epoch(rec[when], where)
    tokens = num(key, whole=True) if key else 0
    if token_ms is not None:  # the replay format: tokens stream token_ms apart
        if key is None:
            raise TraceError(f"{where}: missing tokens")
        prefill = num("prefill_ms") / 1000 if "prefill_ms" in rec else 0.0
        secs = prefill + tokens * token_ms / 1000
    elif "service_secs" in rec:
        secs = num("service_secs")
        prefill = num("prefill_secs") if "prefill_secs" in rec else 0.0
    elif key:
        secs, prefill = service.service(num(context) if context else 0, tokens)
    else:
        raise TraceError(f"{where}: missing service_secs or output_tokens")
    priority = num("priority", whole=True) if "priority" in rec else 3
    if priority > 7:
        raise TraceError(f"{where}: priority must be 0..7, got {priority}")
    if not secs > 0 or prefill > secs:
        raise TraceError(f"{where}: need service time > 0 and >= prefill, got {secs}, {prefill}")
    try:
        return when != "at", Arrival(t, model.strip(), secs, tokens, prefill, priority)
    except ValueError:  # beyond what a trace can mean (a time in milliseconds, a typo)
        raise TraceError(f"{where}: time or service time out of range: {t:g}, {secs:g}") from None


def _epoch(text: str, where: str) -> float:
    """Seconds since the Unix epoch for an ISO-8601 time; a time without zone counts as UTC."""
    # datetime takes at most 6 fractional digits and the Azure trace has 7: add them by hand
    text = text.strip()
    match = _FRACTION.search(text)
    rest = text if match is None else text[: match.start()] + text[match.end() :]
    try:
        when = datetime.fromisoformat(rest[:-1] + "+00:00" if rest.endswith("Z") else rest)
    except ValueError:
        raise TraceError(f"{where}: timestamp is neither ISO-8601 nor seconds: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp() + (float("0." + match.group(1)) if match else 0.0)


def ping_pong(seconds=600.0, agents=4, models=("planner", "coder"), seed=7, token_secs=0.02):
    """A Trace of ``agents`` agents, each calling ``models[0]`` briefly (20-60 output tokens)
    then ``models[1]`` at length (100-250), waiting for each answer (tokens * ``token_secs``
    seconds) and thinking 0.3-2.0 s before the next call, like a coding agent on two models.
    Agents start in the first 3 s and begin pairs until ``seconds`` (a pair is finished, so
    the last calls may come later). ``ping_pong(60)`` is make_traces.py's agent-2models."""
    rng = random.Random(seed)
    arrivals = []
    for _ in range(agents):
        t = rng.uniform(0, 3)
        while t < seconds:
            for model, lo, hi in ((models[0], 20, 60), (models[1], 100, 250)):
                tokens = rng.randint(lo, hi)
                arrivals.append(Arrival(t, model, tokens * token_secs, tokens, 0.0))
                t += tokens * token_secs + rng.uniform(0.3, 2.0)  # the answer, then think
    source = f"ping_pong(seconds={seconds:g}, agents={agents}, seed={seed})"
    return Trace("ping-pong", arrivals, tuple(models), source=source)


def zipf_bursty(seconds=600.0, models=8, s=1.1, rate=2.0, seed=11, token_secs=0.02):
    """A Trace of models ``m0``..``m{models-1}`` sharing ``rate`` requests/s on average by
    Zipf's law (``m{i}`` gets a share proportional to 1/(i+1)**s). Each model alternates
    exponential bursts (mean ``ON_MEAN_SECS``, ``ON_RATE_FACTOR`` times its mean rate) and quiet
    spells (``OFF_MEAN_SECS``, ``OFF_RATE_FACTOR`` times it): a two-state Markov-modulated
    Poisson process started in its stationary mix. Bursts are long, so shares and rate over
    600 s depend much on the seed; an hour evens them out. Output tokens are uniform in
    20..400; service is tokens * ``token_secs``. Raises ValueError unless models >= 1, rate > 0.
    """
    if not (models >= 1 and rate > 0):
        raise ValueError(f"need models >= 1 and rate > 0, got {models}, {rate}")
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** s for i in range(models)]
    names = tuple(f"m{i}" for i in range(models))
    arrivals = []
    for name, weight in zip(names, weights, strict=True):
        mean = rate * weight / sum(weights)
        on, t = rng.random() < _ON_SHARE, 0.0
        while t < seconds:
            end = min(seconds, t + rng.expovariate(1 / (ON_MEAN_SECS if on else OFF_MEAN_SECS)))
            level = mean * (ON_RATE_FACTOR if on else OFF_RATE_FACTOR)
            t += rng.expovariate(level)
            while t < end:
                tokens = rng.randint(20, 400)
                arrivals.append(Arrival(t, name, tokens * token_secs, tokens, 0.0))
                t += rng.expovariate(level)
            t, on = end, not on  # Poisson arrivals are memoryless: restart at the switch
    source = f"zipf_bursty(seconds={seconds:g}, models={models}, s={s:g}, rate={rate:g}, "
    return Trace("zipf-bursty", arrivals, names, source=f"{source}seed={seed})")


def azure_dir(traces_dir: str | Path | None = None) -> Path:
    """Where ``azure_two_models`` looks: ``traces_dir`` if given, else
    ``$LLMUX_TRACES/azure-llm-2023``, else ``<repo>/../shared/traces/azure-llm-2023``."""
    if traces_dir is not None:
        return Path(traces_dir)
    if os.environ.get("LLMUX_TRACES"):
        return Path(os.environ["LLMUX_TRACES"]) / "azure-llm-2023"
    return Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "azure-llm-2023"


def azure_two_models(traces_dir=None, *, service=_DEFAULT_SERVICE) -> Trace | None:
    """The Azure 2023 code and conv services as models ``code`` and ``conv`` on their shared
    clock (about an hour, 8,819 + 19,366 requests), or None when
    ``AzureLLMInferenceTrace_{code,conv}.csv`` are not in ``azure_dir(traces_dir)``. Results
    from it must credit ``AZURE_ATTRIBUTION``. Raises TraceError for malformed files."""
    paths = [azure_dir(traces_dir) / f"{_AZURE_PREFIX}{m}.csv" for m in ("code", "conv")]
    if not all(p.is_file() for p in paths):
        return None
    return replace(load_trace(paths, service=service), name="azure-llm-2023")


def write_replay(trace: Trace, path: str | Path, *, token_ms: float, costs=None) -> None:
    """Write ``trace`` in ``benchmarks/replay.py``'s JSON lines: a header ``{"trace",
    "token_ms", "models": {m: {"wake_secs", "sleep_secs"}}, "source"}``, then ``{"at",
    "model", "tokens", "prefill_ms"}`` rows, ``at`` rounded to the millisecond.

    ``tokens`` is the number of chunks ``token_ms`` apart that fill the service time after
    the prefill: the output tokens when token_ms is the trace's own time per token, fewer
    chunks at a sane gap for a compressed trace. ``costs`` (seconds, as in the header; default
    ``trace.costs``) must cover every model: the replay configures models from it. Raises
    ValueError when one is missing or token_ms <= 0.
    """
    costs = trace.costs if costs is None else costs
    missing = [m for m in trace.models if m not in costs]
    if missing or not token_ms > 0:
        raise ValueError(f"need token_ms > 0 and wake/sleep costs for every model: {missing}")
    models = {m: dict(costs[m]) for m in trace.models}
    head = {"trace": trace.name, "token_ms": token_ms, "models": models, "source": trace.source}
    lines = [json.dumps(head)]
    for a in trace.arrivals:
        chunks = round((a.service_secs - a.prefill_secs) * 1000 / token_ms)
        row = {"at": round(a.at, 3), "model": a.model, "tokens": chunks}
        lines.append(json.dumps({**row, "prefill_ms": round(a.prefill_secs * 1000, 3)}))
    Path(path).write_text("\n".join(lines) + "\n")
