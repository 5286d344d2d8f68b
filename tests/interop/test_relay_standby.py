"""`concentrator relay --start-fd N`, the relay the HA supervisor loads ahead on both
appliances (docs/ha.md): it says when it is loaded, then neither listens nor connects to
a site until the start byte; if the supervisor's end closes first, it never starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from concentrator.sim.points import free_tcp_port

ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    probe = socket.socket()
    try:
        return probe.connect_ex(("127.0.0.1", port)) == 0
    finally:
        probe.close()


def _standby_relay(tmp_path: Path) -> tuple[subprocess.Popen[bytes], socket.socket, int, socket.socket]:
    """A relay with --start-fd, and a site listener that counts its connections."""
    site = socket.socket()
    site.bind(("127.0.0.1", 0))
    site.listen()
    site.settimeout(0.1)
    port = free_tcp_port()
    config = {
        "uplink": {"listen": f"127.0.0.1:{port}", "allowed_peers": ["127.0.0.1"]},
        "sites": [
            {
                "name": "site-01",
                "common_addresses": [101],
                "endpoints": [f"127.0.0.1:{site.getsockname()[1]}"],
                "interruptibility": "instantaneous",
            }
        ],
        "metrics": {"listen": f"127.0.0.1:{free_tcp_port()}"},
    }
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(config))
    ours, theirs = socket.socketpair()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "concentrator", "relay", "--config", str(path), "--start-fd", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    theirs.close()
    ours.settimeout(30)
    assert ours.recv(1) == b"r"  # loaded
    return proc, ours, port, site


def _accepts(site: socket.socket, seconds: float) -> int:
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn, _ = site.accept()
            conn.close()
            count += 1
        except TimeoutError:
            pass
    return count


def test_loaded_relay_waits_for_its_start_byte(tmp_path: Path) -> None:
    proc, ours, port, site = _standby_relay(tmp_path)
    try:
        assert _accepts(site, 1.0) == 0 and not _listening(port)  # loaded, but nothing toward anyone
        ours.send(b"1")
        deadline = time.monotonic() + 10
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _listening(port)
        assert _accepts(site, 2.0) >= 1  # and it connects to the site
    finally:
        proc.terminate()
        proc.wait(10)
        ours.close()
        site.close()


def test_loaded_relay_never_starts_when_its_supervisor_is_gone(tmp_path: Path) -> None:
    proc, ours, port, site = _standby_relay(tmp_path)
    try:
        ours.close()  # what the supervisor's death does to its end
        assert proc.wait(10) == 0
        assert not _listening(port) and _accepts(site, 0.5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        site.close()
