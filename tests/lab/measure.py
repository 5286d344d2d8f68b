"""What a fault did to a numbered stream, from the receiver's arrival log.

Outage seen by the receiver: the longest silence that contains or follows the
fault instant, i.e. max(arrival[i+1] - arrival[i]) over consecutive arrivals with
arrival[i+1] > fault_at (last record before, first after). Loss and duplicates come
from the sequence numbers; a new connection id at the receiver means the session
was not kept.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FaultResult:
    outage: float  # seconds; inf if nothing arrived after the fault
    lost: int  # sequence numbers never received (inside the received range)
    duplicated: int  # records received more than once
    connections: int  # distinct connections that carried the stream
    received: int

    @property
    def resumed(self) -> bool:
        return math.isfinite(self.outage)


def analyze(
    rows: Iterable[tuple[int, int, int, float]],
    fault_at: float,
    stream: int | None = None,
    since: float | None = None,
    until: float | None = None,
) -> FaultResult:
    """rows: (conn, stream, seq, arrival): only rows of `stream` (if given) arriving in
    [since, until]. The window must hold this fault only (not a later fail-back)."""
    arrivals: list[float] = []
    seqs: list[int] = []
    conns: set[int] = set()
    for conn, st, seq, t in rows:
        if stream is not None and st != stream:
            continue
        if (since is not None and t < since) or (until is not None and t > until):
            continue
        arrivals.append(t)
        seqs.append(seq)
        conns.add(conn)
    arrivals.sort()
    outage = math.inf
    before = [t for t in arrivals if t <= fault_at]
    after = [t for t in arrivals if t > fault_at]
    if after:
        outage = after[0] - (before[-1] if before else fault_at)
        for a, b in zip(after, after[1:], strict=False):
            outage = max(outage, b - a)
    unique = set(seqs)
    lost = (max(unique) - min(unique) + 1 - len(unique)) if unique else 0
    return FaultResult(outage, lost, len(seqs) - len(unique), len(conns), len(seqs))


def summary(values: Sequence[float]) -> tuple[float, float]:
    """(median, max)."""
    return statistics.median(values), max(values)
