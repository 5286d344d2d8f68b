"""The notices to the operator (annex A40 5.7.1, 5.7.2), in Italian and English, as the
holder can send them: a `.eml` message and the same text as `.txt` in the spool
directory, written atomically (temporary file, fsync, rename) before anything is sent.

5.7.1 asks, at once: the site's name, the UPDC's name, the date and time the
unavailability began; at the end: the date and time it ended, the type and cause.
5.7.2 asks, at least 10 calendar days ahead: site, UPDC, start, end, type and cause, and
for a configuration change its description and the updated configuration (attached).

`send` hands a spooled `.eml` to the SMTP relay with the standard library's smtplib
(STARTTLS when configured): the message is sent only when the relay accepted it for
every recipient; anything else raises, and the notice stays unsent (retried later).
"""

from __future__ import annotations

import datetime
import email.policy
import email.utils
import os
import smtplib
import ssl
from email.message import EmailMessage
from zoneinfo import ZoneInfo

from .config import SmtpConfig
from .detector import Kind
from .store import Incident

ROME = ZoneInfo("Europe/Rome")

KIND_IT = {
    Kind.UNREACHABLE: "UPDC non raggiungibile (anomalia nel colloquio)",
    Kind.RESTART: "riavvio dell'UPDC (anomalia dell'apparato)",
    Kind.MEASURES: "misure invalide o mancanti (segnalazioni invalide)",
    Kind.SKEW: "errore di sincronizzazione temporale dell'UPDC",
    Kind.BMI_LINK: "colloquio con il sistema BMI interrotto",
    Kind.MAINTENANCE: "manutenzione programmata",
}
KIND_EN = {
    Kind.UNREACHABLE: "UPDC unreachable (anomaly in its exchange)",
    Kind.RESTART: "UPDC restart (anomaly of the apparatus)",
    Kind.MEASURES: "measures invalid or missing (invalid signals)",
    Kind.SKEW: "UPDC time synchronisation error",
    Kind.BMI_LINK: "link to the BMI not started",
    Kind.MAINTENANCE: "planned maintenance",
}


def when(t: float | None) -> str:
    """Local time in Rome with its offset and UTC: no room for a time-zone dispute."""
    if t is None:
        return "-"
    local = datetime.datetime.fromtimestamp(t, ROME)
    utc = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return f"{local:%d/%m/%Y %H:%M:%S} ({local:%Z}, {utc:%H:%M:%S} UTC)"


def by_end_of(t: float | None) -> str:
    """A deadline (midnight in Rome) as the day it ends: "10/12/2026 24:00 (CET)"."""
    if t is None:
        return "-"
    day = datetime.datetime.fromtimestamp(t - 1, ROME)
    return f"{day:%d/%m/%Y} 24:00 ({day:%Z})"


def notice_name(incident_id: int, kind: str) -> str:
    return f"incident-{incident_id:05d}-{kind}"


def render(incident: Incident, kind: str, holder: str) -> tuple[str, str]:
    """(subject, bilingual text) of the `kind` notice (opening, closing, planned)."""
    i = incident
    site_it = "tutti i siti (colloquio BMI)" if i.kind is Kind.BMI_LINK else i.site
    site_en = "all sites (BMI link)" if i.kind is Kind.BMI_LINK else i.site
    if kind == "opening":
        subject = f"Malfunzionamento UPDC / UPDC malfunction: {site_en}, {i.updc}, incident {i.id}"
        it = [f"Segnalazione di malfunzionamento UPDC (Allegato A40, 5.7.1), evento n. {i.id}", "",
              f"i.   Sito interrompibile: {site_it}", f"ii.  Apparato UPDC: {i.updc}",
              f"iii. Inizio dell'indisponibilità: {when(i.start)}", f"Tipo: {KIND_IT[i.kind]}",
              f"Ripristino completo entro: {by_end_of(i.deadline)} (3 giorni lavorativi)"]  # fmt: skip
        en = [f"UPDC malfunction notice (annex A40, 5.7.1), incident {i.id}", "",
              f"i.   Interruptible site: {site_en}", f"ii.  UPDC: {i.updc}",
              f"iii. Unavailable since: {when(i.start)}", f"Type: {KIND_EN[i.kind]}",
              f"Full restoration due by: {by_end_of(i.deadline)} (3 working days)"]  # fmt: skip
    elif kind == "closing":
        subject = f"Fine indisponibilità UPDC / UPDC restored: {site_en}, {i.updc}, incident {i.id}"
        cause_it = i.cause if i.cause else (i.proposed_it or "")
        cause_en = i.cause if i.cause else (i.proposed_en or "")
        it = [f"Fine del disservizio UPDC (Allegato A40, 5.7.1), evento n. {i.id}", "",
              f"Sito interrompibile: {site_it}", f"Apparato UPDC: {i.updc}",
              f"Inizio dell'indisponibilità: {when(i.start)}",
              f"I.  Fine dell'indisponibilità: {when(i.end)}",
              f"II. Tipo e causa dell'evento: {KIND_IT[i.kind]}", f"    {cause_it}"]  # fmt: skip
        en = [f"End of UPDC unavailability (annex A40, 5.7.1), incident {i.id}", "",
              f"Interruptible site: {site_en}", f"UPDC: {i.updc}", f"Unavailable since: {when(i.start)}",
              f"I.  Unavailable until: {when(i.end)}",
              f"II. Type and cause: {KIND_EN[i.kind]}", f"    {cause_en}"]  # fmt: skip
    else:
        subject = f"Manutenzione programmata UPDC / planned UPDC maintenance: {site_en}, {i.updc}, notice {i.id}"
        it = [f"Comunicazione di manutenzione programmata (Allegato A40, 5.7.2), n. {i.id}", "",
              f"iv.   Sito interrompibile: {site_it}", f"v.    Apparato UPDC: {i.updc}",
              f"vi.   Inizio dell'indisponibilità: {when(i.start)}", f"vii.  Fine dell'indisponibilità: {when(i.end)}",
              f"viii. Tipo e causa dell'evento: manutenzione programmata: {i.cause}"]  # fmt: skip
        en = [f"Planned maintenance notice (annex A40, 5.7.2), no. {i.id}", "",
              f"iv.   Interruptible site: {site_en}", f"v.    UPDC: {i.updc}",
              f"vi.   Unavailable from: {when(i.start)}", f"vii.  Unavailable until: {when(i.end)}",
              f"viii. Type and cause: planned maintenance: {i.cause}"]  # fmt: skip
        if i.requested_by_operator:
            it.append("Intervento richiesto da Terna (preavviso di 10 giorni non necessario, nota 3).")
            en.append("Work requested by the operator (10 days' notice not required, footnote 3).")
        if i.config_change:
            it.append(f"Variazione di configurazione: in allegato ({os.path.basename(i.config_change)}).")
            en.append(f"Configuration change: attached ({os.path.basename(i.config_change)}).")
    signature = [f"-- {holder}" if holder else "--", "Generato dal concentratore / written by the concentrator"]
    return subject, "\n".join([*it, "", "----", "", *en, "", *signature]) + "\n"


def message(incident: Incident, kind: str, holder: str, sender: str, recipients: tuple[str, ...], now: float,
            attachment: tuple[str, bytes] | None = None) -> EmailMessage:  # fmt: skip
    subject, text = render(incident, kind, holder)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(now, localtime=False)
    msg["Message-ID"] = f"<{notice_name(incident.id, kind)}.{int(now)}@concentrator>"
    msg.set_content(text)
    if attachment is not None:
        name, data = attachment
        msg.add_attachment(data, maintype="text", subtype="plain", filename=name)
    return msg


def write_spool(spool: str, name: str, msg: EmailMessage) -> None:
    """`<name>.txt` then `<name>.eml`, each whole or absent (fsync, rename, fsync dir)."""
    os.makedirs(spool, exist_ok=True)
    body = msg.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    # The message as it goes over SMTP (CRLF line ends): the relay gets these very bytes.
    for suffix, data in ((".txt", text.encode()), (".eml", msg.as_bytes(policy=email.policy.SMTP))):
        path = os.path.join(spool, name + suffix)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fd = os.open(spool, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def send(smtp: SmtpConfig, data: bytes) -> None:
    """Hand one message to the relay; raises unless every recipient was accepted."""
    with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
        client.ehlo()
        if smtp.starttls:
            client.starttls(context=ssl.create_default_context(cafile=smtp.ca_file))
            client.ehlo()
        if smtp.username is not None and smtp.password_file is not None:
            with open(smtp.password_file) as f:
                client.login(smtp.username, f.read().strip())
        refused = client.sendmail(smtp.sender, list(smtp.recipients), data)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)
