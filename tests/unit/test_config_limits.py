"""Abusive configuration files get a clear error, quickly and in little memory.

Each case runs `concentrator check-config` in a child process, as an operator would, and
reads that child's own peak memory. The time bound here only catches a hang (the machine
is shared); bench/config_limits.py reports the real figures.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from concentrator import configbase
from concentrator.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "conf" / "concentrator.yaml"
MAX_RSS_BYTES = 100 * 2**20
HANG_SECONDS = 20.0  # a hang, not a speed target: bench/config_limits.py measures that


def example() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def with_uplink_k(value: str) -> str:
    text = example()
    assert "  k: 12 " in text
    return text.replace("  k: 12 ", f"  k: {value} ", 1)


def alias_bomb() -> str:
    """Nine levels of nine aliases each, as a site's name: 9**9 (387 million) values once expanded."""
    levels = ['&l0 "lol"', *(f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10))]
    return example().replace("  - name: site-01\n", f"  - name: [{', '.join(levels)}]\n", 1)


def common_addresses(count: int, *, repeat_first: bool = False) -> str:
    """The first site with `count` common addresses (the last one a repeat of the first if asked)."""
    cas = [1 + i % 65534 for i in range(count)]
    if repeat_first:
        cas[-1] = cas[0]
    text = example()
    assert "common_addresses: [101]" in text
    text = text.replace("common_addresses: [101]", f"common_addresses: [{', '.join(map(str, cas))}]", 1)
    # The other sites' own addresses (102..112) are among the many: give them others.
    for ca in range(102, 113):
        text = text.replace(f"common_addresses: [{ca}]", f"common_addresses: [{65534 - ca}]", 1)
    return text


def deep_alias() -> str:
    """An anchor 20 levels deep, used 20 levels deep: 40 levels once expanded."""
    return "a: &deep " + "[" * 20 + "1" + "]" * 20 + "\nb: " + "[" * 20 + "*deep" + "]" * 20 + "\n"


@dataclass(frozen=True)
class Case:
    name: str
    text: Callable[[], str | bytes]
    key: str | re.Pattern[str]  # the key (or position) the error must name
    expected: str  # words the error's "expected" part must contain


CASES = [
    # Refused where the expansion passes the limit: level 5 stands for 66,430 values.
    Case("alias-bomb", alias_bomb, "sites[0].name[5][5]", f"at most {configbase.MAX_NODES} values"),
    Case(
        "nested-40",
        lambda: "uplink: " + "[" * 40 + "]" * 40 + "\n",
        "uplink" + "[0]" * 31,
        "at most 32 levels of nesting",
    ),
    # Named by line and column: PyYAML's scanner refuses it while looking ahead (6.0.4).
    Case(
        "nested-10000",
        lambda: "uplink: " + "[" * 10_000 + "]" * 10_000 + "\n",
        re.compile(r"line 1, column \d+|uplink(\[0\]){31}"),
        "at most 32 levels of nesting",
    ),
    Case("int-tag-twelve", lambda: with_uplink_k("!!int twelve"), "uplink.k", "a value YAML can read as int"),
    Case("k-5000-digits", lambda: with_uplink_k("9" * 5000), "uplink.k", "at most 4096 characters"),
    Case("k-4000-digits", lambda: with_uplink_k("9" * 4000), "uplink.k", "an integer from 1 to 32767"),
    Case("bad-date", lambda: with_uplink_k("2001-02-30"), "uplink.k", "a value YAML can read as timestamp"),
    Case(
        "cas-1.5-million", lambda: common_addresses(1_500_000), "(file)", f"at most {configbase.MAX_FILE_BYTES} bytes"
    ),
    Case("list-12000", lambda: common_addresses(12_000), "sites[0].common_addresses", "at most 10000 entries"),
    Case(
        "cas-repeated",
        lambda: common_addresses(10_000, repeat_first=True),
        "sites[0].common_addresses[9999]",
        "each common address once",
    ),
    Case("scalar-1MB", lambda: "x: " + "a" * 1_000_000 + "\n", "x", "at most 4096 characters"),
    # 55,001 values: 1 for "x", then 11 per list of ten; the 50,001st is the fifth 1 of list 4545.
    Case(
        "nodes-55001",
        lambda: "x: [" + ", ".join(["[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] * 5000) + "]\n",
        "x[4545][4]",
        "at most 50000 values",
    ),
    Case("recursive-alias", lambda: "x: &a [1, *a]\n", "x[1]", "an alias to a complete value"),
    Case("deep-alias", deep_alias, "b" + "[0]" * 20, "levels of nesting"),
    Case("python-tag", lambda: "x: !!python/object/apply:os.system ['true']\n", "line 1, column 4", "valid YAML"),
    Case("not-utf8", lambda: b"x: \xff\n", "(file)", "UTF-8 text"),
]


# Runs check-config as the command does, then reports the process's own peak memory:
# VmHWM starts afresh at exec, unlike the rusage of a child, whose ru_maxrss starts from
# the RSS of the process it was forked from.
# It also reports the CPU time of the command itself (not of starting Python), which
# depends less on what else the machine runs than wall time does.
_CHILD = """
import sys, time
from concentrator.cli import main
start = time.process_time()
try:
    code = main(["check-config", "--no-bind", sys.argv[1]])
finally:
    cpu = time.process_time() - start
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print("measured", peak, cpu)
sys.exit(code)
"""


@dataclass(frozen=True)
class Measured:
    exit_code: int
    stderr: str
    seconds: float  # wall time of the child, starting Python included
    cpu_seconds: float  # CPU time of the command in the child
    peak_rss: int  # bytes


def measured(path: Path) -> Measured:
    """Run check-config on `path` in a child and measure it (also for bench/config_limits.py)."""
    start = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=HANG_SECONDS
    )
    seconds = time.monotonic() - start
    lines = [line.split() for line in child.stdout.splitlines() if line.startswith("measured ")]
    assert len(lines) == 1, child.stdout + child.stderr
    _, peak_kb, cpu = lines[0]
    return Measured(child.returncode, child.stderr, seconds, float(cpu), int(peak_kb) * 1024)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_abusive_config_gets_a_clear_error_fast_and_small(case: Case, tmp_path: Path) -> None:
    path = tmp_path / f"{case.name}.yaml"
    text = case.text()
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    result = measured(path)
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    key = case.key.pattern if isinstance(case.key, re.Pattern) else re.escape(case.key)
    assert re.match(f"configuration error: {re.escape(str(path))}: (?:{key}): expected ", message), message
    assert case.expected in message
    assert len(message) < 400 + len(str(path))  # never the whole value
    assert result.peak_rss < MAX_RSS_BYTES, f"peak RSS {result.peak_rss / 2**20:.0f} MB"
    assert result.cpu_seconds < HANG_SECONDS


def test_the_alias_bomb_is_small() -> None:
    assert len(alias_bomb()) - len(example()) < 800


def test_aliases_within_the_limit_still_work(tmp_path: Path) -> None:
    # Merge keys (a site built from another) need aliases; only their expansion is capped.
    text = example().replace("  - name: site-01\n", "  - &first\n    name: site-01\n", 1)
    text = text.replace("  - name: site-02\n", "  - <<: *first\n    name: site-02\n", 1)
    path = tmp_path / "merge.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    assert config.sites[1].name == "site-02"


def test_the_longest_lists_load(tmp_path: Path) -> None:
    # 10,000 common addresses in one site: the longest list allowed still loads (duplicate
    # checks are linear), and one more entry is refused.
    path = tmp_path / "long.yaml"
    path.write_text(common_addresses(configbase.MAX_ITEMS), encoding="utf-8")
    assert len(load_config(path).sites[0].common_addresses) == configbase.MAX_ITEMS
    path.write_text(common_addresses(configbase.MAX_ITEMS + 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "sites[0].common_addresses"


def test_an_endless_file_is_read_only_up_to_the_limit() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/dev/zero")
    assert info.value.key == "(file)"
    assert info.value.got == f"more than {configbase.MAX_FILE_BYTES} bytes"


def test_error_messages_cut_long_values() -> None:
    error = ConfigError("f.yaml", "k", "an integer", "x" * 1_000_000)
    assert len(str(error)) < 200
    nested: list[object] = []
    for _ in range(1000):
        nested = [nested, nested]
    assert len(str(ConfigError("f.yaml", "k", "an integer", nested))) < 200


# --------------------------------------------------------------------------- linear duplicate checks


def test_overlap_check_agrees_with_comparing_every_pair() -> None:
    from ipaddress import IPv4Network

    from netconfig.config import _first_overlap

    rng = random.Random(7)
    overlapping = 0
    for _ in range(300):
        prefixes = []
        for _ in range(rng.randint(0, 12)):
            length = rng.randint(22, 32)  # inside 10.0.0.0/22, so that overlaps are common
            address = 0x0A000000 + rng.randrange(0, 1024)
            prefixes.append(IPv4Network((address >> (32 - length) << (32 - length), length)))
        pairs = [(i, j) for j in range(len(prefixes)) for i in range(j) if prefixes[i].overlaps(prefixes[j])]
        found = _first_overlap(prefixes)
        assert (found is None) == (not pairs), prefixes
        assert found is None or found in pairs
        overlapping += bool(pairs)
    assert 50 < overlapping < 250  # both outcomes were tried


def test_repeated_names_the_first_repeat() -> None:
    assert configbase.repeated([1, 2, 3]) is None
    assert configbase.repeated([1, 2, 1, 2]) == 2
    assert configbase.repeated(range(10_000)) is None
