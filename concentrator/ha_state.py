"""What the HA supervisor (concentrator/ha.py) knows of its appliance's role: its status
line, `concentrator ha-status` and its metrics (monitoring/ha_metrics.py) read it."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

log = logging.getLogger("ha")


@dataclass
class HaState:
    """What the supervisor knows; the status line, ha-status and the metrics read it."""

    node: str
    priority: int = 0
    role: str = "standby"  # standby | active | fenced | fault
    vrrp: str = "INIT"  # the sync group's last state from keepalived
    held: bool = False  # kept out of VRRP (keepalived FAULT): the peer is active
    transitions: dict[str, int] = field(default_factory=dict)  # role -> times entered
    last_takeover_seconds: float | None = None  # MASTER notified -> relay listening
    relay_pid: int | None = None
    relay_ready: bool = False  # a relay is loaded (standing by, or running)
    bmi_connections: list[str] = field(default_factory=list)  # "ip:port" of the BMI's, while active
    relay_starts: int = 0
    relay_exits: int = 0  # exits while active (crashes), restarted
    fenced: int = 0  # promotions refused because the peer was active
    keepalived_up: bool = False
    since: float = field(default_factory=time.time)

    def enter(self, role: str) -> None:
        if role != self.role:
            self.role = role
            self.since = time.time()
            self.transitions[role] = self.transitions.get(role, 0) + 1
            log.warning("role %s (vrrp %s)", role, self.vrrp)

    def line(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()
