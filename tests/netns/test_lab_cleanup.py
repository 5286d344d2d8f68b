"""A lab tool told to stop cleans up whatever the signals: found when `pkill -f
bench.soak` hit both `timeout` and the soak, whose second SIGTERM landed inside
Lab.close() and left 102 namespaces and the lab's processes running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_root

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys, time
from tests.lab.harness import Lab, install_signal_cleanup
install_signal_cleanup()
with Lab(n_sites=3, start_netd=False) as lab:
    print(lab.prefix, flush=True)
    time.sleep(600)
"""


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def test_a_volley_of_sigterms_still_removes_every_namespace() -> None:
    require_root()
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        prefix = child.stdout.readline().strip()
        assert prefix and len(namespaces(prefix)) == 5, prefix  # conc, bmi, 3 sites
        # The first SIGTERM starts the unwinding; the others arrive while it runs.
        deadline = time.monotonic() + 3.0
        while child.poll() is None and time.monotonic() < deadline:
            child.send_signal(signal.SIGTERM)
            time.sleep(0.005)
        assert child.wait(timeout=30) == 128 + signal.SIGTERM
        assert namespaces(prefix) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
