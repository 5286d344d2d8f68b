"""What every benchmark shares: the one percentile (medians included) and where results go."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0..100) of `values`: the sample at rank
    round(q / 100 * (n - 1)) of the sorted values, so every figure reported is a sample
    that was measured (the median of an even count is the upper middle one); NaN when empty."""
    ordered = sorted(values)  # linear on values already sorted
    if not ordered:
        return float("nan")
    return float(ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))])


def result_path(name: str, under: Path = RESULTS) -> Path:
    """Where a run records its figures by default: bench/results/YYYY-MM-DD-HHMM-NAME.json
    (UTC), so that a new run never overwrites a recorded one and the write-ups cite the
    dated file they quote."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    under.mkdir(parents=True, exist_ok=True)
    return under / f"{stamp}-{name}.json"
