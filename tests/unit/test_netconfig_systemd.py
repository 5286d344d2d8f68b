"""The systemd units of conf/systemd/: valid for systemd itself, and saying what
docs/failover.md promises (netd restarted at once, watchdog, smcrouted kept)."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

from netconfig.netd import build_parser
from tests.conftest import require_tool

UNITS = Path(__file__).parents[2] / "conf" / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def test_systemd_accepts_both_units_without_a_warning(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    exe = shutil.which("concentrator")
    assert exe is not None, "pip install -e . puts the concentrator command on PATH"
    for path in UNITS.glob("*.service"):
        # verify checks that ExecStart's program exists: point it at this machine's.
        (tmp_path / path.name).write_text(path.read_text().replace("/usr/local/bin/concentrator", exe))
    done = subprocess.run(
        [analyze, "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done.stderr


def test_a_bad_directive_is_reported(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nRestart=sometimes\n")
    done = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True)
    assert "restart specifier" in done.stderr


def test_netd_unit_restarts_at_once_under_a_watchdog_and_keeps_smcrouted() -> None:
    service = unit("concentrator-netd.service")["Service"]
    assert (service["Type"], service["Restart"], service["RestartSec"], service["WatchdogSec"]) == (
        "notify",
        "always",
        "100ms",
        "2s",
    )
    assert service["KillMode"] == "process" and service["RuntimeDirectoryPreserve"] == "yes"
    assert unit("concentrator-netd.service")["Unit"]["StartLimitIntervalSec"] == "0"
    # Its command line is one netd accepts, with the state file it reads back.
    argv = shlex.split(service["ExecStart"])
    assert argv[1] == "netd"
    args = build_parser().parse_args(argv[2:])
    assert (args.config, args.state) == ("/etc/concentrator/concentrator.yaml", "/run/concentrator/netd.json")


def test_relay_unit_restarts_and_runs_unprivileged() -> None:
    service = unit("concentrator-relay.service")["Service"]
    assert service["Restart"] == "always" and service["DynamicUser"] == "yes"
    assert shlex.split(service["ExecStart"])[1] == "relay"
