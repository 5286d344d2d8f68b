"""What the HA supervisor knows of its appliance's role, and what it reads of the peer's.

`HaState` is the status line (`ha.status_port`, `--state`), what `concentrator ha-status`
prints and what the metrics (monitoring/ha_metrics.py) export. `PeerStatus` is the part
of the peer's line that the policy (policy.py) decides on.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("ha")


class Role(enum.Enum):
    """This appliance's role (docs/ha.md)."""

    STANDBY = "standby"  # a ready backup (VRRP backup, or held out of VRRP by the peer)
    ACTIVE = "active"  # its relay runs
    FENCED = "fenced"  # VRRP said master while the peer's relay was active: no relay
    FAULT = "fault"  # keepalived in FAULT on its own (an interface down)


class Vrrp(enum.Enum):
    """The sync group's state as keepalived reports it on the FIFO."""

    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"
    STOP = "STOP"

    @classmethod
    def parse(cls, word: str) -> Vrrp | None:
        try:
            return cls(word)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What the peer's status line says that matters here. `DOWN` is a refused
    connection: its host is up and its supervisor is not, so no relay of it can run."""

    role: Role | None  # None: down, or a role this version does not know
    priority: int = 255  # unknown priority never lets this appliance preempt
    bmi_connections: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.role is Role.ACTIVE

    @classmethod
    def parse(cls, line: dict[str, Any]) -> PeerStatus | None:
        """The peer's status from its JSON line; None if the line is not one."""
        role, priority, bmi = line.get("role"), line.get("priority", 255), line.get("bmi_connections", [])
        if not isinstance(role, str) or not isinstance(priority, int) or not isinstance(bmi, list):
            return None
        try:
            known: Role | None = Role(role)
        except ValueError:
            known = None
        return cls(known, priority, tuple(str(c) for c in bmi))


DOWN = PeerStatus(None)


@dataclass
class HaState:
    """What the supervisor knows; the status line, ha-status and the metrics read it."""

    node: str
    priority: int = 0
    role: Role = Role.STANDBY
    vrrp: Vrrp = Vrrp.INIT  # the sync group's last state from keepalived
    held: bool = False  # kept out of VRRP (keepalived FAULT): the peer is active
    transitions: dict[str, int] = field(default_factory=dict)  # role's value -> times entered
    last_takeover_seconds: float | None = None  # MASTER notified -> relay listening
    relay_pid: int | None = None
    relay_ready: bool = False  # a relay is loaded (standing by, or running)
    bmi_connections: list[str] = field(default_factory=list)  # "ip:port" of the BMI's, while active
    relay_starts: int = 0
    relay_exits: int = 0  # exits while active (crashes), restarted
    fenced: int = 0  # promotions refused because the peer was active
    keepalived_up: bool = False
    since: float = field(default_factory=time.time)

    def enter(self, role: Role) -> None:
        if role is not self.role:
            self.role = role
            self.since = time.time()
            self.transitions[role.value] = self.transitions.get(role.value, 0) + 1
            log.warning("role %s (vrrp %s)", role.value, self.vrrp.value)

    def line(self) -> bytes:
        fields = asdict(self) | {"role": self.role.value, "vrrp": self.vrrp.value}
        return (json.dumps(fields, sort_keys=True) + "\n").encode()
