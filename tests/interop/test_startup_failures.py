"""Issue 29 item 3: a wrong start is one line, with its own exit status, never a traceback.

Each expected failure is made real and the command run as a process (`python -m
concentrator ...`): a port another process listens on, an address of no interface here
(TEST-NET-1), a port below 1024 without CAP_NET_BIND_SERVICE (setpriv), a kernel that
refuses IPv6 sockets (tests/lab/seccomp.py), a missing package. The exit statuses are
documented in the README ("Exit statuses") and defined in concentrator/configbase.py.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from concentrator.cli import main
from concentrator.config import load_config
from concentrator.configbase import (
    AddressInUse,
    AddressNotHere,
    KernelLacks,
    MissingTool,
    PermissionRefused,
    StartupError,
    os_failure,
    run_main,
)
from concentrator.relay.driver import Relay
from tests.helpers import free_port
from tests.lab import seccomp

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"

# README, "Exit statuses"
STATUS = {"config": 2, "in use": 3, "not here": 4, "missing": 5, "permission": 6, "kernel": 7}


def relay_file(tmp_path: Path, uplink: str) -> Path:
    path = tmp_path / "concentrator.yaml"
    path.write_text(
        f'uplink: {{listen: "{uplink}", allowed_peers: ["127.0.0.1"]}}\n'
        f'sites:\n  - {{name: site-01, common_addresses: [101], endpoints: ["127.0.0.1:{free_port()}"], '
        f"interruptibility: emergency}}\n"
        f'metrics: {{listen: "127.0.0.1:{free_port()}"}}\n'
    )
    return path


def run(command: list[str], prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*(prefix or []), sys.executable, "-m", "concentrator", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The whole output (stdout and stderr) of a failed start: exactly one line."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert output.endswith("\n") and output.count("\n") == 1, output
    return output.strip()


@pytest.fixture
def busy() -> Iterator[int]:
    """A port another process (here: this one) listens on, as a relay already running would."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.mark.parametrize("command", ["relay", "check-config"])
def test_a_busy_uplink_address(tmp_path: Path, busy: int, command: str) -> None:
    path = relay_file(tmp_path, f"127.0.0.1:{busy}")
    result = run([command, "--config", str(path)] if command == "relay" else [command, str(path)])
    line = one_line(result)
    assert result.returncode == STATUS["in use"]
    assert line == (f"{path}: uplink.listen: listening on 127.0.0.1:{busy} failed: Address already in use "
                    "(another process holds it); stop that process or choose another port")  # fmt: skip


@pytest.mark.parametrize("command", ["relay", "check-config"])
def test_an_uplink_address_not_on_this_host(tmp_path: Path, command: str) -> None:
    path = relay_file(tmp_path, f"192.0.2.1:{free_port()}")  # TEST-NET-1: on no interface here
    result = run([command, "--config", str(path)] if command == "relay" else [command, str(path)])
    line = one_line(result)
    assert result.returncode == STATUS["not here"]
    assert line.startswith(f"{path}: uplink.listen: listening on 192.0.2.1:") and "ip -brief address" in line


def test_a_port_below_1024_without_the_capability(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        if IN_CI:
            pytest.fail("needs root and setpriv (util-linux) in CI")
        pytest.skip("needs root and setpriv")
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 80:
        pytest.fail("this host lets anyone listen on port 80: no permission to refuse")
    path = relay_file(tmp_path, "127.0.0.1:80")
    drop = ["setpriv", "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service"]
    result = run(["relay", "--config", str(path)], prefix=drop)
    line = one_line(result)
    assert result.returncode == STATUS["permission"]
    assert "listening on 127.0.0.1:80 failed: Permission denied" in line and "CAP_NET_BIND_SERVICE" in line
    # The same file with the capability: the check passes (the NOT OK side is the capability).
    assert run(["check-config", str(path)]).returncode == 0


def test_a_kernel_without_ipv6(tmp_path: Path) -> None:
    if not seccomp.supported():
        pytest.fail(f"tests/lab/seccomp.py knows no system call numbers for {os.uname().machine}")
    path = relay_file(tmp_path, f"[::1]:{free_port()}")
    without_ipv6 = [sys.executable, "-m", "tests.lab.seccomp", "--"]
    result = run(["relay", "--config", str(path)], prefix=without_ipv6)
    line = one_line(result)
    assert result.returncode == STATUS["kernel"]
    assert "listening on [::1]:" in line and "Address family not supported" in line
    assert run(["check-config", str(path)]).returncode == 0  # with IPv6, the same file passes


def test_a_missing_package(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    # c104 is installed here (the tests need it): its absence is simulated.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "c104" else real(name, *a))
    assert main(["demo", "--duration", "1"]) == STATUS["missing"]
    out, err = capfd.readouterr()
    assert out == "" and err == (
        "demo: the simulated sites and BMI need c104, which is not installed; pip install 'iec104-concentrator[demo]'\n"
    )


def test_keepalived_missing_for_an_ha_appliance(tmp_path: Path) -> None:
    from tests.interop.test_check_config import document, with_ha, write

    doc = with_ha(document("127.0.0.1:1", f"127.0.0.1:{free_port()}"), "192.0.2.10", f"127.0.0.1:{free_port()}")
    path = write(tmp_path, doc)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(tmp_path)}  # no keepalived there
    argv = [sys.executable, "-m", "concentrator", "ha", "--config", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert one_line(result) == f"{path}: ha: keepalived is not on PATH; apt-get install keepalived"
    assert result.returncode == STATUS["missing"]


def test_a_bad_configuration_is_one_line_too(tmp_path: Path) -> None:
    path = tmp_path / "concentrator.yaml"
    path.write_text("uplink: {listen: nowhere}\n")
    result = run(["relay", "--config", str(path)])
    line = one_line(result)
    assert result.returncode == STATUS["config"] and line.startswith(f"configuration error: {path}: ")


async def test_an_uplink_taken_after_the_check_is_said_the_same_way(tmp_path: Path, busy: int) -> None:
    """Relay.run meets the busy address itself when it is taken between the check and the
    bind: the same one-line failure (the relay's ExceptionGroup of 34 lines on main)."""
    relay = Relay(load_config(relay_file(tmp_path, f"127.0.0.1:{busy}")))
    with pytest.raises(AddressInUse, match="uplink.listen: listening on 127.0.0.1"):
        await relay.run()


def test_each_errno_maps_to_its_failure_and_others_are_left_alone() -> None:
    def failure(code: int) -> object:
        return os_failure(OSError(code, os.strerror(code)), "f.yaml: uplink.listen", "listening on 127.0.0.1:2404")

    assert isinstance(failure(errno.EADDRINUSE), AddressInUse)
    assert isinstance(failure(errno.EADDRNOTAVAIL), AddressNotHere)
    assert isinstance(failure(errno.EACCES), PermissionRefused)
    assert isinstance(failure(errno.ENOPROTOOPT), KernelLacks)  # e.g. MRT_INIT without CONFIG_IP_MROUTE
    assert isinstance(failure(errno.EAFNOSUPPORT), KernelLacks)
    other = OSError(errno.ECONNREFUSED, "Connection refused")
    assert os_failure(other, "x", "y") is other  # not an expected start-up failure
    statuses = [cls.status for cls in (AddressInUse, AddressNotHere, MissingTool, PermissionRefused, KernelLacks)]
    assert statuses == [3, 4, 5, 6, 7] and StartupError.status == 1


def test_run_main_says_expected_failures_and_lets_bugs_show(capsys: pytest.CaptureFixture[str]) -> None:
    def fails() -> int:
        async def task() -> None:
            raise MissingTool("netd: trip path", "smcroute is not installed", "apt-get install smcroute")

        async def nursery() -> None:
            async with trio.open_nursery() as n:
                n.start_soon(task)

        trio.run(nursery)  # an expected failure inside a nursery: an ExceptionGroup of one
        return 0

    assert run_main(fails) == 5
    assert capsys.readouterr().err == "netd: trip path: smcroute is not installed; apt-get install smcroute\n"

    def bug() -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_main(bug)
