"""Percentiles and medians of samples, the only statistics the benchmarks report."""

from __future__ import annotations

import math
import statistics


def pct(values, q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; NaN for no samples."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def ms(seconds: float) -> float:
    return seconds * 1000.0
