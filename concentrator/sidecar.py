"""One way to run a feature's child process: start, configure, frame, restart, stop.

Every feature that must not take the relay's event loop or GIL (the MQTT mirror, the
shedding monitor, the incident register, the metrics exporter) runs in a child process
of the relay, at a lower CPU priority, fed through a pipe. Each used to do it by hand,
with its own frame format and restart policy. Here is the one way:

- `command(module, *args)`: the child's command line. The child lowers its priority
  (NICE) before it imports anything, so that even its start-up (prometheus_client,
  sqlite3, paho) does not take the CPU from the relay.
- Messages: 4-octet big-endian length, then the payload. The first message to a child is
  its configuration, a pickle (`message`; `ChildPipe.config` in the child): our own pipe,
  nothing from the network is ever unpickled.
- Records: every record after it is a message with one header, `RECORD`: sequence
  number (0 when the user does not number), wall time, kind (the user's), site name
  length (0: none), the name, the body (`encode`, `Records` to read them back).
- `Backoff`: when to restart a child that exited. Sans-I/O, `now` in, a delay out, so
  that the policy is tested once for every user with injected time
  (tests/unit/test_sidecar.py).
- `Sidecar`: the relay's trio task that starts the child, hands it its configuration,
  runs the user's session (what to write, what to read back) until the child exits or
  the pipe breaks, then stops the child cleanly (close its stdin: its end of file is
  "stop"; after `stop_timeout` kill it) and restarts it after the policy's delay. It
  counts restarts, records written, and records dropped (written into a pipe that broke).

Why a session and not a queue the sidecar drains: the users write in ways that are
their own semantics, not the pipe's (the mirror batches from its QoS queue and writes
site statuses beside it; the shedding monitor sends its replay ring before anything new;
the incident register merges link events ahead of the ASDUs they precede). So the
sidecar owns the process, the pipe, the format, the policy and the counts, and calls
the user's session with a `Child` to write to; the session runs as long as the child.

What differs between users stays with them, because it is their semantics and not
the pipe's: the mirror's QoS queue and staleness figure, the shedding monitor's numbered
copies, replay ring and `Hello`, the incident register's link snapshot, the exporter's
snapshot-on-request over a socketpair (it does not restart: a new child would have to bind
the metrics port again). The taps that buffer copies for a child while none runs count
their own drops: what they hold is theirs.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import trio

log = logging.getLogger(__name__)

LENGTH = struct.Struct(">I")
# After the length: sequence number, wall time, kind, site name length.
RECORD = struct.Struct(">IQdBB")
# A child at the relay's own priority competes with it for the CPU: measured for the
# mirror at 4,800 ASDU/s, the relay's median latency tripled
# (SCHED_IDLE was tried: no better, worse tails). At +10 the kernel gives the relay the
# CPU when it wants it, and a starved child falls behind into its bounded queue.
NICE = 10
STOP_TIMEOUT = 5.0  # seconds a child has to finish after its stdin closed (the mirror says goodbye to its broker)


def command(module: str, *args: str) -> list[str]:
    """The command line of a child whose entry point is `module.main()`."""
    code = f"import os; os.nice({NICE}); from {module} import main; raise SystemExit(main())"
    return [sys.executable, "-c", code, *args]


def message(payload: object) -> bytes:
    """A pickled message: the configuration handed to a child, a snapshot."""
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(data)) + data


def receive_message(sock: socket.socket) -> Any:
    """One pickled message from a blocking socket (the exporter's socketpair)."""
    (length,) = LENGTH.unpack(_receive_exactly(sock, LENGTH.size))
    return pickle.loads(_receive_exactly(sock, length))  # noqa: S301 (between the relay and its child only)


async def receive_message_async(sock: trio.socket.SocketType) -> Any:
    """One pickled message from a trio socket."""
    (length,) = LENGTH.unpack(await _receive_exactly_async(sock, LENGTH.size))
    return pickle.loads(await _receive_exactly_async(sock, length))  # noqa: S301 (between the relay and its child only)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


async def _receive_exactly_async(sock: trio.socket.SocketType, size: int) -> bytes:
    chunks = []
    while size:
        chunk = await sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class Record(NamedTuple):
    seq: int
    when: float
    kind: int
    site: str
    body: bytes


def encode(site: str, body: bytes, when: float, seq: int = 0, kind: int = 0) -> bytes:
    name = site.encode()
    return RECORD.pack(RECORD.size - 4 + len(name) + len(body), seq, when, kind, len(name)) + name + body


class Records:
    """Sans-I/O reader of a byte stream of messages: `feed(data)`, then `next_message()`
    until None, or `next_record()` for the records after the configuration."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> bytes | None:
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        (size,) = LENGTH.unpack_from(buffer)
        if len(buffer) < 4 + size:
            return None
        payload = bytes(buffer[4 : 4 + size])
        del buffer[: 4 + size]
        return payload

    def next_record(self) -> Record | None:
        buffer = self._buffer
        if len(buffer) < RECORD.size:
            return None
        size, seq, when, kind, name_length = RECORD.unpack_from(buffer)
        if len(buffer) < 4 + size:
            return None
        rest = bytes(buffer[RECORD.size : 4 + size])
        del buffer[: 4 + size]
        return Record(seq, when, kind, rest[:name_length].decode(), rest[name_length:])


def decode(frames: bytes) -> list[Record]:
    """The records in `frames`, which must hold whole records only (tests, benchmarks)."""
    reader = Records()
    reader.feed(frames)
    out = []
    while (record := reader.next_record()) is not None:
        out.append(record)
    if reader._buffer:
        raise ValueError(f"{len(reader._buffer)} octets after the last whole record")
    return out


class ChildPipe:
    """The child's side of its stdin: the configuration, then the records, until the
    relay closes the pipe (the request to stop)."""

    def __init__(self, fd: int = 0) -> None:
        self._stream = trio.lowlevel.FdStream(os.dup(fd))
        self._reader = Records()

    async def _more(self) -> bool:
        chunk = await self._stream.receive_some(65536)
        self._reader.feed(chunk)
        return bool(chunk)

    async def config(self) -> Any:
        """The configuration, or None if the relay closed the pipe first."""
        while (payload := self._reader.next_message()) is None:
            if not await self._more():
                return None
        return pickle.loads(payload)  # noqa: S301 (our parent's pipe)

    async def records(self) -> AsyncIterator[Record]:
        while True:
            while (record := self._reader.next_record()) is not None:
                yield record
            if not await self._more():
                return


@dataclass
class Backoff:
    """When to start a child again after it exited: `first` seconds, multiplied by
    `factor` after each exit up to `most`; a child that ran at least `healthy_after`
    seconds counts as healthy, and the next delay is `first` again. So a child that cannot
    start (no writable record directory) is retried less and less often, and one that ran
    for a while is restarted soon. `factor` 1 is a fixed delay."""

    first: float = 1.0
    most: float = 60.0
    factor: float = 2.0
    healthy_after: float = 60.0
    restarts: int = field(default=0, init=False)
    _next: float = field(default=0.0, init=False, repr=False)
    _started: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = self.first

    def started(self, now: float) -> None:
        self._started = now

    def exited(self, now: float) -> float:
        """The child exited at `now`: seconds to wait before starting it again."""
        self.restarts += 1
        if now - self._started >= self.healthy_after:
            self._next = self.first
        delay = self._next
        self._next = min(delay * self.factor, self.most)
        return delay


class Child:
    """One running child, as its user's session sees it."""

    def __init__(self, owner: Sidecar, process: trio.Process) -> None:
        assert process.stdin is not None
        self.owner = owner
        self.process = process
        self.stdin = process.stdin
        self.stdout = process.stdout  # with Sidecar(..., stdout=True)
        self._lock = trio.Lock()  # several tasks of a session may write

    async def send(self, records: Sequence[bytes]) -> None:
        """Write records (`encode`d) to the child, in one write."""
        if not records:
            return
        async with self._lock:
            try:
                await self.stdin.send_all(b"".join(records))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.owner.dropped += len(records)
                raise
        self.owner.records += len(records)


Session = Callable[[Child], Awaitable[None]]


class Sidecar:
    """In the relay: runs one feature's child for as long as the relay runs (see the
    module's docstring). `config()` is called at each start: its value, pickled, is the
    child's first message."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        config: Callable[[], object],
        *,
        policy: Backoff | None = None,
        stdout: bool = False,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.name = name
        self.argv = argv
        self.config = config
        self.policy = policy or Backoff()
        self.stdout = stdout
        self.stop_timeout = stop_timeout
        self.records = 0  # written to a child
        self.dropped = 0  # written into a pipe that broke: lost with that child

    @property
    def restarts(self) -> int:
        return self.policy.restarts

    async def run(self, session: Session) -> None:
        while True:
            self.policy.started(trio.current_time())
            reason = "exited"
            try:
                await self._once(session)
            except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
                reason = "; ".join(str(exc) for exc in group.exceptions)
            delay = self.policy.exited(trio.current_time())
            log.warning("%s process: %s; restarting in %.1f s", self.name, reason, delay)
            await trio.sleep(delay)

    async def _once(self, session: Session) -> None:
        process = await trio.lowlevel.open_process(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE if self.stdout else None
        )
        child = Child(self, process)
        try:
            await child.stdin.send_all(message(self.config()))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, process)
                await session(child)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(child.stdin)  # end of file: the child's "stop"
                with trio.move_on_after(self.stop_timeout):
                    await process.wait()
                process.kill()
                await process.wait()

    @staticmethod
    async def _watch(process: trio.Process) -> None:
        status = await process.wait()
        raise trio.BrokenResourceError(f"exited with status {status}")


def run_child(name: str, child_main: Callable[[], Awaitable[None]]) -> None:
    """A child's entry point: log lines named after it, its trio loop, and a quiet end
    when the relay stops it (Ctrl-C on the terminal, or SystemExit out of its tasks)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {name}: %(message)s")
    try:
        trio.run(child_main)
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:
        if not group.subgroup(SystemExit):
            raise
