"""The incident process as the relay runs it (a child fed on stdin), against a real SMTP
server (aiosmtpd, STARTTLS): with the relay down or refusing, the opening notice stays
in the spool, counted unsent, and goes out once the relay accepts it; a `kill -9` of
the process (an appliance restart) loses nothing and opens no duplicate; the closing
notice goes out when the holder closes the incident from the command line."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from concentrator.config import load_config
from concentrator.incidents.store import Register
from concentrator.incidents.tap import CHILD, link_record
from concentrator.sidecar import command, message
from tests.helpers import free_port

from .smtp_server import SmtpServer


def wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def link(site: str, state: str, detail: str = "", at: float | None = None) -> bytes:
    return link_record(site, state, detail, time.time() if at is None else at)


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("concentrator_incident") and "{" not in line:
            name, value = line.split()
            found[name] = float(value)
    return found


class Child:
    """The incident process, started as the relay's feeder starts it."""

    def __init__(self, config_file: Path) -> None:
        self.config = load_config(config_file).incidents
        assert self.config is not None
        self.proc = subprocess.Popen(command(CHILD), stdin=subprocess.PIPE)
        self.send(message(self.config))

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no cleanup of its own
        self.proc.wait()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, SmtpServer, int]]:
    smtp = SmtpServer(str(tmp_path))  # not started: the relay is down at first
    metrics_port = free_port()
    doc = {
        "uplink": {"listen": f"127.0.0.1:{free_port()}", "allowed_peers": ["127.0.0.1"]},
        "sites": [{"name": "north", "common_addresses": [101], "endpoints": ["127.0.0.1:2404"],
                   "interruptibility": "instantaneous"},
                  {"name": "south", "common_addresses": [102], "endpoints": ["127.0.0.1:2405"],
                   "interruptibility": "emergency"}],
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "incidents": {
            "database": str(tmp_path / "incidents.sqlite"), "spool": str(tmp_path / "spool"),
            "metrics_listen": f"127.0.0.1:{metrics_port}", "holder": "Acme Interrompibili S.p.A.",
            "unreachable_grace": 1.0, "recovery_hold": 0.5,
            "sites": {"north": {"updc": "UPDC RTU-560 north"}},
            "smtp": {"host": "127.0.0.1", "port": smtp.port, "starttls": True, "ca_file": smtp.cert,
                     "from": "concentrator@holder.example", "to": ["interrompibili@operator.example"],
                     "retry_min": 0.2, "retry_max": 1.0, "timeout": 5},
        },
    }  # fmt: skip
    config_file = tmp_path / "concentrator.yaml"
    config_file.write_text(yaml.safe_dump(doc))
    yield config_file, smtp, metrics_port
    smtp.stop() if smtp.controller.loop.is_running() else None


def notices(database: Path) -> list[tuple[str, float | None, int, str | None]]:
    try:
        register = Register(str(database), read_only=True)
    except sqlite3.OperationalError:  # not created yet
        return []
    try:
        return [(n.name, n.sent, n.attempts, n.last_error) for n in register.notices()]
    except sqlite3.OperationalError:  # the schema not created yet
        return []
    finally:
        register.close()


def test_a_notice_waits_in_the_spool_until_the_relay_accepts_it(setup: tuple[Path, SmtpServer, int],
                                                                 tmp_path: Path) -> None:  # fmt: skip
    config_file, smtp, metrics_port = setup
    database, spool = tmp_path / "incidents.sqlite", tmp_path / "spool"
    child = Child(config_file)
    try:
        cut = time.time()
        child.send(link("", "started", "BMI 127.0.0.1") + link("south", "started")
                   + link("north", "connected", "127.0.0.1:2404") + link("north", "started")
                   + link("north", "disconnected", "peer_closed: closed by peer", cut))  # fmt: skip
        # SMTP relay down: the opening notice is written, tried, and stays unsent.
        wait(lambda: notices(database) and notices(database)[0][2] >= 2, 10, "two failed attempts")
        (name, sent, attempts, error) = notices(database)[0]
        assert sent is None and "Connection refused" in (error or ""), error
        assert (spool / f"{name}.eml").exists() and (spool / f"{name}.txt").exists()
        assert metrics(metrics_port)["concentrator_incident_notices_unsent"] == 1
        assert metrics(metrics_port)["concentrator_incident_notice_send_failures_total"] >= 2
        register = Register(str(database), read_only=True)
        (incident,) = register.incidents()
        register.close()
        assert incident.site == "north" and incident.kind == "unreachable" and abs(incident.start - cut) < 0.01

        # The appliance restarts (kill -9): the register and the spool keep everything.
        child.kill()
        child = Child(config_file)
        child.send(link("", "started", "BMI 127.0.0.1") + link("south", "started")
                   + link("north", "disconnected", "peer_closed: closed by peer", cut))  # fmt: skip
        # The relay refuses (550): attempts go on, never marked sent.
        smtp.handler.refuse = True
        smtp.start()
        wait(lambda: "550" in (notices(database)[0][3] or ""), 10, "a refused attempt")
        assert notices(database)[0][1] is None and smtp.handler.messages == []
        time.sleep(1.5)  # two more grace periods: the incident must not be opened twice
        assert len(notices(database)) == 1
        assert metrics(metrics_port)["concentrator_incident_notices_unsent"] == 1

        # The relay accepts: the notice goes out once, as it is in the spool.
        smtp.handler.refuse = False
        wait(lambda: notices(database)[0][1] is not None, 10, "the notice sent")
        time.sleep(0.5)
        (message,) = smtp.handler.parsed()
        assert message["Subject"].startswith("Malfunzionamento UPDC / UPDC malfunction: north")
        body = message.get_payload(decode=True).decode()
        assert body.replace("\r\n", "\n") == (spool / f"{name}.txt").read_text()
        assert "UPDC RTU-560 north" in body and "Inizio dell'indisponibilità" in body and "Unavailable since" in body
        assert metrics(metrics_port)["concentrator_incident_notices_unsent"] == 0

        # The UPDC is back; the holder closes with the type and cause: the closing notice.
        back = time.time()
        child.send(link("north", "connected", "127.0.0.1:2404", back) + link("north", "started", "", back))
        wait(lambda: Register(str(database), read_only=True).incidents()[0].end is not None, 10, "restored")
        register = Register(str(database), read_only=True)
        assert abs((register.incidents()[0].end or 0) - back) < 0.01
        register.close()
        close = subprocess.run([sys.executable, "-m", "concentrator", "incidents", "--config", str(config_file),
                                "close", "1", "--cause", "guasto alimentatore UPDC / UPDC power supply failure"],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        assert close.returncode == 0, close.stderr
        wait(lambda: len(smtp.handler.messages) == 2, 10, "the closing notice sent")
        closing = smtp.handler.parsed()[1].get_payload(decode=True).decode()
        assert "Fine dell'indisponibilità" in closing and "UPDC power supply failure" in closing
        again = subprocess.run([sys.executable, "-m", "concentrator", "incidents", "--config", str(config_file),
                                "close", "1", "--cause", "again"],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        assert again.returncode == 1 and "already closed" in again.stderr
    finally:
        child.kill()
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
