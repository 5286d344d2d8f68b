"""The appliance restarts (`kill -9` of `concentrator relay`, whose incident process then
sees its pipe close and exits): the new relay's incident process finds the incident and
its unsent notice in the register and the spool, opens no duplicate, and sends the
notice once the SMTP relay is up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from concentrator.incidents.store import Register
from tests.helpers import free_port

from .smtp_server import SmtpServer
from .test_delivery import notices, wait


def relay(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "concentrator", "relay", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def test_nothing_is_lost_across_a_restart_of_the_relay(tmp_path: Path) -> None:
    smtp = SmtpServer(str(tmp_path))
    database = tmp_path / "incidents.sqlite"
    doc = {
        "uplink": {"listen": f"127.0.0.1:{free_port()}", "allowed_peers": ["127.0.0.1"]},
        "sites": [{"name": "north", "common_addresses": [101], "endpoints": [f"127.0.0.1:{free_port()}"],
                   "interruptibility": "emergency"}],  # nothing listens there: unreachable
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "incidents": {
            "database": str(database), "spool": str(tmp_path / "spool"), "metrics_listen": f"127.0.0.1:{free_port()}",
            "unreachable_grace": 1.0, "bmi_grace": None,
            "smtp": {"host": "127.0.0.1", "port": smtp.port, "ca_file": smtp.cert, "from": "c@holder.example",
                     "to": ["o@operator.example"], "retry_min": 0.2, "retry_max": 1.0, "timeout": 5},
        },
    }  # fmt: skip
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(doc))
    log = tmp_path / "relay.log"
    first = relay(config, log)
    try:
        wait(lambda: notices(database) and notices(database)[0][2] >= 1, 20, "a failed attempt (SMTP down)")
        incident_process = children(first.pid)
        assert incident_process, "the relay started no incident process"
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        # Its incident process sees the pipe close and exits (it must: it holds the register).
        wait(lambda: not any(os.path.exists(f"/proc/{pid}") and not _zombie(pid) for pid in incident_process), 10,
             "the incident process gone")  # fmt: skip
        second = relay(config, log)
        try:
            smtp.start()
            wait(lambda: notices(database)[0][1] is not None, 20, "the notice sent after the restart")
            time.sleep(2.0)  # several graces: still one incident, one notice, one message
            register = Register(str(database), read_only=True)
            assert [(i.site, i.kind, i.state) for i in register.incidents()] == [("north", "unreachable", "open")]
            register.close()
            assert len(notices(database)) == 1 and len(smtp.handler.messages) == 1
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        smtp.stop() if smtp.controller.loop.is_running() else None
    assert "incident 1 opened" in log.read_text()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
