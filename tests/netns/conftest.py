"""Network-namespace tests: root only. Outside CI they skip when not root; in CI
(CI=true) a missing prerequisite is a failure, never a skip."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.lab.harness import cleanup_stale


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, routes, nftables)"
    for tool in ("ip", "nft", "ss"):
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH"
    return None


@pytest.fixture(autouse=True)
def netns_prerequisites() -> None:
    why = _missing()
    if why is None:
        cleanup_stale()  # leftovers of a crashed earlier run must not collide
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"netns test cannot run in CI: {why}")
    pytest.skip(why)
