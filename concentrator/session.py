"""Drives one IEC 104 `Link` over one trio stream.

One task reads and feeds the link; one task writes what the link has to send and runs
its timers. Code elsewhere that makes the link send something (a forwarded ASDU, an
acknowledgement) calls `wake()`; the writer then flushes everything pending in one
`send_all`, which batches the frames of a burst into few TCP segments.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable

import trio

from .iec104.link import Event, Link, LinkFailed

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536


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

    def wake(self) -> None:
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
        while True:
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise SessionEnded("closed by peer")
            self.link.receive_data(data, trio.current_time())
            self._dispatch()
            self._wakeup.set()

    async def _write(self) -> None:
        while True:
            data = self.link.data_to_send()
            if data:
                await self.stream.send_all(data)
            deadline = self.link.get_timer()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wakeup.wait()
            # Replace the event before draining, so that a wake() from now on is not lost.
            self._wakeup = trio.Event()
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                self.link.handle_timer(now)
                self._dispatch()

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
