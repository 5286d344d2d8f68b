"""The import graph keeps the package order (README, Architecture):

    wiring      concentrator.cli, .demo, .config (the whole file's Config), .__main__:
                the only modules that import across features
    features    concentrator.mirror, .shedding, .evidence, .incidents, .ha, .sim: each may
                use the layers below, never another feature nor the wiring layer
    monitoring  every collector and the exporters
    netconfig   the links and netconfig.trip, the trip path
    relay       concentrator.relay: only itself, iec104 and configbase
    sidecar     concentrator.sidecar (one way to run a feature's child): only configbase
    iec104      only itself
    configbase  nothing of the project

The rules, each a function over a graph so that a test runs it on a small graph with a
planted violation and sees it fail:
(a) configbase imports nothing of the project; (b) iec104 imports only iec104; (c) the
relay imports only the relay, iec104 and configbase (the sidecar only configbase); (d) a
feature imports no other feature and no wiring module, and reaches none through the
layers it may use (relay, iec104, configbase, sidecar, netconfig, monitoring): a feature
importing a collector that reads another feature is caught too; (e) netconfig depends
on nothing of concentrator but configbase, directly or not; (f) monitoring imports no
wiring module, nothing of a feature but what `COLLECTED` lists, and nothing above it
but the relay, iec104, configbase and the sidecar. `COLLECTED` is precise: it names,
per collector, the modules of exactly one feature that hold the state and config types
the collector reads at scrape time (the feature's config section, its counters and
state objects, the enums and the read-only reader of the record it serves), each of
them imported by that collector and reaching no monitoring module: the state sits below
its collector, the process that serves it above. A collector importing any other
module of a feature, or a second feature, fails; (g) nothing installed imports tests/ or bench/.
The installed packages' own __init__ modules import nothing of the project (Python runs
them on every import inside them). Every module belongs to one layer, so that a new
package has to be placed.

Read from the source with `ast`, function-level imports included: an import inside a
function is still a dependency, and hiding a circle there is what this test forbids.
Imports under `if TYPE_CHECKING:` count too: a type is a dependency of the reader.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("concentrator", "netconfig", "monitoring")  # what `pip install .` installs
# Lab and bench code lives beside the packages and is not installed: the product must not need it.
NOT_INSTALLED = ("tests", "bench")

# --------------------------------------------------------------------------- the layers

WIRING = ("concentrator.cli", "concentrator.demo", "concentrator.config", "concentrator.__main__")
FEATURES = tuple(f"concentrator.{name}" for name in ("mirror", "shedding", "evidence", "incidents", "ha", "sim"))
RELAY = "concentrator.relay"
SIDECAR = "concentrator.sidecar"
IEC104 = "concentrator.iec104"
CONFIG_PRIMITIVES = "concentrator.configbase"
NETCONFIG = "netconfig"  # the links, and netconfig.trip: the trip path
MONITORING = "monitoring"  # every collector and the exporters
TOP = "concentrator"  # the package's own __init__ (empty)
LAYERS = (*WIRING, *FEATURES, RELAY, SIDECAR, IEC104, CONFIG_PRIMITIVES, NETCONFIG, MONITORING)
# What a feature may use: the layers below it.
BELOW_FEATURES = (RELAY, IEC104, CONFIG_PRIMITIVES, SIDECAR, NETCONFIG, MONITORING)
# What monitoring may use besides the feature modules of COLLECTED.
BELOW_MONITORING = (RELAY, IEC104, CONFIG_PRIMITIVES, SIDECAR)


def feature_modules(feature: str, *modules: str) -> frozenset[str]:
    return frozenset(f"concentrator.{feature}.{module}" for module in modules)


# The feature modules each collector reads: its feature's state and config types (rule f).
COLLECTED: Mapping[str, frozenset[str]] = {
    "monitoring.ha_metrics": feature_modules("ha", "state"),
    # its section, its counters, Kind, and the register it reads (read-only) at each scrape
    "monitoring.incident_metrics": feature_modules("incidents", "config", "counters", "detector", "store"),
    # its section, the monitor's state, ClockState and Status
    "monitoring.shedding_metrics": feature_modules("shedding", "config", "monitor", "clock", "verdict"),
    # the mirror's counters, served on the relay's endpoint (RelayStats.mirror)
    "monitoring.relay_metrics": feature_modules("mirror", "stats"),
}

Graph = Mapping[str, set[str]]
Rule = Callable[[Graph], list[str]]


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


def within(name: str, layer: str) -> bool:
    return name == layer or name.startswith(f"{layer}.")


def layer_of(name: str) -> str | None:
    """The layer a module belongs to (the longest that holds it); None if in none."""
    if name == TOP:
        return TOP
    holding = [layer for layer in LAYERS if within(name, layer)]
    return max(holding, key=len) if holding else None


def leaving(graph: Graph, layer: str, allowed: Iterable[str]) -> list[str]:
    """The imports of `layer`'s modules that go to a project module outside the layer and `allowed`."""
    keep = (layer, *allowed)
    return [
        f"{name} -> {target}"
        for name in sorted(graph)
        if within(name, layer)
        for target in sorted(graph[name])
        if not any(within(target, k) for k in keep)
    ]


def rule_a_configbase(graph: Graph) -> list[str]:
    """(a) configbase imports nothing of the project; nor do the installed packages' own
    __init__ modules, which Python runs on every import of a module inside them."""
    roots = [f"{root} -> {target}" for root in PACKAGES for target in sorted(graph.get(root, ()))]
    return leaving(graph, CONFIG_PRIMITIVES, ()) + roots


def rule_b_iec104(graph: Graph) -> list[str]:
    """(b) iec104 imports only iec104."""
    return leaving(graph, IEC104, ())


def rule_c_relay(graph: Graph) -> list[str]:
    """(c) the relay imports only the relay, iec104 and configbase; the sidecar only configbase."""
    return leaving(graph, RELAY, (IEC104, CONFIG_PRIMITIVES)) + leaving(graph, SIDECAR, (CONFIG_PRIMITIVES,))


def rule_d_features(graph: Graph) -> list[str]:
    """(d) a feature imports only itself and the layers below it, and reaches no other
    feature and no wiring module through them."""
    found: list[str] = []
    for feature in FEATURES:
        found += leaving(graph, feature, BELOW_FEATURES)
        forbidden = [layer for layer in (*FEATURES, *WIRING) if layer != feature]
        # Through the layers below only: a forbidden module on the way is reported, not entered.
        below = {n: set() if any(within(n, f) for f in forbidden) else t for n, t in graph.items()}
        for name in sorted(n for n in graph if within(n, feature)):
            found += [
                f"{name} -> ... -> {target}"
                for target in sorted(reachable(below, name) - graph[name])
                if any(within(target, layer) for layer in forbidden)
            ]
    return found


def rule_e_netconfig(graph: Graph) -> list[str]:
    """(e) netconfig depends on nothing of concentrator but configbase, directly or not."""
    return [
        f"{name} -> ... -> {target}"
        for name in sorted(n for n in graph if within(n, NETCONFIG))
        for target in sorted(reachable(graph, name))
        if within(target, TOP) and target != CONFIG_PRIMITIVES
    ]


def rule_f_monitoring(graph: Graph) -> list[str]:
    """(f) monitoring imports no wiring module, of the features only what COLLECTED
    lists for the importing collector, and otherwise only the relay, iec104, configbase
    and the sidecar."""
    return [
        f"{name} -> {target}"
        for name in sorted(n for n in graph if within(n, MONITORING))
        for target in sorted(graph[name])
        if not within(target, MONITORING)
        and target not in COLLECTED.get(name, ())
        and not any(within(target, layer) for layer in BELOW_MONITORING)
    ]


def rule_every_module_has_a_layer(graph: Graph) -> list[str]:
    """Every module is placed in the order: a new package has to be added to it."""
    return [f"{name} is in no layer" for name in sorted(graph) if layer_of(name) is None]


RULES = (
    rule_a_configbase,
    rule_b_iec104,
    rule_c_relay,
    rule_d_features,
    rule_e_netconfig,
    rule_f_monitoring,
    rule_every_module_has_a_layer,
)


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


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_the_product_keeps_the_order(rule: Rule) -> None:
    assert rule(import_graph()) == []


def test_the_collected_modules_are_state_below_their_collector() -> None:
    # Rule (f)'s exception, checked: each collector reads one feature, and what it reads
    # reaches no monitoring module (it is state and types, not the process serving them).
    graph = import_graph()
    for collector, modules in COLLECTED.items():
        assert collector in graph, f"{collector} is not a module"
        assert len({layer_of(m) for m in modules}) == 1, f"{collector} reads {sorted(modules)}"
        assert {layer_of(m) for m in modules} <= set(FEATURES)
        for module in sorted(modules):
            assert module in graph[collector], f"{collector} does not read {module}: drop it from COLLECTED"
            above = {m for m in reachable(graph, module) if within(m, MONITORING)}
            assert not above, f"{module} reaches {sorted(above)}"


# A small graph in the order, and one planted violation per rule (the rule must name it).
ORDERED: Graph = {
    "concentrator.__main__": {"concentrator.cli"},
    "concentrator.cli": {
        "concentrator.config",
        "concentrator.shedding.report",
        "concentrator.incidents.verdicts",
        "monitoring.exporter",
        "netconfig.netd",
    },
    "concentrator.config": {"concentrator.shedding.config", "concentrator.relay.config", "netconfig.config"},
    "concentrator.shedding.report": {"concentrator.shedding.config", "concentrator.relay.config"},
    "concentrator.shedding.process": {"monitoring.shedding_metrics", "concentrator.sidecar", "netconfig.config"},
    "concentrator.shedding.config": {"concentrator.configbase"},
    "concentrator.incidents.verdicts": set(),
    "concentrator.mirror.stats": set(),
    "monitoring.shedding_metrics": {"concentrator.shedding.config", "monitoring.primitives"},
    "monitoring.exporter": {"monitoring.relay_metrics", "concentrator.relay.stats", "concentrator.sidecar"},
    "monitoring.relay_metrics": {"concentrator.relay.config", "concentrator.mirror.stats"},
    "monitoring.primitives": {"concentrator.configbase"},
    "netconfig.netd": {"netconfig.config", "monitoring.primitives"},
    "netconfig.config": {"concentrator.configbase"},
    "concentrator.relay.config": {"concentrator.iec104.link", "concentrator.configbase"},
    "concentrator.relay.stats": {"concentrator.configbase"},
    "concentrator.iec104.link": {"concentrator.iec104.apci"},
    "concentrator.iec104.apci": set(),
    "concentrator.sidecar": {"concentrator.configbase"},
    "concentrator.configbase": set(),
}
PLANTED = [  # (rule, importer, imported, the violation it must report)
    (rule_a_configbase, "concentrator.configbase", "concentrator.relay.config", None),
    (rule_a_configbase, "concentrator", "concentrator.cli", None),  # run by every import of concentrator.*
    (rule_b_iec104, "concentrator.iec104.apci", "concentrator.configbase", None),
    (rule_c_relay, "concentrator.relay.stats", "concentrator.mirror.stats", None),
    (rule_c_relay, "concentrator.relay.config", "netconfig.config", None),
    (rule_c_relay, "concentrator.sidecar", "monitoring.primitives", None),
    (rule_d_features, "concentrator.shedding.report", "concentrator.incidents.verdicts", None),  # another feature
    (rule_d_features, "concentrator.shedding.report", "concentrator.config", None),  # the wiring layer
    (rule_d_features, "concentrator.incidents.verdicts", "concentrator.__main__", None),
    # Through a collector that reads another feature: not imported, still reached.
    (
        rule_d_features,
        "concentrator.shedding.process",
        "monitoring.exporter",
        "concentrator.shedding.process -> ... -> concentrator.mirror.stats",
    ),
    (
        rule_e_netconfig,
        "netconfig.config",
        "concentrator.relay.config",
        "netconfig.config -> ... -> concentrator.relay.config",
    ),
    (rule_e_netconfig, "netconfig.netd", "monitoring.exporter", "netconfig.netd -> ... -> concentrator.relay.stats"),
    (rule_f_monitoring, "monitoring.exporter", "concentrator.config", None),  # the wiring layer
    (rule_f_monitoring, "monitoring.shedding_metrics", "concentrator.shedding.process", None),  # not its state
    (rule_f_monitoring, "monitoring.relay_metrics", "concentrator.shedding.config", None),  # a second feature
    (rule_f_monitoring, "monitoring.primitives", "netconfig.config", None),  # above monitoring
    (
        rule_every_module_has_a_layer,
        "concentrator.cli",
        "concentrator.newthing",
        "concentrator.newthing is in no layer",
    ),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_the_rules_pass_a_graph_in_the_order(rule: Rule) -> None:
    assert rule(ORDERED) == []


@pytest.mark.parametrize(("rule", "importer", "imported", "reported"), PLANTED)
def test_each_rule_catches_a_planted_violation(rule: Rule, importer: str, imported: str, reported: str | None) -> None:
    graph = {name: set(targets) for name, targets in ORDERED.items()}
    graph.setdefault(importer, set()).add(imported)
    graph.setdefault(imported, set())
    assert (reported or f"{importer} -> {imported}") in rule(graph)


def test_every_rule_has_a_planted_violation() -> None:
    assert {rule for rule, *_ in PLANTED} == set(RULES)


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
