"""What the register's writer does: opens, restores and closes incidents, plans
maintenance, writes every notice to the spool, keeps each notice's sending state and
when to try it again. Used by the incident process (detected incidents, requests from
the command line) and by the command line itself when no incident process holds the
register (store.WriterLock)."""

from __future__ import annotations

import os

from .config import IncidentsConfig
from .detector import Kind, Opened, Restored
from .notices import message, notice_name, write_spool
from .store import Notice, Register

PLAN_AHEAD = 10 * 86_400.0  # s: annex A40 5.7.2, at least 10 calendar days ahead
CONFIG_CHANGE_LIMIT = 1 << 20  # bytes of an attached updated UPDC configuration


class Refused(Exception):
    """A request the register refuses (the message says why)."""


class Registrar:
    def __init__(self, config: IncidentsConfig, register: Register) -> None:
        self.config = config
        self.register = register
        self.open = register.open_detected()  # (site, kind) -> id

    # ------------------------------------------------------------------ detected
    def opened(self, action: Opened, now: float) -> int:
        settings = self.config.site(action.site)
        updc = settings.updc if settings is not None else action.site
        incident_id = self.register.open_incident(action.site, updc, action.kind, action.start, action.detected,
                                                  action.evidence)  # fmt: skip
        self.open[(action.site, action.kind)] = incident_id
        self.notice(incident_id, "opening", now)
        return incident_id

    def restored(self, action: Restored, now: float) -> int | None:
        incident_id = self.open.pop((action.site, action.kind), None)
        if incident_id is None:
            return None
        self.register.restore(incident_id, action.end, action.proposed_it, action.proposed_en)
        if self.config.automatic_closing:
            self.close(incident_id, None, now)
        return incident_id

    # ------------------------------------------------------------------ by people
    def close(self, incident_id: int, cause: str | None, now: float) -> None:
        """The closing notice with the type and cause (`cause`, else the proposed one)."""
        incident = self.register.get(incident_id)
        if incident is None:
            raise Refused(f"no incident {incident_id}")
        if incident.kind is Kind.MAINTENANCE:
            raise Refused(f"incident {incident_id} is a planned maintenance: it has no closing notice")
        if incident.end is None:
            raise Refused(f"incident {incident_id} is still open: the UPDC has not been seen back yet "
                          f"(site {incident.site}, {incident.kind})")  # fmt: skip
        if incident.closed is not None:
            raise Refused(f"incident {incident_id} was already closed")
        self.register.close_incident(incident_id, cause or "", now)
        self.notice(incident_id, "closing", now)

    def plan(self, site: str, start: float, end: float, cause: str, now: float, *, requested_by_operator: bool,
             config_change: str | None) -> int:  # fmt: skip
        settings = self.config.site(site)
        if settings is None:
            raise Refused(f"no site {site} in the configuration ({', '.join(s.name for s in self.config.sites)})")
        if end <= start:
            raise Refused("the end must come after the start")
        if not cause.strip():
            raise Refused("the type and cause must be given (--cause)")
        if start - now < PLAN_AHEAD and not requested_by_operator:
            days = (start - now) / 86_400
            raise Refused(f"the start is {days:.1f} days ahead: annex A40 5.7.2 asks for at least 10 calendar days' "
                          "notice unless the operator asked for the work (--requested-by-operator)")  # fmt: skip
        if config_change is not None:
            if not os.path.isfile(config_change) or os.path.getsize(config_change) > CONFIG_CHANGE_LIMIT:
                raise Refused(f"{config_change}: not a readable file of at most {CONFIG_CHANGE_LIMIT} bytes")
            config_change = os.path.abspath(config_change)
        incident_id = self.register.plan_maintenance(site, settings.updc, start, end, cause, now,
                                                     requested_by_operator=requested_by_operator,
                                                     config_change=config_change)  # fmt: skip
        self.notice(incident_id, "planned", now)
        return incident_id

    # ------------------------------------------------------------------ notices
    def notice(self, incident_id: int, kind: str, now: float) -> None:
        incident = self.register.get(incident_id)
        assert incident is not None
        smtp = self.config.smtp
        sender = smtp.sender if smtp is not None else "concentrator@localhost"
        recipients = smtp.recipients if smtp is not None else ("operator@localhost",)
        attachment = None
        if kind == "planned" and incident.config_change is not None:
            with open(incident.config_change, "rb") as f:
                attachment = (os.path.basename(incident.config_change), f.read())
        name = notice_name(incident_id, kind)
        write_spool(self.config.spool, name,
                    message(incident, kind, self.config.holder, sender, recipients, now, attachment))  # fmt: skip
        self.register.add_notice(incident_id, kind, name, now)

    def due(self, now: float) -> list[Notice]:
        """Notices to hand to the SMTP relay now (none without one configured)."""
        if self.config.smtp is None:
            return []
        return [n for n in self.register.unsent() if n.next_attempt <= now]

    def eml(self, notice: Notice) -> bytes:
        with open(os.path.join(self.config.spool, notice.name + ".eml"), "rb") as f:
            return f.read()

    def sent(self, notice: Notice, now: float) -> None:
        self.register.notice_sent(notice.id, now)

    def failed(self, notice: Notice, error: str, now: float) -> float:
        """Record a failed attempt; returns when to try again (backing off)."""
        smtp = self.config.smtp
        assert smtp is not None
        delay = min(smtp.retry_min * 2 ** min(notice.attempts, 30), smtp.retry_max)
        self.register.notice_failed(notice.id, error, now + delay)
        return now + delay
