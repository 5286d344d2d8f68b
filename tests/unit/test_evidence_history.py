"""The append-only history of accepted configurations (annex A40 5.7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from concentrator.cli import main
from concentrator.evidence.history import history_path, read_history

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "concentrator.yaml"


def test_check_config_appends_each_new_hash_once_and_never_rewrites(tmp_path: Path) -> None:
    conf = tmp_path / "concentrator.yaml"
    shutil.copyfile(EXAMPLE, conf)
    assert main(["check-config", "--no-bind", str(conf)]) == 0
    assert main(["check-config", "--no-bind", str(conf)]) == 0  # same file: no new line
    [first] = read_history(str(conf))
    assert first["command"] == "check-config" and first["user"] and first["accepted_at"].endswith("+00:00")
    before = Path(history_path(str(conf))).read_bytes()
    conf.write_text(conf.read_text().replace("t3: 30", "t3: 25"))
    assert main(["check-config", "--no-bind", str(conf)]) == 0
    lines = Path(history_path(str(conf))).read_bytes()
    assert lines.startswith(before)  # appended, the old line untouched
    entries = [json.loads(line) for line in lines.decode().splitlines()]
    assert len(entries) == 2 and entries[0]["sha256"] != entries[1]["sha256"]


def test_a_refused_configuration_is_not_recorded(tmp_path: Path) -> None:
    conf = tmp_path / "bad.yaml"
    conf.write_text("uplink: {}\n")
    assert main(["check-config", "--no-bind", str(conf)]) == 2
    assert read_history(str(conf)) == []
