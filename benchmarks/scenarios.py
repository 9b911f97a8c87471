"""The five scenarios of the performance issue, each against the limit (direct) and peers.

Usage::

    with Harness() as h:
        result = non_streaming(h, FULL)

Every scenario alternates the paths (direct, llmux, nginx, LiteLLM) round by
round in one run, so drift on a shared machine hits them all alike, and
reports the median over rounds of each round's percentile.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time
from dataclasses import dataclass, field

import psutil
import requests

from .harness import Harness, Server, litellm_available, wrk
from .sse_client import run_streams
from .stats import median, ms, pct


@dataclass(frozen=True)
class Settings:
    rounds: int = 3
    # 1. non-streaming: an LLM's answer takes this long, so concurrency does not saturate
    service_ms: int = 500
    concurrency: tuple[int, ...] = (32, 128)
    jitters: tuple[float, ...] = (0.0, 0.5)  # every answer alike (lockstep), or ±50 %
    wrk_rounds: int = 2
    wrk_secs: float = 5.0
    throughput_secs: float = 5.0
    # 2. streaming
    streams: tuple[int, ...] = (64, 256)
    burst: int = 64  # streams opened all at once, as a burst of agent calls does
    chunks: int = 100
    gap_ms: float = 20.0
    # 3. scale
    scale_streams: int = 1000
    scale_chunks: int = 20
    scale_gap_ms: float = 250.0
    # 4. switches
    switches: int = 20
    wake_secs: float = 0.2
    sleep_secs: float = 0.1
    # 6. waiting: requests queued through one wake, and the wake's length
    waiters: int = 1000
    wait_window_secs: float = 3.0
    # 7. the unit suite (a path under tests/): its wall time, the engine scenarios' times
    unit_suite: str = "tests/unit"
    # 5. trace replay: seconds of each trace to replay (None: all)
    replay_secs: float | None = None
    peers: bool = True  # nginx
    litellm: bool = True  # and the LiteLLM proxy, when its virtualenv exists


FULL = Settings()
SMOKE = Settings(
    rounds=1, service_ms=100, concurrency=(8,), jitters=(0.5,), wrk_rounds=1, wrk_secs=1.0,
    throughput_secs=1.0, streams=(16,), burst=16, chunks=10, scale_streams=50, scale_chunks=5,
    scale_gap_ms=50.0, switches=4, wake_secs=0.05, sleep_secs=0.02, replay_secs=2.0, litellm=False,
    waiters=50, wait_window_secs=1.0, unit_suite="tests/unit/engine",
)  # fmt: skip


@dataclass
class Check:
    target: str
    measured: str
    ok: bool


@dataclass
class Result:
    name: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    series: dict = field(default_factory=dict)  # for the plots


def paths(h: Harness, settings: Settings, models=("a",)) -> dict[str, Server]:
    """The backend, and every way to reach it: itself, llmux, nginx, LiteLLM."""
    backend = h.backend()
    out = {
        "direct": backend,
        "llmux": h.llmux({m: {"port": backend.port} for m in models}),
        "floor": h.floor(backend.port),
    }
    warm(out["llmux"].port, models[0])
    if settings.peers:
        out["nginx"] = h.nginx(backend.port)
        if settings.litellm and litellm_available():
            out["litellm"] = h.litellm(backend.port, models)
            warm(out["litellm"].port, models[0])
    return out


def warm(port: int, model: str) -> None:
    """One request, so llmux has woken its model before anything is timed."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    r = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
    r.raise_for_status()


def chat_body(**bench) -> dict:
    return {"model": "a", "messages": [{"role": "user", "content": "hi"}], "bench": bench}


# --- 1. non-streaming ---


def non_streaming(h: Harness, settings: Settings, servers: dict[str, Server]) -> Result:
    result = Result(
        "Non-streaming chat completions",
        ["clients", "answers", "path", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
         "req/s", "errors"],
    )  # fmt: skip
    for clients in settings.concurrency:
        for jitter in settings.jitters:
            shape = f"{settings.service_ms} ms ±{jitter:.0%}" if jitter else "all alike"
            per_path: dict[str, list] = {name: [] for name in servers}
            for _ in range(settings.wrk_rounds):
                for name, server in servers.items():
                    body = chat_body(delay_ms=settings.service_ms, jitter=jitter)
                    per_path[name].append(
                        wrk(server.port, connections=clients, seconds=settings.wrk_secs, body=body)
                    )
            base50 = median(r.p50_ms for r in per_path["direct"])
            base99 = median(r.p99_ms for r in per_path["direct"])
            for name, runs in per_path.items():
                p50, p99 = median(r.p50_ms for r in runs), median(r.p99_ms for r in runs)
                result.rows.append(
                    [clients, shape, name, p50, p99, p50 - base50, p99 - base99,
                     median(r.requests_per_sec for r in runs), sum(r.errors for r in runs)]
                )  # fmt: skip
                if name == "llmux":
                    added50, added99 = p50 - base50, p99 - base99
                    clean = sum(r.errors for r in runs) == 0  # fast error answers prove nothing
                    result.checks += [
                        Check(f"{clients} clients, answers {shape}: llmux adds ≤ 1.5 ms at p50",
                              f"{added50:.2f} ms", clean and added50 <= 1.5),
                        Check(f"{clients} clients, answers {shape}: llmux adds ≤ 10 ms at p99",
                              f"{added99:.2f} ms", clean and added99 <= 10),
                    ]  # fmt: skip
                if jitter == settings.jitters[-1]:
                    result.series.setdefault("latency", []).append((clients, name, p50, p99))
                result.series.setdefault("added", {})[(clients, shape, name)] = (
                    p50 - base50,
                    p99 - base99,
                )
    result.notes.append(
        f"The backend answers after {settings.service_ms} ms (every answer alike, or varied by "
        "±50 % as LLM answers are), so the clients do not saturate it; wrk (2 threads) shares "
        "the 2 cores. 'floor' is benchmarks/floor.py, the smallest proxy llmux's runtime shape "
        "allows (gunicorn gevent worker, requests, no logic): llmux cannot add less than it. "
        "With answers all alike, wrk's connections stay in lockstep: a burst of N requests, then "
        "a burst of N answers that a single worker relays one after the other."
    )
    # throughput at saturation: a backend that answers at once, 32 clients
    rps: dict[str, list[float]] = {name: [] for name in servers}
    cpu: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(settings.rounds):
        for name, server in servers.items():
            proc = _cpu_process(server)
            before = _cpu_secs(proc)
            run = wrk(server.port, connections=32, seconds=settings.throughput_secs,
                      body=chat_body(delay_ms=0))  # fmt: skip
            # an answer that is an error, or a dead worker, must not count as fast
            rps[name].append(run.requests_per_sec if not run.errors else 0.0)
            if run.requests and not run.errors:
                cpu[name].append(ms(_cpu_secs(proc) - before) / run.requests)
    result.series["throughput"] = {name: median(v) for name, v in rps.items()}
    result.series["cpu_per_request"] = {name: median(v) for name, v in cpu.items() if v}
    for name in servers:
        result.rows.append(
            [32, "at once", name, "", "", "", "", median(rps[name]),
             f"{median(cpu[name]):.3f} ms CPU/req" if cpu[name] else ""]
        )  # fmt: skip
    per_request = result.series["cpu_per_request"]
    if "floor" in per_request and "llmux" in per_request:
        ratio = _ratio(per_request["llmux"], per_request["floor"])
        result.checks.append(
            Check("CPU per request ≤ 1.0× the floor's", f"{ratio:.2f}×", 0 < ratio <= 1.0)
        )
    if "litellm" in rps:
        ratio = _ratio(median(rps["llmux"]), median(rps["litellm"]))
        result.checks.append(  # NaN (LiteLLM served nothing, or with errors) fails
            Check("llmux throughput ≥ 2× the LiteLLM proxy's", f"{ratio:.1f}×", ratio >= 2)
        )
    return result


def _ratio(a: float, b: float) -> float:
    """a / b, or NaN (which fails every check) unless both are measured and positive."""
    return a / b if a > 0 and b > 0 else math.nan


def _cpu_process(server: Server) -> psutil.Process:
    """The process that does the proxying: llmux's worker, else the server itself."""
    if server.name in ("llmux", "floor"):
        return psutil.Process(server.worker_pid())
    return psutil.Process(server.pid)


def _cpu_secs(proc: psutil.Process) -> float:
    """CPU seconds of ``proc`` and its children; raises ``psutil.NoSuchProcess`` if
    ``proc`` itself is gone (a child may end meanwhile)."""
    t = proc.cpu_times()
    total = t.user + t.system
    for p in proc.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


# --- 2. streaming ---


def streaming(h: Harness, settings: Settings, servers: dict[str, Server]) -> Result:
    result = Result(
        "Streaming",
        ["streams", "path", "ok", "TTFB p50 ms", "added TTFB p50 ms", "added TTFB p99 ms",
         "chunk delay p50 ms", "chunk delay p99 ms", "added p99 ms", "glued",
         "proxy CPU ms/1,000 chunks"],
    )  # fmt: skip
    cases = [(n, 0.25, f"{n}") for n in settings.streams]
    cases.append((settings.burst, 0.0, f"{settings.burst} at once"))
    for streams, ramp_secs, label in cases:
        runs: dict[str, list] = {name: [] for name in servers}
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(settings.rounds):
            for name, server in servers.items():
                proc = _cpu_process(server)
                before = _cpu_secs(proc)
                run = run_streams(server.port, streams, settings.chunks, settings.gap_ms,
                                  deadline_secs=120, ramp_secs=ramp_secs)  # fmt: skip
                runs[name].append(run)
                cpu[name].append(ms(_cpu_secs(proc) - before) / max(run.chunks, 1) * 1000)
        _streaming_rows(result, settings, streams, label, runs, cpu)
    rate = max(settings.streams) * 1000 / settings.gap_ms
    result.notes.append(
        f"Streams of {settings.chunks} chunks {settings.gap_ms:g} ms apart, opened over 0.25 s "
        f"('{settings.burst} at once': all opened together, as a burst of agent calls does); "
        "a chunk's delay is its arrival (raw-socket client) minus the backend's send time carried "
        "in it. 'Added' is the difference to direct at the same percentile. 'Glued' counts chunks "
        "sent ≥ 10 ms after the previous one but read in the same recv(). The last column is the "
        "CPU time of the process in the middle (the backend itself for direct). "
        f"{max(settings.streams)} streams are {rate:,.0f} chunks/s: one worker can carry that "
        "only at under 1,000 / that many ms of CPU per 1,000 chunks."
    )
    return result


def _streaming_rows(result, settings, streams, label, runs, cpu) -> None:
    def summary(rs):
        return (
            median(pct(r.ttfb, 50) for r in rs),
            median(pct(r.ttfb, 99) for r in rs),
            median(pct(r.chunk_latency, 50) for r in rs),
            median(pct(r.chunk_latency, 99) for r in rs),
        )

    base_ttfb, base_ttfb99, _, base99 = summary(runs["direct"])
    burst = label != str(streams)
    for name, rs in runs.items():
        ttfb, ttfb99, lat50, lat99 = summary(rs)
        ok, total = sum(r.completed for r in rs), streams * len(rs)
        glued = sum(r.glued for r in rs)
        result.rows.append(
            [label, name, f"{ok}/{total}", ms(ttfb), ms(ttfb - base_ttfb), ms(ttfb99 - base_ttfb99),
             ms(lat50), ms(lat99), ms(lat99 - base99), f"{glued}/{sum(r.spaced for r in rs)}",
             median(cpu[name])]
        )  # fmt: skip
        if burst:
            if name == "llmux":
                result.checks.append(Check(f"{label}: every stream completes", f"{ok}/{total}",
                                           ok == total))  # fmt: skip
            continue
        result.series.setdefault("cpu_per_1000_chunks", {})[(streams, name)] = median(cpu[name])
        result.series.setdefault("added_p99", {})[(streams, name)] = ms(lat99 - base99)
        result.series.setdefault("p99", {})[(streams, name)] = ms(lat99)
        if streams == max(settings.streams):
            result.series.setdefault("chunk_latency", {})[name] = [
                x for r in rs for x in r.chunk_latency
            ]
        if name == "llmux":
            added99, added_ttfb = ms(lat99 - base99), ms(ttfb - base_ttfb)
            result.checks += [
                Check(f"{streams} streams: every stream completes", f"{ok}/{total}", ok == total),
                Check(f"{streams} streams: added delay per chunk ≤ 2 ms at p99",
                      f"{added99:.2f} ms", added99 <= 2),
                Check(f"{streams} streams: added time to first byte ≤ 3 ms at p50",
                      f"{added_ttfb:.2f} ms", added_ttfb <= 3),
                Check(f"{streams} streams: no chunk sent ≥ 10 ms after the previous one "
                      "arrives glued to it", f"{glued} glued", glued == 0),
            ]  # fmt: skip
    if burst:
        return
    # the data-plane targets, as ratios to the peers in this same run
    added = result.series["added_p99"]
    llmux_cpu = result.series["cpu_per_1000_chunks"][(streams, "llmux")]
    if (streams, "floor") in added:
        floor_cpu = result.series["cpu_per_1000_chunks"][(streams, "floor")]
        ratio = _ratio(llmux_cpu, floor_cpu)
        result.checks.append(Check(f"{streams} streams: CPU per 1,000 chunks ≤ 0.5× the floor's",
                                   f"{ratio:.2f}×", 0 < ratio <= 0.5))  # fmt: skip
    if (streams, "nginx") in added:
        limit = 2 if streams <= 64 else 3
        mine, nginx = added[(streams, "llmux")], added[(streams, "nginx")]
        if mine > 0 and nginx > 0.1:
            ratio, basis = mine / nginx, ""
        else:  # the direct run's own p99 was noisier than what a proxy adds: compare p99s
            p99 = result.series["p99"]
            ratio = p99[(streams, "llmux")] / max(p99[(streams, "nginx")], 0.01)
            basis = " (of p99 per chunk: the direct p99 was noisier than the added delay)"
        result.checks.append(Check(f"{streams} streams: added p99 per chunk ≤ {limit}× nginx's",
                                   f"{ratio:.1f}×{basis}", ratio <= limit))  # fmt: skip


# --- 3. scale ---


def scale(h: Harness, settings: Settings, servers: dict[str, Server]) -> Result:
    result = Result(
        "Scale: concurrent open streams through one worker",
        ["path", "streams ok", "RSS before MiB", "peak RSS MiB", "CPU ms per 1,000 chunks",
         "seconds"],
    )  # fmt: skip
    for name in [n for n in ("direct", "llmux", "floor") if n in servers]:
        server = servers[name]
        proc = _cpu_process(server)
        idle_mib = proc.memory_info().rss / 2**20
        sampler = _RssSampler(proc)
        before = _cpu_secs(proc)
        with sampler:
            run = run_streams(server.port, settings.scale_streams, settings.scale_chunks,
                              settings.scale_gap_ms, deadline_secs=120, ramp_secs=1.0)  # fmt: skip
        cpu_per_k = ms(_cpu_secs(proc) - before) / max(run.chunks, 1) * 1000
        result.rows.append(
            [name, f"{run.completed}/{settings.scale_streams}", idle_mib, sampler.peak_mib,
             cpu_per_k, run.seconds]
        )  # fmt: skip
        if name == "llmux":
            result.checks += [
                Check(f"all {settings.scale_streams} streams complete",
                      f"{run.completed}/{settings.scale_streams}",
                      run.completed == settings.scale_streams),
                Check("llmux RSS ≤ 100 MiB", f"{sampler.peak_mib:.0f} MiB",
                      0 < sampler.peak_mib <= 100),  # 0: the worker was never sampled
                Check("CPU time per 1,000 chunks (measured and reported)", f"{cpu_per_k:.0f} ms",
                      cpu_per_k > 0),
            ]  # fmt: skip
    result.notes.append(
        f"{settings.scale_streams} streams of {settings.scale_chunks} chunks "
        f"{settings.scale_gap_ms:g} ms apart, opened over 1 s; RSS is the worker's, sampled every "
        "50 ms (before: just before the streams open, after the scenarios before it); "
        "CPU is the backend's for direct and llmux's worker for llmux."
    )
    return result


class _RssSampler:
    def __init__(self, proc: psutil.Process):
        self.proc = proc
        self.peak_mib = 0.0
        self._stop = False

    def __enter__(self):
        import threading

        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop:
            try:
                rss = self.proc.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                return
            self.peak_mib = max(self.peak_mib, rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join(2)


# --- 4. switch overhead ---


def switch_overhead(h: Harness, settings: Settings) -> Result:
    result = Result(
        "Switch overhead",
        ["", "p50 ms", "p90 ms", "max ms"],
    )
    hooks = {
        "wake": f"sleep {settings.wake_secs}",
        "sleep": f"sleep {settings.sleep_secs}",
        "alive": "true",
    }
    models = {m: {"port": h.backend().port, **hooks} for m in ("a", "b")}
    llmux = h.llmux(models, name="llmux-switch")
    session = requests.Session()
    try:
        for i in range(settings.switches + 1):
            body = {"model": "ab"[i % 2], "messages": []}
            r = session.post(f"http://127.0.0.1:{llmux.port}/v1/chat/completions", json=body,
                             timeout=60)  # fmt: skip
            r.raise_for_status()
    finally:
        session.close()
    sleeps = {"wake": settings.wake_secs, "sleep": settings.sleep_secs}
    plain = {kind: _plain_run_secs(snippet) for kind, snippet in hooks.items()}
    switches = _switches_from_log(llmux.log, sleeps, plain)[1:]  # the first is a cold start
    own = [s["own"] for s in switches]
    spawn = [s["spawn"] for s in switches]
    start_up = [s["start_up"] for s in switches]
    wall = [s["wall"] for s in switches]
    for label, values in (
        ("switch wall time", wall),
        ("llmux's own time (wall minus hook run times)", own),
        ("hook start-up and exit (hook run times minus their sleeps)", spawn),
        ("llmux's hook start-up (hook run times minus the same snippets run by plain "
         "subprocess.run)", start_up),
    ):  # fmt: skip
        result.rows.append([label, ms(pct(values, 50)), ms(pct(values, 90)), ms(max(values))])
    result.checks += [
        Check("llmux's own time per switch ≤ 20 ms at p50", f"{ms(pct(own, 50)):.1f} ms",
              ms(pct(own, 50)) <= 20),
        Check("llmux's hook start-up per switch ≤ 10 ms at p50", f"{ms(pct(start_up, 50)):.1f} ms",
              ms(pct(start_up, 50)) <= 10),
    ]  # fmt: skip
    result.notes.append(
        f"{len(switches)} switches between two models whose wake hook is `sleep "
        f"{settings.wake_secs:g}`, sleep hook `sleep {settings.sleep_secs:g}` and alive hook "
        "`true`; durations from llmux's own log events (switch and hook durations). A hook's "
        "run time includes its own commands (`/bin/sh`, `/bin/sleep`: about "
        f"{ms(plain['wake'] - settings.wake_secs):.1f} ms beyond the sleep here, run by plain "
        "`subprocess.run` from the benchmark); the last row takes those out, leaving what llmux "
        "adds to start, watch and reap each hook."
    )
    result.series["switch"] = {"own": own, "spawn": spawn}
    return result


def waiting(h: Harness, settings: Settings) -> Result:
    """CPU that llmux's worker spends while requests wait for one wake, nothing else running.

    ``settings.waiters`` requests for a model whose wake hook holds until a gate
    file appears; once all are queued, the worker's own CPU time (not its
    hooks') is read over ``wait_window_secs``; then the gate opens and every
    request must be answered.
    """
    result = Result(
        "Waiting: requests queued through one wake",
        ["waiters", "window s", "worker CPU s", "CPU ms per waiter-second", "answered"],
    )
    gate = h.dir / f"gate-{time.monotonic_ns()}"
    hold = f"i=0; while [ ! -f {gate} ] && [ $i -lt 1200 ]; do i=$((i+1)); sleep 0.1; done"
    models = {"a": {"port": h.backend().port}, "b": {"port": h.backend().port, "wake": hold}}
    llmux = h.llmux(models, name="llmux-waiting")
    url = f"http://127.0.0.1:{llmux.port}"
    requests.post(url + "/v1/chat/completions", json=chat_body(), timeout=30)
    worker = psutil.Process(llmux.worker_pid())
    body = json.dumps({"model": "b", "messages": []}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    socks = []
    try:
        for _ in range(settings.waiters):
            sock = socket.create_connection(("127.0.0.1", llmux.port), timeout=60)
            sock.sendall(request)
            socks.append(sock)
        deadline = time.monotonic() + 60
        while _queued(url, "b") < settings.waiters:
            assert time.monotonic() < deadline, "the requests never all queued"
            time.sleep(0.2)
        before = _own_cpu(worker)
        time.sleep(settings.wait_window_secs)  # the measurement window, not a synchronisation
        cpu = _own_cpu(worker) - before
        gate.touch()
        answered = sum(1 for sock in socks if _status_of(sock) == 200)
    finally:
        gate.touch()
        for sock in socks:
            sock.close()
    per = cpu * 1000 / (settings.waiters * settings.wait_window_secs)
    result.rows.append([settings.waiters, settings.wait_window_secs, cpu, per, answered])
    result.checks += [
        Check(f"all {settings.waiters} waiting requests answered", f"{answered}",
              answered == settings.waiters),
        Check(f"worker CPU while {settings.waiters} requests wait "
              f"{settings.wait_window_secs:g} s ≤ 0.3 s", f"{cpu:.2f} s", cpu <= 0.3),
    ]  # fmt: skip
    result.notes.append(
        "All requests are queued for `b` while its wake hook waits for a gate file; the "
        "worker's own CPU time (user + system, hooks excluded) over the window is what "
        "waiting costs: client probes, condition wake-ups, timers."
    )
    return result


def _own_cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _queued(url: str, model: str) -> int:
    return requests.get(url + "/llmux/status", timeout=10).json()["models"][model]["queued"]


def _status_of(sock: socket.socket) -> int | None:
    """The status code of the response on ``sock`` (its first line), or None."""
    try:
        first = sock.makefile("rb").readline(256)
        return int(first.split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _switches_from_log(path, hook_sleeps: dict[str, float], plain: dict[str, float]) -> list[dict]:
    """Each switch's wall time and its hooks' run times, from llmux's JSON log.

    ``spawn`` is what the hooks took beyond the ``sleep`` each one runs;
    ``start_up`` what they took beyond ``plain[kind]``, the same snippet's run
    time outside llmux.
    """
    switches, hooks = [], []
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        event = record.get("event")
        if event == "switch_started":
            hooks = []
        elif event == "hook_completed":
            hooks.append((record["hook"], record["duration_secs"]))
        elif event == "model_activated" and hooks:  # a switch with no hook ran proves nothing
            wall = record["duration_secs"]
            ran = sum(d for _, d in hooks)
            known = sum(hook_sleeps.get(kind, 0.0) for kind, _ in hooks)
            outside = sum(plain.get(kind, 0.0) for kind, _ in hooks)
            switches.append(
                {"wall": wall, "own": wall - ran, "spawn": ran - known, "start_up": ran - outside}
            )
    return switches


def _plain_run_secs(snippet: str, runs: int = 15) -> float:
    """The median seconds ``/bin/sh -c snippet`` takes through plain ``subprocess.run``."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", snippet], check=True)
        times.append(time.perf_counter() - started)
    return median(times)
