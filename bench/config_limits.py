"""Abusive configuration files: how long `concentrator check-config` takes to refuse each
one, and its peak memory, against the example file as a baseline measured in the same run.

    python -m bench run config_limits   # from the checkout's root; prints a Markdown table

The cases and the measurement are those of tests/unit/test_config_limits.py: one child
process per file; CPU seconds are the command's own, wall seconds include starting Python.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.unit.test_config_limits import CASES, EXAMPLE, measured


def main() -> None:
    print("| file | bytes | exit | CPU seconds | wall seconds | peak RSS (MB) |\n|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in [("example (baseline)", EXAMPLE.read_bytes()), *((c.name, c.text()) for c in CASES)]:
            path = Path(tmp) / "case.yaml"
            data = text.encode() if isinstance(text, str) else text
            path.write_bytes(data)
            m = measured(path)
            row = [
                name,
                len(data),
                m.exit_code,
                f"{m.cpu_seconds:.3f}",
                f"{m.seconds:.2f}",
                f"{m.peak_rss / 2**20:.0f}",
            ]
            print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
