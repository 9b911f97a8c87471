"""Which models may be awake together, and which to put to sleep to make room.

Usage::

    budget = Budget.single(["llama", "qwen"])        # no ``memory`` block: one model awake
    budget = Budget(80 * GiB, 1 * GiB, {"chat": ModelMemory(40 * GiB), ...})
    room = plan(budget, "coder", up=["chat", "embed"], busy={"chat"},
                size=budget.declared, order=lambda m: scores[m], weight=scores.get)
    room.victims, room.fits                          # ("embed",), True

Pure functions, and :class:`MeasuredSizes` (per-model state); the switcher calls them
under its lock. The fit check (docs/residency.md;
a declared footprint per model and a budget, as llama-swap#1004 and llama.cpp PR #21231
ask) is::

    sum(size(m) for m awake after the wake) + sum(asleep(m) for every other model)
        + headroom <= budget

A model being woken holds its ``memory`` (its asleep share included); a model put
to sleep frees ``memory - memory_asleep``. ``exclusive_with`` pairs are never
awake together, whatever the numbers say, and pinned models are never chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "Budget",
    "MeasuredSizes",
    "ModelMemory",
    "Room",
    "eviction_score",
    "looks_like_oom",
    "plan",
]

# What a failed wake hook's output (the tail of stderr, then stdout) must contain, in any
# case, to be taken for an out-of-memory: PyTorch's and CUDA's messages, vLLM's KV-cache
# profiling failure, llama.cpp's "... failed: out of memory".
OOM_PATTERNS = (
    "out of memory",
    "outofmemoryerror",
    "no available memory for the cache blocks",
    "cudaerrormemoryallocation",
)
OVER_DECLARED = 1.10  # a model measured past its declared size by more is reported
SLOW_WAKE_SECS = 12.0  # eviction_score: wakes much longer than this are kept through quiet spells
EXACT_MAX = 8  # plan(weight=...): the cheapest set among at most this many candidates (255 sets)


@dataclass(frozen=True)
class ModelMemory:
    """One model's memory, in bytes: ``awake`` it holds awake, ``asleep`` it still
    holds asleep (a vLLM server at sleep level 1 keeps its CUDA context); ``pin``:
    never put to sleep to make room; ``exclusive_with``: models never awake with it."""

    awake: int
    asleep: int = 0
    pin: bool = False
    exclusive_with: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Budget:
    """What the models may use together (bytes), ``headroom`` kept free, and each
    model's :class:`ModelMemory`. ``eviction``: ``"cost_aware"`` (:func:`eviction_score`)
    or ``"lru"``."""

    budget: int
    headroom: int
    models: Mapping[str, ModelMemory]
    eviction: str = "cost_aware"
    single: bool = field(default=False, compare=False)

    @classmethod
    def one_at_a_time(cls, names: Iterable[str]) -> Budget:
        """The budget of a config with no ``memory`` block: every model takes all of
        it, so exactly one is awake at a time (SPEC §5)."""
        return cls(1, 0, {n: ModelMemory(1) for n in names}, single=True)

    def declared(self, model: str) -> int:
        """The bytes ``model`` holds awake, as declared (unknown models: 0; every
        model 1 of the 1 of :meth:`one_at_a_time`, models a reload added too)."""
        if self.single:
            return 1
        spec = self.models.get(model)
        return spec.awake if spec is not None else 0

    def asleep(self, model: str) -> int:
        spec = self.models.get(model)
        return spec.asleep if spec is not None else 0

    def pinned(self, model: str) -> bool:
        spec = self.models.get(model)
        return spec is not None and spec.pin

    def held(self, awake) -> int:
        """Bytes held with ``awake`` awake, by declared sizes: theirs, and every other
        model's asleep share (headroom not included)."""
        awake = list(awake)
        return sum(self.declared(m) for m in awake) + sum(
            self.asleep(m) for m in self.models if m not in awake
        )

    def fits(self, models) -> bool:
        """Whether ``models`` may be awake together by their declared sizes: within the
        budget less headroom (every other model's asleep share held), no exclusive pair."""
        models = list(models)
        if self.single:
            return len(models) <= 1
        clash = any(self.exclusive(a, b) for a in models for b in models if a < b)
        return self.held(models) + self.headroom <= self.budget and not clash

    def exclusive(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` may never be awake together (either names the other)."""
        sa, sb = self.models.get(a), self.models.get(b)
        return (sa is not None and b in sa.exclusive_with) or (
            sb is not None and a in sb.exclusive_with
        )


@dataclass(frozen=True)
class Room:
    """The answer of :func:`plan`: the models to put to sleep, in the order chosen,
    and whether ``target`` then fits (False: even every candidate would not do;
    ``victims`` then lists them all). ``short``: bytes still missing (0 if it fits)."""

    victims: tuple[str, ...]
    fits: bool
    short: int = 0


def plan(
    budget: Budget,
    target: str,
    up: Collection[str],
    *,
    busy: Collection[str] = (),
    size: Callable[[str], int] | None = None,
    order: Callable[[str], object] | None = None,
    weight: Callable[[str], float] | None = None,
) -> Room:
    """The models of ``up`` (awake or being drained) to put to sleep so that ``target``
    fits, or ``()`` when it fits beside them.

    Models exclusive with ``target`` are always chosen. Beyond them the candidates
    are the unpinned models of ``up``, idle ones (not in ``busy``) first, each group
    in ascending ``order`` (the eviction score; default: name); chosen greedily
    until the target fits, then any chosen one that turns out unneeded is kept
    awake again (last chosen first). With ``weight`` (what putting a model to sleep
    is expected to cost, >= 0: :func:`eviction_score`'s waking seconds per second),
    the set is chosen exactly instead: of the sets that make room, one with the
    fewest busy models, then the smallest sum of weights (up to :data:`EXACT_MAX`
    candidates; greedily beyond). ``size(m)``: the bytes m holds
    awake (default the declared ``memory``; the switcher passes the larger of
    declared and measured).
    """
    size = size or budget.declared
    order = order or (lambda m: m)
    up = [m for m in up if m != target]
    forced = [m for m in up if budget.exclusive(m, target)]
    freed = {m: max(size(m) - budget.asleep(m), 0) for m in up}
    held = sum(size(m) for m in up)
    held += sum(budget.asleep(m) for m in budget.models if m not in up and m != target)
    free = budget.budget - budget.headroom - held - size(target)
    if any(budget.pinned(m) for m in forced):
        return Room(tuple(forced), False, max(-free, 0))
    free += sum(freed[m] for m in forced)
    candidates = sorted(
        (m for m in up if m not in forced and not budget.pinned(m)),
        key=lambda m: (m in busy, order(m)),
    )
    if weight is not None and free < 0 and len(candidates) <= EXACT_MAX:
        cheapest = _cheapest(candidates, freed, -free, busy, weight)
        if cheapest is not None:
            return Room(tuple(forced) + cheapest, True)
    chosen: list[str] = []
    for m in candidates:
        if free >= 0:
            break
        chosen.append(m)
        free += freed[m]
    if free < 0:
        return Room(tuple(forced + chosen), False, -free)
    for m in reversed(chosen[:-1]):  # the greedy order may have taken more than needed
        if free - freed[m] >= 0:
            chosen.remove(m)
            free -= freed[m]
    return Room(tuple(forced + chosen), True)


def _cheapest(
    candidates: list[str],
    freed: Mapping[str, int],
    need: int,
    busy: Collection[str],
    weight: Callable[[str], float],
) -> tuple[str, ...] | None:
    """Of the subsets of ``candidates`` freeing at least ``need`` bytes, the one with the
    fewest busy models, then the smallest sum of ``weight``, then the fewest models
    (earliest in ``candidates`` on a tie), in ``candidates``' order; None if none does."""
    weights = [weight(m) for m in candidates]
    best, best_key = None, None
    for mask in range(1, 1 << len(candidates)):
        picked = [i for i in range(len(candidates)) if mask >> i & 1]
        if sum(freed[candidates[i]] for i in picked) < need:
            continue
        key = (
            sum(candidates[i] in busy for i in picked),
            sum(weights[i] for i in picked),
            len(picked),
            picked,
        )
        if best_key is None or key < best_key:
            best, best_key = picked, key
    return None if best is None else tuple(candidates[i] for i in best)


def eviction_score(cost: float, idle: float) -> float:
    """What putting a model to sleep is expected to cost, in waking seconds per second:
    ``cost / idle + (cost / SLOW_WAKE_SECS) ** 2``, with ``cost`` the seconds its wake
    takes (measured) and ``idle`` the seconds since its last request ended (or it
    woke). The lowest goes first.

    The first term is the profit of LNC-R (Scheuermann, Shim and Vingralek, "A case
    for delay-conscious caching of Web documents", WWW6 / Computer Networks 29, 1997;
    and WATCHMAN, VLDB 1996), rate x cost / size, with the rate estimated from the
    last reference alone (their K = 1: ``1 / idle``, LRU's guess that a model idle for
    t seconds is next asked for in about t seconds) and no size: a model's bytes only
    matter for whether the target fits, which :func:`plan` settles by choosing the
    cheapest set. Among models that wake in a few seconds it decides as LRU does unless
    their wake costs differ by a larger factor than their idle times. The second term,
    a floor rate of ``cost / SLOW_WAKE_SECS**2`` that idle time does not wear down, is
    empirical: it keeps a model whose wake is long awake through quiet spells, as
    GreedyDual's clock does (Cao and Irani, "Cost-aware WWW proxy caching algorithms",
    USITS 1997), and stays below the first term while ``idle < SLOW_WAKE_SECS**2 /
    cost`` (48 s for a 3 s wake, 2.4 s for a 60 s one). In ``llmux simulate``
    (``benchmarks/residency.py``; docs/residency.md) the floor took bursty four-model
    Zipf traces with room for three from 14-22 % less waking than LRU (first term
    alone) to 22-29 % less, while the newcomer's three models waking in 1-3 s
    (``poisson-3models``) keep LRU's decisions; GreedyDual-Size-Frequency, the rule
    before, spent up to 2.3x LRU's waking time there, putting the small, cheap model to
    sleep (per byte) and weighing recency by its eviction clock."""
    return cost / max(idle, 1e-3) + (cost / SLOW_WAKE_SECS) ** 2


def looks_like_oom(text: str) -> bool:
    """Whether a failed wake's description reads as an out-of-memory (:data:`OOM_PATTERNS`)."""
    lowered = text.lower()
    return any(pattern in lowered for pattern in OOM_PATTERNS)


class MeasuredSizes:
    """Per model, what its last ``keep`` wakes were measured to take (bytes: the device's
    use after the wake minus before, plus what it held asleep), and their 95th percentile
    (nearest rank), the size fitting uses when above the declared one."""

    def __init__(self, keep: int = 20):
        self.keep = keep
        self._samples: dict[str, list[int]] = {}
        self._p95: dict[str, int] = {}

    def observe(self, model: str, nbytes: int) -> int:
        samples = self._samples.setdefault(model, [])
        samples.append(nbytes)
        del samples[: -self.keep]
        ranked = sorted(samples)
        self._p95[model] = ranked[max(math.ceil(0.95 * len(ranked)) - 1, 0)]
        return self._p95[model]

    def get(self, model: str) -> int | None:
        return self._p95.get(model)

    def ratio(self, declared: Callable[[str], int]) -> float:
        """The largest measured/declared ratio over the models measured, at least 1."""
        ratios = [size / declared(m) for m, size in self._p95.items() if declared(m) > 0]
        return max([1.0, *ratios])

    def count(self, model: str) -> int:
        return len(self._samples.get(model, ()))

    def forget(self, model: str) -> None:
        self._samples.pop(model, None)
        self._p95.pop(model, None)


def never_fits(budget: Budget) -> dict[str, str]:
    """Model -> why it can never be woken under ``budget`` with declared sizes (with
    every pinned model awake and every other model's asleep share held), for config
    validation; empty when every model can."""
    problems = {}
    limit = budget.budget - budget.headroom
    for name in budget.models:
        pinned = [m for m in budget.models if m != name and budget.pinned(m)]
        clash = [m for m in pinned if budget.exclusive(m, name)]
        if clash:
            problems[name] = f"is exclusive_with pinned model(s) {', '.join(clash)}"
            continue
        need = budget.held([name, *pinned])
        others = [m for m in budget.models if m != name and m not in pinned]
        holding = [m for m in others if budget.asleep(m)]
        if need > limit:
            besides = [
                f"pinned {', '.join(pinned)} awake" if pinned else "",
                f"memory_asleep of {', '.join(holding)}" if holding else "",
            ]
            with_ = " and ".join(b for b in besides if b)
            problems[name] = (
                f"needs {format_bytes(need)}"
                + (f" with {with_}" if with_ else "")
                + f", above the budget less headroom ({format_bytes(limit)})"
            )
    return problems


UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(value: object) -> int:
    """Bytes from a size: an integer (bytes) or a string such as ``"80GiB"``,
    ``"1.5 GB"``, ``"512MiB"`` (IEC units are powers of 1024, SI ones of 1000, as
    IEC 80000-13 defines them; case-insensitive). ValueError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)  # YAML reads 10737418240.0 as a float
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        number = text.rstrip("kmgtib")
        unit = text[len(number) :]
        try:
            amount = float(number)
        except ValueError:
            amount = math.nan
        if unit in UNITS and math.isfinite(amount) and amount >= 0:
            return int(amount * UNITS[unit])
    raise ValueError(f"expected a size such as 40GiB, 512MiB or a number of bytes, got {value!r}")


def format_bytes(count: float) -> str:
    """``count`` bytes in the largest IEC unit that leaves at least 1 (``"40.0GiB"``)."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(count) >= scale:
            return f"{count / scale:.1f}{unit}"
    return f"{int(count)}B"


def order_key(
    eviction: str,
    last_used: Mapping[str, float],
    cost: Callable[[str], float],
    now: float,
) -> Callable[[str], tuple[float, float]]:
    """The ``order`` for :func:`plan`: :func:`eviction_score` then least recent use, or
    LRU alone. ``cost(m)``: the seconds m's wake takes; ``now`` and ``last_used`` (when
    each model's last request ended, or it woke) in seconds of the switcher's clock.

    A model serving requests now still counts the time since its last request ended,
    as LRU does: :func:`plan` takes busy models only when no idle ones make room, and
    among busy ones, scoring them as just used (idle 0) put the cheapest to sleep
    again and again (1.8x LRU's waking time on ``poisson-3models`` in
    ``benchmarks/residency.py``)."""
    if eviction == "lru":
        return lambda m: (last_used.get(m, 0.0), 0.0)
    return lambda m: (
        eviction_score(cost(m), now - last_used.get(m, 0.0)),
        last_used.get(m, 0.0),
    )


def weight_key(
    eviction: str,
    last_used: Mapping[str, float],
    cost: Callable[[str], float],
    now: float,
) -> Callable[[str], float] | None:
    """The ``weight`` for :func:`plan`: :func:`eviction_score` (waking seconds per second);
    None under LRU (greedy). Arguments as for :func:`order_key`."""
    if eviction == "lru":
        return None
    order = order_key(eviction, last_used, cost, now)
    return lambda m: order(m)[0]
