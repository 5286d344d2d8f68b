"""Configuration primitives: the bottom layer every section parser builds on.

One error type (`ConfigError`: file, key path, what was expected, what was found), the
strict and bounded YAML loader, and the value checks that more than one section needs
(mappings, lists, integers, seconds, endpoints with IPv6, IP networks). This module
imports nothing of the project, so that the relay's sections (concentrator/config.py),
the link manager's (netconfig/) and the mirror's (concentrator/mirror/config.py) can all
use it without depending on each other.

Value checks raise `Invalid(key, expected, got)`, which knows no file; a section parser
turns it into a `ConfigError` with `in_file(file)`.

The file is local, but a bad file must still get a clear error, never a crash or a hang:
the loader reads at most `MAX_FILE_BYTES`, and walks the parser's events before building
anything, refusing deeper nesting than `MAX_DEPTH`, collections longer than `MAX_ITEMS`,
values longer than `MAX_SCALAR`, and documents whose aliases expand to more than
`MAX_NODES` values (an "alias bomb" is a few hundred bytes that expand to billions).
Error messages show a bounded excerpt of the value they complain about.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import ipaddress
import math
import os
import re
import reprlib
import sys
from bisect import bisect_left
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml

# A 12-site appliance with every section is 8 kB and 481 values (conf/concentrator.yaml),
# so 1,000 sites would be about 700 kB and 40,000 values.
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 50_000  # values in the document, counting each alias as what it stands for
MAX_ITEMS = 10_000  # entries of one list or mapping (sites, a site's common addresses)
MAX_DEPTH = 32  # the deepest key of the schema is 5 levels down
MAX_SCALAR = 4096  # PATH_MAX; also keeps int() below Python's 4300-digit limit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Missing(enum.Enum):
    MISSING = enum.auto()


MISSING = _Missing.MISSING
"""Stands for a key that is absent (as opposed to present with a null value)."""

_excerpt = reprlib.Repr()
_excerpt.maxstring = 80
_excerpt.maxother = 80
_excerpt.maxlong = 40
_excerpt.maxlist = _excerpt.maxtuple = _excerpt.maxset = _excerpt.maxfrozenset = 6
_excerpt.maxdict = 4
_excerpt.maxlevel = 3


def excerpt(value: object) -> str:
    """repr(value), cut short: messages never echo an unbounded value."""
    return _excerpt.repr(value)


class ConfigError(Exception):
    """A configuration problem: which file, which key, what was expected, what was found.

    `str(e)` is `"{file}: {key}: expected {expected}, got {excerpt of got}"`, or ends in
    `"missing"` when the key is absent. For YAML syntax errors `key` is
    `"line L, column C"` and `line` holds L; for an unreadable file `key` is `"(file)"`.
    """

    def __init__(self, file: str, key: str, expected: str, got: object = MISSING, *, line: int | None = None) -> None:
        super().__init__(file, key, expected, excerpt(got))
        self.file = file
        self.key = key
        self.expected = expected
        self.got = got
        self.line = line

    @property
    def missing(self) -> bool:
        return self.got is MISSING

    def __str__(self) -> str:
        found = "missing" if self.missing else f"got {excerpt(self.got)}"
        return f"{self.file}: {self.key}: expected {self.expected}, {found}"


class Invalid(Exception):
    """Raised by the value checks, which do not know the file; see `in_file`."""

    def __init__(self, key: str, expected: str, got: object = MISSING) -> None:
        super().__init__(key, expected, excerpt(got))
        self.key = key
        self.expected = expected
        self.got = got


@contextlib.contextmanager
def in_file(file: str) -> Iterator[None]:
    """Turn the `Invalid` raised inside into a `ConfigError` naming `file`."""
    try:
        yield
    except Invalid as e:
        raise ConfigError(file, e.key or "(top level)", e.expected, e.got) from None


# --------------------------------------------------------------------------- the file


def read_yaml(file: str) -> tuple[object, bytes, float]:
    """The document in `file` (strict and bounded YAML, see the module's doc), its raw
    bytes and mtime."""
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
            stat = os.fstat(f.fileno())
    except OSError as e:
        raise ConfigError(file, "(file)", "a readable YAML file", e.strerror or str(e)) from e
    if len(raw) > MAX_FILE_BYTES:
        size = f"{stat.st_size} bytes" if stat.st_size > MAX_FILE_BYTES else f"more than {MAX_FILE_BYTES} bytes"
        raise ConfigError(file, "(file)", f"a file of at most {MAX_FILE_BYTES} bytes", size)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        got = f"byte {raw[e.start]:#04x} at offset {e.start}"
        raise ConfigError(file, "(file)", "UTF-8 text", got) from e
    return load_yaml(text, file), raw, stat.st_mtime


# libyaml when PyYAML has it (twenty times faster); the same results otherwise.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    def __init__(self, key: object, first: Any, again: Any) -> None:
        super().__init__(None, None, f"found duplicate key {excerpt(key)}", again)
        self.key = key
        self.first = first


class _BadValue(Exception):
    """A scalar its tag cannot be built from (`!!int twelve`, `2001-02-30`)."""

    def __init__(self, node: Any) -> None:
        super().__init__(node.tag)
        self.node = node


class _StrictLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)
    and reports a value its tag cannot build as a `_BadValue` at that value."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise _DuplicateKeyError(key, seen[key], key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError, ArithmeticError) as e:
            raise _BadValue(node) from e


def load_yaml(text: str, file: str) -> object:
    """Parse `text` (read from `file`) into plain values, within the module's limits."""

    def error(mark: Any, expected: str, got: object) -> ConfigError:
        return ConfigError(file, f"line {mark.line + 1}, column {mark.column + 1}", expected, got, line=mark.line + 1)

    refused = _NON_PRINTABLE.search(text)
    if refused:  # what PyYAML's reader refuses, found here to name the character
        line = text.count("\n", 0, refused.start()) + 1
        column = refused.start() - text.rfind("\n", 0, refused.start())
        got = f"character U+{ord(refused.group()):04X}"
        raise ConfigError(file, f"line {line}, column {column}", "valid YAML", got, line=line)
    paths: dict[int, str] = {}
    try:
        paths = _check_limits(text, file)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKeyError as e:
        expected = f"each key once per mapping (first at line {e.first.line + 1})"
        raise error(e.problem_mark, expected, e.key) from None
    except _BadValue as e:
        mark, tag = e.node.start_mark, e.node.tag.rpartition(":")[2]
        expected = f"a value YAML can read as {tag}"
        if mark.index in paths:
            raise ConfigError(file, paths[mark.index], expected, e.node.value, line=mark.line + 1) from None
        raise error(mark, expected, e.node.value) from None
    except yaml.MarkedYAMLError as e:
        mark, problem = e.problem_mark or e.context_mark, e.problem or ""
        if e.context:  # e.g. "while parsing a flow sequence (line 3), expected ',' or ']' ..."
            elsewhere = e.context_mark is not None and mark is not None and e.context_mark.line != mark.line
            problem = e.context + (f" (line {e.context_mark.line + 1})" if elsewhere else "") + ", " + problem
        if mark is None:
            raise ConfigError(file, "(file)", "valid YAML", problem) from None
        if "nesting depth" in problem:
            # PyYAML >= 6.0.4 has a nesting limit of its own, which its scanner meets while
            # looking ahead in a flow collection, before the events reach _check_limits.
            raise error(mark, f"at most {MAX_DEPTH} levels of nesting", "a deeper value") from None
        raise error(mark, "valid YAML", problem) from None
    except yaml.YAMLError as e:
        raise ConfigError(file, "(file)", "valid YAML", str(e)) from None


_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass
class _Open:
    """A collection being parsed: where it is, how many values it holds so far."""

    path: str
    mapping: bool
    items: int = 0  # entries (a mapping's keys and values count as one)
    key: str | None = None  # a mapping's key whose value comes next
    anchor: str | None = None
    nodes_before: int = 0  # `nodes` when it started, to size its anchor
    depth_below: int = 0  # levels of nesting inside it


def _check_limits(text: str, file: str) -> dict[int, str]:
    """Walk the parser's events (nothing is built) and refuse a document beyond the limits.
    Returns the key path of each scalar by its offset, to name a value its tag refuses."""
    paths: dict[int, str] = {}
    stack: list[_Open] = []
    anchors: dict[str, tuple[int, int]] = {}  # name -> (values, depth) of the anchored node
    nodes = 0

    def refuse(event: Any, path: str, expected: str, got: str) -> ConfigError:
        line = event.start_mark.line + 1
        where = path or f"line {line}, column {event.start_mark.column + 1}"
        return ConfigError(file, where, expected, got, line=line)

    def child_path() -> str:
        if not stack:
            return ""
        top = stack[-1]
        if top.mapping:
            return top.path if top.key is None else (f"{top.path}.{top.key}" if top.path else top.key)
        return f"{top.path}[{top.items}]"

    def added(event: Any, size: int, depth: int, path: str) -> None:
        """A value of `size` values and `depth` levels was added to the open collection."""
        nonlocal nodes
        nodes += size
        if nodes > MAX_NODES:
            got = f"more than {MAX_NODES}" + (" once its aliases are expanded" if anchors else "")
            raise refuse(event, path, f"a document of at most {MAX_NODES} values", got)
        if len(stack) + depth > MAX_DEPTH:
            raise refuse(event, path, f"at most {MAX_DEPTH} levels of nesting", "a deeper value")
        if not stack:
            return
        top = stack[-1]
        top.depth_below = max(top.depth_below, depth)  # passed on up when `top` ends
        if top.mapping and top.key is None:  # this value is a key
            top.key = event.value if isinstance(event, yaml.ScalarEvent) else "?"
            return
        top.key = None
        top.items += 1
        if top.items > MAX_ITEMS:
            raise refuse(event, top.path, f"at most {MAX_ITEMS} entries", f"more than {MAX_ITEMS}")

    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, yaml.ScalarEvent):
            path = child_path()
            if len(event.value) > MAX_SCALAR:
                raise refuse(
                    event, path, f"a value of at most {MAX_SCALAR} characters", f"{len(event.value)} characters"
                )
            if event.anchor is not None:
                anchors[event.anchor] = (1, 0)
            added(event, 1, 0, path)
            if path:
                paths[event.start_mark.index] = path
        elif isinstance(event, yaml.CollectionStartEvent):
            path = child_path()
            if len(stack) >= MAX_DEPTH:
                raise refuse(event, path, f"at most {MAX_DEPTH} levels of nesting", "a deeper value")
            mapping = isinstance(event, yaml.MappingStartEvent)
            stack.append(_Open(path, mapping, anchor=event.anchor, nodes_before=nodes))
            if event.anchor is not None:
                anchors.pop(event.anchor, None)  # redefined: an alias inside it is recursive
        elif isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            size, depth = nodes - done.nodes_before + 1, done.depth_below + 1
            if done.anchor is not None:
                anchors[done.anchor] = (size, depth)
            nodes = done.nodes_before
            added(event, size, depth, done.path)
        elif isinstance(event, yaml.AliasEvent):
            path = child_path()
            if event.anchor not in anchors:
                if any(open_.anchor == event.anchor for open_ in stack):
                    raise refuse(
                        event, path, "an alias to a complete value, not to one that contains it", f"*{event.anchor}"
                    )
                continue  # an undefined alias: the composer reports it
            size, depth = anchors[event.anchor]
            added(event, size, depth, path)
    return paths


# --------------------------------------------------------------------------- values


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def mapping(
    value: object, path: str, allowed: Collection[str], *, required: Collection[str] = (), expected: str | None = None
) -> dict[str, Any]:
    """`value` as a mapping whose keys are all in `allowed` and include `required`."""
    keys = ", ".join(sorted(allowed) if isinstance(allowed, (set, frozenset)) else allowed)
    if not isinstance(value, dict):
        raise Invalid(path, expected or f"a mapping with keys {keys}", value)
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            where = path or "the top level"
            raise Invalid(join(path, str(key)), f"a key allowed in {where} ({keys})", key)
    for key in sorted(required):
        if key not in value:
            raise Invalid(join(path, key), "a value", MISSING)
    return value


def items(value: object, path: str, expected: str) -> list[Any]:
    """`value` as a non-empty list."""
    if not isinstance(value, list) or not value:
        raise Invalid(path, expected, value)
    return value


def repeated(values: Iterable[Hashable]) -> int | None:
    """The index of the first value that was already listed before it, or None."""
    seen: set[Hashable] = set()
    for i, value in enumerate(values):
        if value in seen:
            return i
        seen.add(value)
    return None


def integer(value: object, path: str, low: int, high: int, *, expected: str | None = None) -> int:
    """An integer from `low` to `high` (`expected` says what it stands for)."""
    # bool is a subclass of int: YAML's `yes`/`true` must not pass as a number.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(path, expected or f"an integer from {low} to {high}", value)
    return value


def seconds(value: object, path: str, minimum: float | None = None) -> float:
    """A finite number of seconds, at least `minimum` if given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Invalid(path, "a number of seconds", value)
    if minimum is not None and value < minimum:
        raise Invalid(path, f"a number of seconds at least {minimum:g}", value)
    return float(value)


@dataclass(frozen=True)
class Endpoint:
    """A TCP endpoint. `host` is an IP address (IPv6 without brackets) or a host name."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def endpoint(value: object, path: str, *, ip_only: bool) -> Endpoint:
    """Parse "host:port" / "[v6]:port"; `ip_only` refuses host names (listen addresses)."""
    if not isinstance(value, str):
        raise Invalid(path, '"host:port" as quoted text (IPv6 as "[::1]:2404")', value)
    host, colon, port_text = value.rpartition(":")
    if not colon or not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise Invalid(path, '"host:port" with a port from 1 to 65535', value)
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        try:
            return Endpoint(str(ipaddress.IPv6Address(host[1:-1])), port)
        except ValueError:
            raise Invalid(path, 'an IPv6 address in brackets, as "[::1]:2404"', value) from None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if ip_only:
            raise Invalid(path, 'an IP address and port, as "0.0.0.0:2404" or "[::]:2404"', value) from None
        if not _is_hostname(host):
            raise Invalid(path, "an IP address or host name, then ':' and a port", value) from None
        return Endpoint(host.lower(), port)
    if ip.version == 6:
        raise Invalid(path, 'an IPv6 address in brackets, as "[::1]:2404"', value)
    return Endpoint(str(ip), port)


_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _is_hostname(host: str) -> bool:
    labels = host.split(".")
    # An all-digit last label is a mistyped IPv4 address (e.g. 192.0.2.300), not a name.
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def network(value: object, path: str) -> IPNetwork:
    """An IP address or network without host bits ("10.1.0.10", "10.1.0.0/24")."""
    expected = 'an IP address or network, as "10.1.0.10" or "10.1.0.0/24"'
    if not isinstance(value, str):
        raise Invalid(path, expected, value)
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Invalid(path, expected, value) from None
    raise Invalid(path, f"a network without host bits ({loose}?)", value)


# ------------------------------------------------------------------------------ start-up failures
class StartupError(Exception):
    """An expected failure at start, not a bug: said in one line (where: what was wrong;
    the remedy) with an exit status of its own (README, "Exit statuses"), never with a
    traceback. Every command's main goes through `run_main`, which prints it."""

    status = 1

    def __init__(self, where: str, problem: str, remedy: str) -> None:
        super().__init__(where, problem, remedy)
        self.where = where
        self.problem = problem
        self.remedy = remedy

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}; {self.remedy}"


class AddressInUse(StartupError):
    status = 3


class AddressNotHere(StartupError):
    status = 4


class MissingTool(StartupError):
    status = 5


class PermissionRefused(StartupError):
    status = 6


class KernelLacks(StartupError):
    status = 7


EXIT_CONFIG = 2  # ConfigError: the file, the key, what was expected
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2, what a shell reports for a process SIGINT ended
INTERRUPTED = "interrupted (Ctrl-C): stopped"


def os_failure(exc: OSError, where: str, doing: str) -> StartupError | OSError:
    """The start-up failure an OSError met while `doing` (e.g. "listening on
    127.0.0.1:2404") stands for; `exc` itself if it is none of the expected ones."""
    reason = f"{doing} failed: {exc.strerror or exc}"
    code = exc.errno
    if code == errno.EADDRINUSE:
        return AddressInUse(where, f"{reason} (another process holds it)",
                            "stop that process or choose another port")  # fmt: skip
    if code == errno.EADDRNOTAVAIL:
        return AddressNotHere(where, f"{reason} (no interface of this host has that address)",
                              "use an address of this host (ip -brief address) or 0.0.0.0")  # fmt: skip
    if code in (errno.EACCES, errno.EPERM):
        return PermissionRefused(where, f"{reason} (not allowed to this process)",
                                 "run it as root or with the capability it needs (ports below 1024: "
                                 "CAP_NET_BIND_SERVICE), or choose a port from 1024")  # fmt: skip
    if code in (errno.ENOPROTOOPT, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.ENOSYS, errno.EOPNOTSUPP):
        return KernelLacks(where, f"{reason} (this kernel lacks the feature)",
                           "use a kernel built with it, or configure without it")  # fmt: skip
    return exc


def expected_failure(exc: BaseException) -> StartupError | ConfigError | None:
    """The one expected failure `exc` is, looking inside exception groups (a trio nursery
    wraps what its task raised); None if it is anything else (a bug: let it show)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, (StartupError, ConfigError)) else None


def interrupted(exc: BaseException) -> bool:
    """Whether `exc` is Ctrl-C: a KeyboardInterrupt, or exception groups holding nothing
    else (trio wraps the KeyboardInterrupt it delivers in the groups of the nurseries it
    crosses)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(KeyboardInterrupt)[1] is None
    return isinstance(exc, KeyboardInterrupt)


def run_main(main: Callable[[], int], stderr: TextIO | None = None) -> int:
    """Run a command's main: an expected failure is one line on stderr and its exit
    status (a `ConfigError` is "configuration error: ..." and EXIT_CONFIG); Ctrl-C is
    one line and EXIT_INTERRUPTED. A command that stops cleanly on SIGINT itself (a
    signal receiver) raises KeyboardInterrupt once stopped, to end the same way."""
    out = stderr or sys.stderr
    try:
        return main()
    except BaseException as exc:  # noqa: BLE001 (re-raised unless expected)
        if interrupted(exc):
            print(INTERRUPTED, file=out)
            return EXIT_INTERRUPTED
        failure = expected_failure(exc)
        if failure is None:
            raise
        if isinstance(failure, ConfigError):
            print(f"configuration error: {failure}", file=out)
            return EXIT_CONFIG
        print(failure, file=out)
        return failure.status


# --------------------------------------------------------------------------- counting
# Not configuration, but a primitive both the relay and the link manager count in (their
# exporters read it, monitoring/primitives.py): here, at the bottom both may import.


@dataclass
class Histogram:
    """Cumulative-on-read histogram: observe() is one bisect and two additions."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # one per bound, then +Inf
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1
