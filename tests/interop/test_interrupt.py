"""Issue 24: Ctrl-C (SIGINT) on a long-running command ends with one line and status 130
(README, "Exit statuses"), never a traceback: the demo (trio delivers KeyboardInterrupt
inside exception groups) and the relay (it stops cleanly on SIGINT itself, then says so
the same way), netd as root in a network namespace of its own, and `concentrator evidence`
(root) while it captures. The real commands run
as processes and get a real SIGINT once running.
SIGTERM (a service manager's stop) is not an interruption: the relay's status stays 0."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from concentrator.configbase import EXIT_INTERRUPTED, INTERRUPTED
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
# The log formats of cli.py ("2026-12-07 17:24:48,759 INFO ...") and netd ("2026-12-07T17:24:48.759 netd INFO ...")
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d{3} ")
IN_CI = os.environ.get("CI") == "true"


def start(command: list[str], prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*prefix, sys.executable, "-m", "concentrator", *command], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def signalled_when(process: subprocess.Popen[str], stream: str, ready: str, signum: int) -> tuple[str, str]:
    """Read the process's output; once `ready` appears on `stream` (it is running), send
    `signum`; return stdout and stderr once it has ended."""
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    seen = threading.Event()

    def read(name: str) -> None:
        for line in getattr(process, name):
            out[name].append(line)
            if name == stream and ready in line:
                seen.set()

    readers = [threading.Thread(target=read, args=(name,), daemon=True) for name in out]
    for reader in readers:
        reader.start()
    try:
        assert seen.wait(60), f"never ready: {''.join(out['stderr'])[-2000:]}"
        time.sleep(0.5)
        process.send_signal(signum)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for reader in readers:
        reader.join(timeout=10)
    return "".join(out["stdout"]), "".join(out["stderr"])


def assert_one_line_130(process: subprocess.Popen[str], stdout: str, stderr: str) -> None:
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    # Everything on stderr that is not a log record is the one line, and it is the last.
    said = [line for line in stderr.splitlines() if not LOG_RECORD.match(line)]
    assert said == [INTERRUPTED], stderr[-3000:]
    assert stderr.splitlines()[-1] == INTERRUPTED
    assert process.returncode == EXIT_INTERRUPTED == 130


def relay_file(tmp_path: Path) -> Path:
    path = tmp_path / "concentrator.yaml"
    path.write_text(
        f'uplink: {{listen: "127.0.0.1:{free_port()}", allowed_peers: ["127.0.0.1"]}}\n'
        f'sites:\n  - {{name: site-01, common_addresses: [101], endpoints: ["127.0.0.1:{free_port()}"], '
        f"interruptibility: emergency}}\n"
        f'metrics: {{listen: "127.0.0.1:{free_port()}"}}\n'
    )
    return path


def test_ctrl_c_on_the_relay_is_one_line_and_130(tmp_path: Path) -> None:
    relay = start(["relay", "--config", str(relay_file(tmp_path))])
    stdout, stderr = signalled_when(relay, "stderr", "listening for the BMI", signal.SIGINT)
    assert "SIGINT received: stopping" in stderr  # it stopped cleanly, by its own receiver
    assert_one_line_130(relay, stdout, stderr)


def test_sigterm_on_the_relay_is_a_clean_stop_not_an_interruption(tmp_path: Path) -> None:
    relay = start(["relay", "--config", str(relay_file(tmp_path))])
    stdout, stderr = signalled_when(relay, "stderr", "listening for the BMI", signal.SIGTERM)
    assert "Traceback" not in stderr and INTERRUPTED not in stderr, stderr[-3000:]
    assert relay.returncode == 0


@pytest.mark.skipif(importlib.util.find_spec("c104") is None and os.environ.get("CI") != "true",
                    reason="the demo needs c104 (pip install '.[demo]')")  # fmt: skip
def test_ctrl_c_on_the_demo_is_one_line_and_130() -> None:
    demo = start(["demo", "--sites", "3"])
    stdout, stderr = signalled_when(demo, "stdout", "Prometheus metrics:", signal.SIGINT)  # the live table is up
    assert_one_line_130(demo, stdout, stderr)


def _raise(exc: BaseException) -> int:
    raise exc


def test_run_main_says_ctrl_c_in_one_line_bare_or_in_groups_and_nothing_else() -> None:
    import io

    from concentrator.configbase import run_main

    for exc in (
        KeyboardInterrupt(),
        BaseExceptionGroup("nursery", [BaseExceptionGroup("inner", [KeyboardInterrupt()])]),
    ):
        err = io.StringIO()
        assert run_main(lambda exc=exc: _raise(exc), err) == 130
        assert err.getvalue() == INTERRUPTED + "\n"
    # Ctrl-C beside a real failure is not only an interruption: the failure must show.
    mixed = BaseExceptionGroup("nursery", [KeyboardInterrupt(), ValueError("a bug")])
    with pytest.raises(BaseExceptionGroup):
        run_main(lambda: _raise(mixed), io.StringIO())


NETD_FILE = """network:
  service_address: 10.0.0.1
  uplink:
    destinations: ["10.1.0.0/24"]
    primary: {interface: bmi0, gateway: 172.16.0.1}
    backup: {interface: bmi1, gateway: 172.16.1.1}
"""


def test_ctrl_c_on_netd_is_one_line_and_130(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if IN_CI:
            pytest.fail("netd needs root and iproute2 (.ci/install)")
        pytest.skip("netd needs root and iproute2")
    ns = f"sigint-{os.getpid()}"
    config = tmp_path / "netd.yaml"
    config.write_text(NETD_FILE)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        # Two uplink paths whose gateways never answer: netd runs, finds both down, keeps going.
        for cmd in ("link set lo up", "link add bmi0 type veth peer name bmi0p",
                    "link add bmi1 type veth peer name bmi1p", "addr add 172.16.0.2/24 dev bmi0",
                    "addr add 172.16.1.2/24 dev bmi1", "link set bmi0 up", "link set bmi0p up",
                    "link set bmi1 up", "link set bmi1p up"):  # fmt: skip
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        netd = start(["netd", "--config", str(config)], prefix=("ip", "netns", "exec", ns))
        stdout, stderr = signalled_when(netd, "stderr", "link uplink:", signal.SIGINT)
        assert "stopping on signal 2 (routes left in place)" in stderr  # stopped cleanly, by its own receiver
        assert_one_line_130(netd, stdout, stderr)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_ctrl_c_on_evidence_while_it_captures_is_one_line_and_130(tmp_path: Path) -> None:
    if os.geteuid() != 0:  # packet sockets
        if IN_CI:
            pytest.fail("concentrator evidence needs root")
        pytest.skip("concentrator evidence needs root")
    out = tmp_path / "dossier"
    evidence = start(["evidence", "--config", str(relay_file(tmp_path)), "--out", str(out), "--duration", "60"])
    try:
        deadline = time.monotonic() + 60
        while not list(out.rglob("*.pcap")):  # capturing (it prints nothing until the end)
            assert evidence.poll() is None and time.monotonic() < deadline, evidence.communicate()
            time.sleep(0.1)
        evidence.send_signal(signal.SIGINT)
        stdout, stderr = evidence.communicate(timeout=30)
    finally:
        if evidence.poll() is None:
            evidence.kill()
            evidence.wait()
    assert_one_line_130(evidence, stdout, stderr)
