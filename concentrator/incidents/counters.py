"""What the incident process counts as it runs (read by monitoring.incident_metrics)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Counters:
    asdus: int = 0
    dropped: int = 0
    send_failures: int = 0
