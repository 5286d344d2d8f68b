"""The import graph keeps the layers: no circle, the IEC 104 core stands alone, the link
manager (netconfig) depends on nothing of the relay but the configuration primitives.

Read from the source with `ast`, function-level imports included: an import inside a
function is still a dependency, and hiding a circle there is what this test forbids.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("concentrator", "netconfig", "monitoring")  # what `pip install .` installs
# Lab and bench code lives beside the packages and is not installed: the product must not need it.
NOT_INSTALLED = ("tests", "bench")
CONFIG_PRIMITIVES = "concentrator.configbase"

Graph = Mapping[str, set[str]]


def top_level_imports(path: Path) -> set[str]:
    """The first component of every absolute import in a file (function-level ones too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: Iterable[str]) -> set[str]:
    """The project modules `name` imports, anywhere in its source."""
    known = set(modules)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; `from module import name` the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: Graph) -> list[str] | None:
    """One circle of imports, as a path that ends where it starts; None if there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def reachable(graph: Graph, start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# --------------------------------------------------------------------------- the checks


def test_the_checks_see_circles_and_paths() -> None:
    # A check that cannot fail proves nothing: the same functions on graphs that break the rules.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert reachable({"n.x": {"m.y"}, "m.y": {"c.z"}}, "n.x") == {"m.y", "c.z"}


def test_function_level_and_relative_imports_are_read(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from .config import x\n\ndef f():\n    from concentrator.relay import Relay\n")
    modules = ["netconfig.mod", "netconfig.config", "concentrator.relay"]
    assert imports_of("netconfig.mod", source, modules) == {"netconfig.config", "concentrator.relay"}


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert "concentrator.config" in graph["concentrator.cli"]
    assert {"concentrator.configbase", "netconfig.config", "concentrator.mirror.config"} <= graph["concentrator.config"]


# --------------------------------------------------------------------------- the rules


def test_no_circle_of_imports() -> None:
    assert find_cycle(import_graph()) is None


def test_the_iec104_core_imports_nothing_of_the_rest() -> None:
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("concentrator.iec104"):
            outside = {t for t in targets if not t.startswith("concentrator.iec104")}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_the_config_primitives_import_nothing_of_the_project() -> None:
    assert import_graph()[CONFIG_PRIMITIVES] == set()


def test_netconfig_depends_on_nothing_of_the_relay_but_the_config_primitives() -> None:
    graph = import_graph()
    for name in graph:
        if name.startswith("netconfig"):
            relay = {m for m in reachable(graph, name) if m.startswith("concentrator") and m != CONFIG_PRIMITIVES}
            assert not relay, f"{name} depends on {sorted(relay)}"


def test_the_installed_packages_are_the_ones_pyproject_installs() -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(include) == sorted(f"{p}*" for p in PACKAGES)
    assert not any(fnmatch.fnmatch(name, pattern) for name in NOT_INSTALLED for pattern in include)


def test_the_installed_packages_need_no_lab_or_bench_code(tmp_path: Path) -> None:
    lab = tmp_path / "lab.py"
    lab.write_text("def f():\n    from tests.lab.harness import Lab\n")
    assert top_level_imports(lab) & set(NOT_INSTALLED) == {"tests"}  # the check sees a hidden one
    for name, path in project_modules().items():
        needed = top_level_imports(path) & set(NOT_INSTALLED)
        assert not needed, f"{name} imports {sorted(needed)}, which is not installed"
