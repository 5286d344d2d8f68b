"""Issue 26: the chaos soak in CI. Three minutes of faults in random order from a fixed
seed at 100 two-path sites, every invariant checked while it runs (bench/soak.py has
what and how); and the proof that the soak fails when an invariant breaks: the relay
run through tests/lab/soak_plant.py (a test-only launcher that patches the relay core
in its own process; nothing of it is in the product) with a planted fault.

The long run (60 minutes) and its figures: bench/SOAK.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.soak import parse_args, run_soak
from tests.conftest import require_root, require_tool

pytestmark = pytest.mark.netns

SEED = 2603


def soak(tmp_path: Path, *extra: str) -> dict[str, Any]:
    require_root()
    require_tool("nft", "nftables")
    require_tool("prometheus", "prometheus")
    args = parse_args(
        ["--seed", str(SEED), "--mean-gap", "3", "--max-fault", "40", "--json", str(tmp_path / "soak.json"),
         "--log", str(tmp_path / "soak.log"), *extra]
    )  # fmt: skip
    return run_soak(args)


def brief(result: dict[str, Any]) -> str:
    return json.dumps({"violations": result["violations"][:10], "faults": result["faults_by_kind"]}, indent=1)


@pytest.mark.timeout(720)
def test_three_minutes_of_random_faults_at_100_sites_lose_reorder_and_leak_nothing(tmp_path: Path) -> None:
    result = soak(tmp_path, "--duration", "180")
    assert result["faults"] >= 30, result["faults_by_kind"]
    assert result["violations"] == [], brief(result)
    assert result["ok"]
    assert result["lost_at_end"] == 0 and result["produced"] == result["asdus_first_arrivals"]
    assert result["command_outcomes"].get("delivered and confirmed", 0) > 100
    assert result["command_outcomes"].get("unknown CA: cause 46 answer", 0) > 5
    assert result["trip_outcomes"]["delivered"] > 5000 and "missed" not in result["trip_outcomes"]
    assert result["final_metrics"]["ok"] and result["metric_checks"]["count"] >= 10
    assert result["alerts"]["missing"] == [] and result["alerts"]["unexplained"] == []


@pytest.mark.timeout(600)
def test_the_soak_fails_when_the_relay_drops_one_asdu_in_ten_thousand(tmp_path: Path) -> None:
    result = soak(tmp_path, "--duration", "90", "--plant", "drop:10000")
    assert not result["ok"]
    kinds = result["violations_by_kind"]
    assert kinds.get("gap", 0) >= 3 and kinds.get("loss", 0) >= 3, brief(result)
    assert result["lost_at_end"] >= 3


@pytest.mark.timeout(600)
def test_the_soak_fails_when_the_relay_leaks_a_descriptor_per_site_connection(tmp_path: Path) -> None:
    result = soak(tmp_path, "--duration", "90", "--plant", "fd-leak")
    assert not result["ok"]
    assert result["violations_by_kind"].get("descriptors", 0) >= 1, brief(result)
    assert result["resources"]["relay"]["unexplained_fds_max_spread_in_a_process"] > 3
