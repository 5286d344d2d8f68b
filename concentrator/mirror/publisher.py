"""Publish the mirror queue to an MQTT broker: paho-mqtt 2.x driven from trio.

paho runs here with an external loop: its socket callbacks tell us the socket and when
it wants to write; trio waits on the socket and calls `loop_read` / `loop_write`, and
`loop_misc` once a second for keepalive. The blocking part of connecting (TCP, TLS
handshake) runs in a worker thread. Every paho call after that happens in trio's thread.

Back-pressure: at most MAX_IN_FLIGHT messages are handed to paho and not yet completed
(written, for QoS 0; PUBCOMP, for QoS 2). Past that we stop taking from the queue, so
a slow or absent broker fills the bounded `MirrorQueue` (which drops oldest cyclic
measurements first) and never paho's unbounded internal queue, and never the relay.

The client subscribes to nothing: no MQTT message can reach the relay or a site.
"""

from __future__ import annotations

import datetime
import json
import logging
import socket
import ssl
import time
from typing import Any

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from concentrator.iec104.asdu import AsduHeader
from concentrator.iec104.decode import MEASUREMENT_KINDS, DecodedAsdu, DecodeError, ValueKind, decode_asdu

from .config import MqttConfig
from .queue import MirrorQueue
from .stats import MirrorStats

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 200
CONNACK_TIMEOUT = 10.0
RETRY_MIN = 0.5
RETRY_MAX = 30.0
# Measurements are QoS 0 (section 6.3), as are integrated totals; the rest is QoS 2.
QOS0_KINDS = MEASUREMENT_KINDS | {ValueKind.COUNTER}


class MqttUnavailable(Exception):
    """The broker refused us, or the connection broke."""


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """TLS 1.2 at least (section 6.4), the broker's certificate verified against our CA
    and its name, our own X.509 certificate offered."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return context


def topic(config: MqttConfig, site: str, common_address: int, ioa: int) -> str:
    return f"{config.prefix}/{config.area(site)}/{site}/{common_address}/{ioa}"


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def messages(config: MqttConfig, asdu: bytes, site: str, received: str) -> tuple[list[tuple[str, bytes, int]], bool]:
    """(topic, JSON payload, QoS) per information object, and whether decoding failed
    (then one QoS 2 message carries the raw ASDU: command confirmations and any type the
    decoder does not know are still mirrored)."""
    header = AsduHeader.parse(asdu)
    common: dict[str, Any] = {
        "site": site,
        "area": config.area(site),
        "common_address": header.common_address,
        "type_id": header.type_id,
        "cause": header.cause,
        "negative": header.negative,
        "test": header.test,
        "originator": header.originator,
        "received": received,
    }
    try:
        decoded: DecodedAsdu = decode_asdu(asdu)
    except DecodeError:
        ioa = int.from_bytes(asdu[6:9], "little") if len(asdu) >= 9 else 0
        payload = {**common, "ioaddress": ioa, "value": None, "asdu": asdu.hex()}
        return [(topic(config, site, header.common_address, ioa), _json(payload), 2)], True
    out = []
    for obj in decoded.objects:
        quality = obj.quality
        time_tag = obj.time
        payload = {
            **common,
            "type": decoded.type_name,
            "ioaddress": obj.address,
            "value": obj.value,
            "quality": None
            if quality is None
            else {
                "raw": quality.raw,
                "iv": quality.iv,
                "nt": quality.nt,
                "sb": quality.sb,
                "bl": quality.bl,
                "ov": quality.ov,
            },  # fmt: skip
            "timetag": None if time_tag is None else time_tag.isoformat(),
            "timetag_invalid": None if time_tag is None else time_tag.invalid,
        }
        if obj.extra:
            payload.update(obj.extra)
        critical = config.is_critical(site, obj.address)
        qos = 0 if decoded.kind in QOS0_KINDS and not critical else 2
        out.append((topic(config, site, header.common_address, obj.address), _json(payload), qos))
    return out, False


def _json(payload: dict[str, Any]) -> bytes:
    # NaN/inf floats (a device can send them) would make invalid JSON: send them as text.
    value = payload.get("value")
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        payload["value"] = str(value)
    return json.dumps(payload, separators=(",", ":")).encode()


class MqttMirror:
    """Runs forever: connect, publish what the queue holds, reconnect after a failure."""

    def __init__(self, config: MqttConfig, queue: MirrorQueue, stats: MirrorStats) -> None:
        self.config = config
        self.queue = queue
        self.stats = stats
        # Relay clock -> wall clock, for the "received" time of each ASDU; not needed
        # when the queue already holds wall-clock times (the mirror process, process.py).
        self.wall_clock_input = False
        self._wall_offset: float | None = None

    async def run(self) -> None:
        self._wall_offset = 0.0 if self.wall_clock_input else time.time() - trio.current_time()
        delay = RETRY_MIN
        while True:
            session: _Session | None = None
            try:
                session = _Session(self)  # reads the TLS files: may fail too
                await session.run()
            except (OSError, ssl.SSLError, MqttUnavailable) as exc:
                self._failed(session, exc)
                log.warning("MQTT broker %s: %s; retrying in %.1f s", self.config.broker, exc, delay)
            except Exception as exc:
                # A bug or a surprise from paho must not take the relay down with the
                # mirror (they share a nursery): log it and start again.
                self._failed(session, exc)
                log.exception("MQTT mirror failed; retrying in %.1f s", delay)
            finally:
                if session is not None:
                    session.close()
                self.stats.connected = False
            if session is not None and session.connected_once:
                delay = RETRY_MIN  # it worked until now: come back quickly
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _failed(self, session: _Session | None, exc: Exception) -> None:
        if session is None or not session.connected_once:
            self.stats.connect_failures += 1
        self.stats.last_error = str(exc) or type(exc).__name__


class _Session:
    """One connection to the broker, with a fresh paho client (clean session)."""

    def __init__(self, mirror: MqttMirror) -> None:
        self.mirror = mirror
        self.config = mirror.config
        self.stats = mirror.stats
        self.sock: socket.socket | None = None
        self.connected_once = False
        self._connack: tuple[bool, str] | None = None
        self._lost: str | None = None
        self._write_wanted = trio.Event()
        self._pending: dict[int, int] = {}  # paho message id -> QoS, handed over, not completed
        self._progress = trio.Event()
        self._trio_thread = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.config.client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        client.tls_set_context(tls_context(self.config))
        client.username_pw_set(self.config.username, self.config.password)
        client.max_inflight_messages_set(MAX_IN_FLIGHT)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    # paho callbacks: called inside paho calls; during connect() that is a worker
    # thread, so they only set plain attributes, and trio objects only from trio's thread.
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.sock = sock

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._lost = self._lost or "socket closed"

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._trio_thread:
            self._write_wanted.set()

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        pass

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connack = (not reason.is_failure, str(reason))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._lost = f"disconnected ({reason})"

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        qos = self._pending.pop(mid, None)
        if qos == 0:
            self.stats.published_qos0 += 1
        elif qos == 2:
            self.stats.published_qos2 += 1
        if self._trio_thread:
            self._progress.set()

    # ------------------------------------------------------------------ the session
    async def run(self) -> None:
        broker = self.config.broker
        # paho's connect blocks (TCP, TLS handshake; its own 5 s timeout). Abandoned on
        # cancellation, so that stopping the relay never waits for an unreachable broker.
        await trio.to_thread.run_sync(
            self.client.connect, broker.host, broker.port, self.config.keepalive, abandon_on_cancel=True
        )
        self._trio_thread = True
        if self.sock is None:
            raise MqttUnavailable("no socket after connect")
        try:
            await self._connected()
        except BaseExceptionGroup as group:
            # The first failure of one of the tasks (the others were cancelled by it).
            failures, rest = group.split((OSError, ssl.SSLError, MqttUnavailable))
            if rest is not None or failures is None:
                raise
            first: BaseException = failures
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from group

    async def _connected(self) -> None:
        broker = self.config.broker
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader)
            nursery.start_soon(self._writer)
            nursery.start_soon(self._misc)
            self._flush()
            with trio.move_on_after(CONNACK_TIMEOUT) as wait:
                while self._connack is None:
                    await self._wait_progress()
            if wait.cancelled_caught:
                raise MqttUnavailable("no CONNACK")
            assert self._connack is not None
            accepted, reason = self._connack
            if not accepted:
                raise MqttUnavailable(f"refused: {reason}")
            self.connected_once = True
            self.stats.connected = True
            self.stats.connects += 1
            log.info("MQTT mirror connected to %s", broker)
            await self._publisher()

    def _check(self, rc: MQTTErrorCode) -> None:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._lost is not None:
            raise MqttUnavailable(self._lost or f"connection lost ({rc.name})")

    async def _wait_progress(self) -> None:
        await self._progress.wait()
        self._progress = trio.Event()

    async def _reader(self) -> None:
        assert self.sock is not None
        sock = self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            self._check(self.client.loop_read())
            # TLS may hold whole records already decrypted: the socket will not become
            # readable again for them.
            while isinstance(sock, ssl.SSLSocket) and sock.pending():
                self._check(self.client.loop_read())
            self._progress.set()
            self._flush()

    def _flush(self) -> None:
        if self.client.want_write():
            self._write_wanted.set()

    async def _writer(self) -> None:
        assert self.sock is not None
        while True:
            await self._write_wanted.wait()
            self._write_wanted = trio.Event()
            while self.client.want_write():
                await trio.lowlevel.wait_writable(self.sock)
                self._check(self.client.loop_write())

    async def _misc(self) -> None:
        while True:
            await trio.sleep(1.0)
            self._check(self.client.loop_misc())
            self._flush()

    async def _publisher(self) -> None:
        wall_offset = self.mirror._wall_offset or 0.0
        queue = self.mirror.queue
        while True:
            while len(self._pending) >= MAX_IN_FLIGHT:
                await self._wait_progress()
            entry = queue.pop()
            if entry is None:
                await queue.wait()
                continue
            try:
                out, failed = messages(self.config, entry.asdu, entry.site, _iso(entry.received_at + wall_offset))
            except Exception:  # never let one odd ASDU stop the mirror
                log.exception("mirror: cannot encode an ASDU of type %d from %s", entry.asdu[0], entry.site)
                self.stats.decode_errors += 1
                continue
            if failed:
                self.stats.decode_errors += 1
            for name, payload, qos in out:
                info = self.client.publish(name, payload, qos=qos)
                self._check(info.rc)
                # With an external loop paho only queues here; on_publish comes from
                # loop_write (QoS 0) or loop_read (PUBCOMP), later.
                self._pending[info.mid] = qos
            self._flush()
            await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self._trio_thread = False
        if self._pending:
            self.stats.dropped_in_flight += len(self._pending)
            self._pending.clear()
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
