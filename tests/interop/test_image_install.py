"""The relay image's install steps, without Docker (CI has no engine): the Dockerfile's
COPY and install steps, in its order, into a clean venv from the constraints; then
`concentrator check-config` on the baked configuration and a start of the relay, whose
health check passes and whose metrics answer on a non-loopback address.

The relay runs in a network namespace of its own, where the image's fixed ports (2404,
9104) are free whatever else runs on this machine. Takes about a minute (pip installs
from the configured index).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import require_root, require_tool

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = "10.99.0.1"  # on a veth in the namespace: not loopback


def dockerfile_steps() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            steps.append((instruction, arguments.strip()))
    return steps


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> str:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_dependencies_layer_comes_before_the_sources() -> None:
    steps = dockerfile_steps()
    order = [f"{i} {a}" for i, a in steps if i in ("COPY", "RUN")]
    deps = next(n for n, s in enumerate(order) if "install.sh dependencies" in s)
    assert all(not s.startswith("COPY concentrator") for s in order[:deps])  # sources come after
    assert "pyproject.toml constraints.txt" in order[deps - 1]
    assert any(i == "FROM" and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", a) for i, a in steps)  # a pinned release
    assert any(i == "HEALTHCHECK" and '"health"' in a for i, a in steps)


def test_the_image_install_steps_work_in_a_clean_venv(tmp_path: Path) -> None:
    require_root()
    ip = require_tool("ip", "iproute2")
    venv, app = tmp_path / "venv", tmp_path / "app"
    app.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The venv's python first; nothing of this checkout on the path (no PYTHONPATH).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"

    baked: Path | None = None
    for instruction, arguments in dockerfile_steps():
        if instruction == "COPY":
            *sources, destination = arguments.split()
            if destination.startswith("/"):  # the baked configuration
                assert destination == "/etc/concentrator/concentrator.yaml"
                baked = ROOT / sources[0]
                continue
            for source in sources:
                src = ROOT / source
                target = app / destination / src.name if destination.endswith("/") else app / destination
                if src.is_dir():
                    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(src, target)
        elif instruction == "RUN":
            for command in arguments.split("&&"):
                words = command.split()
                if words[:2] == ["sh", "install.sh"]:
                    run(["sh", "install.sh", *words[2:]], env, cwd=app)
                else:  # creating the image's user is not an install step
                    assert words[0] == "useradd", command
    assert baked is not None

    installed = run(["python", "-m", "pip", "list", "--format=freeze"], env)
    assert "paho-mqtt==" in installed  # the mirror is in the image
    assert "c104==" not in installed  # the simulators are not
    constraints = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    for pin in ("trio==", "PyYAML==", "prometheus_client==", "pyroute2==", "paho-mqtt=="):
        line = next(line for line in constraints.splitlines() if line.startswith(pin))
        assert line in installed.splitlines(), f"{line} not installed as constrained"
    concentrator = str(venv / "bin" / "concentrator")

    namespace = f"cfgimg{os.getpid()}"
    run([ip, "netns", "add", namespace], env)
    try:
        inside = [ip, "netns", "exec", namespace]
        run([*inside, ip, "link", "set", "lo", "up"], env)
        run([*inside, ip, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], env)
        run([*inside, ip, "addr", "add", f"{ADDRESS}/24", "dev", "v0"], env)
        run([*inside, ip, "link", "set", "v0", "up"], env)
        run([*inside, ip, "link", "set", "v1", "up"], env)

        assert "valid, 12 sites" in run([*inside, concentrator, "check-config", str(baked)], env, cwd=tmp_path)
        health = [*inside, concentrator, "health", "--config", str(baked)]
        assert subprocess.run(health, env=env, capture_output=True, timeout=60).returncode == 1  # not yet

        relay = subprocess.Popen(
            [*inside, concentrator, "relay", "--config", str(baked)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while subprocess.run(health, env=env, capture_output=True, timeout=60).returncode != 0:
                assert relay.poll() is None, relay.communicate()[0]
                assert time.monotonic() < deadline, "the relay did not listen within 60 s"
                time.sleep(0.5)
            metrics = run([*inside, "python", "-c", FETCH, f"http://{ADDRESS}:9104/metrics"], env)
            assert (
                metrics.count("concentrator_site_info{") == 12 and "concentrator_uplink_open_connections 0" in metrics
            )
        finally:
            relay.send_signal(signal.SIGTERM)
            output = relay.communicate(timeout=30)[0]
        assert relay.returncode == 0, output
        assert "Traceback" not in output
        assert subprocess.run(health, env=env, capture_output=True, timeout=60).returncode == 1  # stopped
    finally:
        subprocess.run([ip, "netns", "delete", namespace], timeout=30)


# Fetched by the venv's python inside the namespace, retrying while the exporter starts.
FETCH = """
import sys, time, urllib.request
for attempt in range(100):
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("no metrics at " + sys.argv[1])
"""
