"""Tests that need root or a system tool run in CI, where .ci/install provides both:
there a missing prerequisite is a failure, never a skip. On a developer's machine
without them they skip with the way to install."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it: see .ci/install)")
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        _unavailable("needs root")


def require_tool(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        _unavailable(f"needs {tool}: apt-get install {package}")
    assert path is not None
    return path
