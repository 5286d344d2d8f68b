"""Drives one IEC 104 `Link` over one trio stream: the own-codec test peers' driver
(codec_peers.py). The relay has its own driver around its core (concentrator/relay/driver.py).

One task reads and feeds the link; one task writes what the link has to send and runs
its timers. Code elsewhere that makes the link send something (a forwarded ASDU, an
acknowledgement) calls `wake()`.

On a socket the hot path takes no extra task switch: `wake()` called while a reader
dispatches a received chunk only marks the session, and when the chunk is done every
marked session writes what its link has, in one non-blocking write per session,
straight from the reader's task. The writer task takes over only when the socket would
block (it then waits until writable and sends the rest, before anything newer) and for
the link's timers. Other streams (memory streams in tests) go through the writer task
and `send_all`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable

import trio

from concentrator.iec104.link import Event, Link, LinkFailed
from concentrator.relay.fdio import write_all

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536

# Sessions woken while a reader dispatches one received chunk; flushed when it is done.
# Handlers are synchronous and trio runs one task at a time, so one list is enough.
_batch: list[LinkSession] | None = None


class SessionEnded(Exception):
    pass


def set_nodelay(stream: trio.abc.Stream) -> None:
    """Frames are small and latency matters more than segment count."""
    if isinstance(stream, trio.SocketStream):
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LinkSession:
    def __init__(
        self,
        stream: trio.abc.Stream,
        link: Link,
        handler: Callable[[LinkSession, Event], None],
        label: str,
    ) -> None:
        self.stream = stream
        self.link = link
        self.label = label
        self.closed = False
        self.close_reason = ""
        self._handler = handler
        self._wakeup = trio.Event()
        self._cancel_scope = trio.CancelScope()
        # Socket fast path: the file descriptor, bytes taken from the link but not yet
        # written, whether the writer task is sending, and the deadline it sleeps until.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self._unsent = b""
        self._sending = False
        self._timer_at = math.inf
        self._batched = False

    def wake(self) -> None:
        """The link has something to send (or a new deadline): get it out soon."""
        if _batch is not None:
            if not self._batched:
                self._batched = True
                _batch.append(self)
        else:
            self._flush()

    def _flush(self) -> None:
        """Write what the link has now if the socket takes it without blocking; leave the
        rest, and anything the writer task must do, to the writer task."""
        if self._fd < 0 or self._sending or self._unsent or self.closed:
            self._wakeup.set()
            return
        data = self.link.data_to_send()
        if data:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                written = 0  # the writer meets the error again and ends the session
            if written < len(data):
                self._unsent = data[written:]
                self._wakeup.set()
                return
        deadline = self.link.get_timer()
        if deadline is not None and deadline < self._timer_at:
            self._wakeup.set()

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
        self._cancel_scope.cancel()

    async def run(self) -> str:
        """Serve the connection until it ends; returns why it ended. Closes the stream."""
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read)
                    nursery.start_soon(self._write)
        except* SessionEnded as group:
            self._mark_closed(str(_first(group)))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            self._mark_closed(f"connection error: {_first(group)!r}")
        finally:
            self.closed = True
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
        return self.close_reason

    def _mark_closed(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason

    async def _read(self) -> None:
        global _batch
        fd = self._fd
        data: bytes | bytearray
        while True:
            if fd >= 0:
                await trio.lowlevel.wait_readable(fd)
                try:
                    data = os.read(fd, RECEIVE_SIZE)
                except BlockingIOError:
                    continue
            else:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise SessionEnded("closed by peer")
            self.link.receive_data(data, trio.current_time())
            batch: list[LinkSession] = []
            _batch = batch
            try:
                self._dispatch()
            finally:
                _batch = None
                for session in batch:
                    session._batched = False
                    session._flush()
            self._flush()

    async def _write(self) -> None:
        while True:
            if self._fd >= 0:
                await self._send_pending()
            else:
                data = self.link.data_to_send()
                if data:
                    await self.stream.send_all(data)
            deadline = self.link.get_timer()
            self._timer_at = math.inf if deadline is None else deadline
            with trio.move_on_at(self._timer_at):
                await self._wakeup.wait()
            # Replace the event before draining, so that a wake() from now on is not lost.
            self._wakeup = trio.Event()
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                self.link.handle_timer(now)
                self._dispatch()

    async def _send_pending(self) -> None:
        """Send the unsent rest, then what the link has, waiting while the socket is full."""
        self._sending = True
        try:
            data = self._unsent + self.link.data_to_send()
            self._unsent = b""
            await write_all(self._fd, data)
        finally:
            self._sending = False

    def _dispatch(self) -> None:
        while (event := self.link.next_event()) is not None:
            if isinstance(event, LinkFailed):
                raise SessionEnded(event.reason)
            if self.closed:
                continue
            try:
                self._handler(self, event)
            except Exception:
                # A bug met on one connection must not take the others down with it.
                log.exception("%s: handling %r failed; closing this connection", self.label, event)
                raise SessionEnded(f"internal error handling {type(event).__name__}") from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception inside a (possibly nested) exception group."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
