"""Section 1 of the dossier against the relay's real metrics exporter: PASS only when the
file's SHA-256 is in the history of accepted configurations and is the one the running
relay reports; a file never accepted, a relay that does not answer, or one running
another configuration each turn it to FAIL, saying which."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from concentrator.config import Config, load_config
from concentrator.evidence.dossier import Section, specification
from concentrator.evidence.history import record_accepted
from concentrator.relay.stats import RelayStats
from monitoring.exporter import serve_relay
from tests.helpers import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "concentrator.yaml"


def appliance_config(tmp_path: Path) -> Config:
    conf = tmp_path / "concentrator.yaml"
    text = EXAMPLE.read_text().replace('listen: "127.0.0.1:9104"', f'listen: "127.0.0.1:{free_port()}"')
    conf.write_text(text)
    config = load_config(conf)
    assert str(config.metrics.listen) != "127.0.0.1:9104", "the example's metrics.listen moved: update this test"
    return config


def with_relay_reporting(reported: Config, judged: Config) -> Section:
    async def main() -> Section:
        exporter = serve_relay(RelayStats(), reported)
        try:
            return await trio.to_thread.run_sync(specification, judged, None)
        finally:
            exporter.close()

    return trio.run(main)


def test_a_never_accepted_file_and_a_silent_relay_fail(tmp_path: Path) -> None:
    config = appliance_config(tmp_path)
    section = specification(config, None)
    assert not section.passed
    assert any("not in the history of accepted configurations" in f for f in section.findings)
    assert any("did not answer" in f for f in section.findings)


def test_a_relay_running_another_configuration_fails(tmp_path: Path) -> None:
    config = appliance_config(tmp_path)
    record_accepted(config, "check-config")
    other = dataclasses.replace(config, sha256="0" * 64)
    section = with_relay_reporting(other, config)
    assert not section.passed
    assert section.findings == [
        f"the running relay reports SHA-256 {'0' * 64}, not this file's {config.sha256}: it runs another configuration"
    ]


def test_the_accepted_file_the_relay_runs_passes(tmp_path: Path) -> None:
    config = appliance_config(tmp_path)
    record_accepted(config, "relay")
    section = with_relay_reporting(config, config)
    assert section.passed and section.findings == []
    assert section.facts["relay_reports_sha256"] == config.sha256
    assert [h["sha256"] for h in section.facts["history"]] == [config.sha256]
    assert {s["name"] for s in section.facts["sites"]} == {f"site-{n:02d}" for n in range(1, 13)}
