"""Publish the mirror queue to an MQTT broker over MQTT 5: paho-mqtt 2.x driven from trio.

paho runs here with an external loop: its socket callbacks tell us the socket and when
it wants to write; trio waits on the socket and calls `loop_read` / `loop_write`, and
`loop_misc` once a second for keepalive. The blocking part of connecting (TCP, TLS
handshake) runs in a worker thread. Every paho call after that happens in trio's thread.

MQTT 5, because 3.1.1 cannot say what the broker did with a message:
- the broker's Receive Maximum (CONNACK) caps paho's QoS 2 messages in flight: past its
  in-flight limit Mosquitto discards publishes ("quota exceeded") without telling;
- a PUBREC with a failure reason code (an ACL refusal) is counted and logged with the
  topic; paho 2.2 ignores it, so `MirrorClient` handles it;
- one paho client for the process's life, clean start only on its first connection and
  a session expiry interval: QoS 2 messages in flight when a connection breaks are sent
  again (PUBLISH or PUBREL) and completed on the next one. Receive Maximum covers those
  too: paho 2.2 would send every message it holds at once after CONNACK (its count of
  messages in flight restarts at zero), so `MirrorClient.resume_within` leaves no more
  than Receive Maximum to go out and queues the rest (Mosquitto refuses the excess
  with 0x97, quota exceeded, and the message is lost);
- a 0x97 refusal is flow control, not a verdict: the message is queued again and sent
  when a message in flight completes (or at the next second).

Back-pressure: at most MAX_IN_FLIGHT messages are handed to paho and not yet settled
(see ledger.py). Past that we stop taking from the queue, so a slow or absent broker
fills the bounded `MirrorQueue` (which drops oldest cyclic measurements first) and
never paho's unbounded internal queue, and never the relay.

The client subscribes to nothing: no MQTT message can reach the relay or a site.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion, MessageState, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .config import MqttConfig
from .ledger import Ledger, Pending
from .payload import iso, messages, mirror_status_topic, site_status_topic
from .queue import MirrorQueue
from .stats import MirrorStats

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 200
QUOTA_EXCEEDED = 0x97  # MQTT 5 reason code: more than Receive Maximum in flight
CONNACK_TIMEOUT = 10.0
RETRY_MIN = 0.5
RETRY_MAX = 30.0
# How long the broker keeps our session (and the QoS 2 messages in it) after a break.
SESSION_EXPIRY = 3600
DISCONNECT_TIMEOUT = 2.0
STATUS_QOS = 1  # retained status messages: the latest one is what matters


class MqttUnavailable(Exception):
    """The broker refused us, or the connection broke."""


class Stopped(Exception):
    """The mirror was asked to stop and has said goodbye to the broker."""


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """TLS 1.2 at least (section 6.4), the broker's certificate verified against our CA
    and its name, our own X.509 certificate offered."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return context


def describe(exc: BaseException) -> str:
    """One line that says which kind of refusal or failure this was."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate failed verification: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "ALERT" in reason:
            # The broker ended the handshake: it did not accept our certificate (unknown
            # CA, expired, revoked, missing) or our TLS version.
            return f"TLS: the broker refused the handshake ({reason}): check our certificate and TLS version"
        return f"TLS error: {reason}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on that port?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _connack_problem(reason: ReasonCode) -> str:
    text = str(reason)
    if reason.value in (0x86, 0x8C):  # bad user name or password, bad authentication method
        return f"refused: bad credentials ({text}): check credentials_file"
    if reason.value == 0x87:
        # Mosquitto 2.0 answers a wrong password with this too.
        return (f"refused: not authorised ({text}): wrong username or password (check credentials_file), "
                "or the broker does not let this user or client id connect")  # fmt: skip
    if reason.value == 0x85:
        return f"refused: client identifier not valid ({text})"
    return f"refused ({text}, reason code {reason.value:#04x})"


class MirrorClient(mqtt.Client):
    """paho's client plus what paho 2.2 does not do for us:

    - a PUBREC with a failure reason code ends that message (the broker refused it and
      keeps no state; paho would send PUBREL and report success at PUBCOMP), except
      quota exceeded (0x97): that message is queued again;
    - after a reconnection, no more messages are sent again than Receive Maximum;
    - every PINGREQ queued and PINGRESP read is reported (QoS 0 confirmation, ledger.py);
    - the socket error behind a lost connection is kept (paho logs it and says only
      "connection lost"), so that a TLS refusal can be named.
    These override paho internals of the 2.x series (pyproject pins paho-mqtt < 3); the
    broker tests would fail if they changed.
    """

    def __init__(self, publisher: MqttMirror, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.publisher = publisher
        self.socket_error: OSError | None = None

    def _handle_pubrec(self) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if self._protocol == mqtt.MQTTv5 and len(packet) > 2 and packet[2] == QUOTA_EXCEEDED:
            mid = int.from_bytes(packet[:2], "big")
            with self._out_message_mutex:
                message = self._out_messages.get(mid)
                if message is not None and message.state == MessageState.MQTT_MS_WAIT_FOR_PUBREC:
                    # Not stored by the broker: it goes out again, as new, when a slot
                    # frees (_update_inflight at the next PUBCOMP, or retry_queued).
                    self._inflight_messages -= 1
                    message.state = MessageState.MQTT_MS_QUEUED
                    message.dup = False
            self.publisher.on_quota_exceeded(mid)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if self._protocol == mqtt.MQTTv5 and len(packet) > 2 and packet[2] >= 0x80:
            mid = int.from_bytes(packet[:2], "big")
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            with self._out_message_mutex:
                message = self._out_messages.pop(mid, None)
                if message is not None:
                    self._inflight_messages -= 1
                    rc = self._update_inflight()
            self.publisher.on_refused(mid, ReasonCode(PacketTypes.PUBREC, identifier=packet[2]))
            return rc
        return super()._handle_pubrec()

    def resume_within(self, limit: int) -> int:
        """Called from on_connect, before paho's CONNACK handler sends again what the
        session holds: at most `limit` QoS 1/2 messages stay to be sent now (PUBRELs
        first, the broker has those; then PUBLISHes sent before; then those never sent),
        the others are queued, and put last, since paho's handler stops at the first
        queued message. Returns how many were queued."""
        ranks = {MessageState.MQTT_MS_RESEND_PUBREL: 0, MessageState.MQTT_MS_PUBLISH: 1}
        zeros = 0  # QoS 0 messages among `now`: not counted by Receive Maximum
        with self._out_message_mutex:
            held = sorted(
                self._out_messages.values(),
                key=lambda m: (m.qos > 0, ranks.get(m.state, 2), not m.dup),  # stable: mid order kept within
            )
            now: list[mqtt.MQTTMessage] = []
            later: list[mqtt.MQTTMessage] = []
            for message in held:
                if message.qos > 0 and len(now) - zeros >= limit:
                    message.state = MessageState.MQTT_MS_QUEUED
                    later.append(message)
                else:
                    zeros += message.qos == 0
                    now.append(message)
            self._out_messages.clear()
            self._out_messages.update((m.mid, m) for m in (*now, *later))
        return len(later)

    def retry_queued(self) -> MQTTErrorCode:
        """Send queued messages if Receive Maximum allows (after a quota refusal, when no
        completion may come to do it)."""
        with self._out_message_mutex:
            return self._update_inflight()

    def _send_pingreq(self) -> MQTTErrorCode:
        rc = super()._send_pingreq()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.publisher.ledger.pingreq_queued()
        return rc

    def _handle_pingresp(self) -> MQTTErrorCode:
        rc = super()._handle_pingresp()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.publisher.ledger.pingresp_read()
        return rc

    def send_fence(self) -> None:
        """A PINGREQ after the QoS 0 messages handed over so far (its answer confirms them)."""
        self._send_pingreq()

    def _sock_recv(self, bufsize: int) -> bytes:
        try:
            return super()._sock_recv(bufsize)
        except BlockingIOError:
            raise
        except OSError as exc:
            self.socket_error = exc
            raise

    def _sock_send(self, buf: bytes | bytearray) -> int:
        try:
            return super()._sock_send(buf)
        except BlockingIOError:
            raise
        except OSError as exc:
            self.socket_error = exc
            raise


@dataclass(frozen=True)
class SiteStatus:
    """What the relay says about a site, published retained (docs/mqtt.md, Availability)."""

    state: str  # online, site down, uplink not started
    detail: str  # the relay's state of the site connection
    since: float  # wall clock


class MqttMirror:
    """Runs until stopped: connect, publish what the queue holds, reconnect after a failure."""

    def __init__(self, config: MqttConfig, queue: MirrorQueue, stats: MirrorStats) -> None:
        self.config = config
        self.queue = queue
        self.stats = stats
        self.ledger = Ledger(stats)
        self.sites: dict[str, SiteStatus] = {}
        self.stopping = trio.Event()
        self.client: MirrorClient | None = None
        self._connected_before = False
        self._status_changed = trio.Event()
        self._unsent_status: set[str] = set()
        self._refusals_logged: set[tuple[str, str]] = set()
        self._progress = trio.Event()
        self._reset_connection()

    # ------------------------------------------------------------------ called by process.py
    def set_site_status(self, site: str, status: SiteStatus) -> None:
        self.sites[site] = status
        self._unsent_status.add(site)
        self._status_changed.set()

    def oldest_unpublished(self) -> float | None:
        times = [t for t in (self.queue.oldest(), self.ledger.oldest()) if t is not None]
        return min(times) if times else None

    async def run(self) -> None:
        """Until `stopping` is set (then DISCONNECT, and return)."""
        delay = RETRY_MIN
        while not self.stopping.is_set():
            try:
                if self.client is None:
                    self.client = self._new_client()  # reads the TLS files: may fail too
                await self._session()
            except Stopped:
                return
            except (OSError, ssl.SSLError, MqttUnavailable) as exc:
                if self.stopping.is_set():  # the connection ended with our DISCONNECT
                    log.info("MQTT mirror disconnected from %s", self.config.broker)
                    return
                if self._connack_ok:
                    delay = RETRY_MIN  # it worked until now: come back quickly
                self._failed(exc, delay)
            except Exception as exc:
                # A bug or a surprise from paho must not end the mirror: log it, start again.
                if self._connack_ok:
                    delay = RETRY_MIN
                self.stats.last_error = describe(exc)
                log.exception("MQTT mirror failed; retrying in %.1f s", delay)
            finally:
                self._close_socket()
                self.ledger.connection_lost()
                self.stats.connected = False
            with trio.move_on_after(delay):
                await self.stopping.wait()
            delay = min(delay * 2, RETRY_MAX)

    def _failed(self, exc: BaseException, delay: float) -> None:
        if not self._connack_ok:
            self.stats.connect_failures += 1
        cause = self.client.socket_error if self.client is not None else None
        if isinstance(exc, MqttUnavailable) and cause is not None and self._connack is None:
            text = describe(cause)  # paho says only "connection lost"; the socket says why
        else:
            text = describe(exc)
        self.stats.last_error = text
        log.warning("MQTT broker %s: %s; retrying in %.1f s", self.config.broker, text, delay)

    # ------------------------------------------------------------------ the paho client
    def _new_client(self) -> MirrorClient:
        client = MirrorClient(
            self, callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.config.client_id,
            protocol=mqtt.MQTTv5,
        )  # fmt: skip
        client.tls_set_context(tls_context(self.config))
        client.username_pw_set(self.config.username, self.config.password)
        client.max_inflight_messages_set(MAX_IN_FLIGHT)
        # Our last will: the broker publishes it if we vanish without a DISCONNECT.
        client.will_set(mirror_status_topic(self.config), self._mirror_status("offline"), qos=STATUS_QOS, retain=True)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _mirror_status(self, state: str) -> bytes:
        return json.dumps({"state": state, "client_id": self.config.client_id, "since": iso(time.time())}).encode()

    def _reset_connection(self) -> None:
        self.sock: socket.socket | None = None
        self._connack: ReasonCode | None = None
        self._connack_ok = False
        self._lost: str | None = None
        self._write_wanted = trio.Event()
        self._trio_thread = False
        self.receive_maximum = 65535
        self.session_present = False
        self.resume_queued = 0  # messages held back at CONNACK to keep to Receive Maximum
        self._status_mids: dict[int, str] = {}  # retained status messages in flight (QoS 1) -> topic
        self._quota_logged = False

    # paho callbacks: called inside paho calls; during connect() that is a worker
    # thread, so they only set plain attributes, and trio objects only from trio's thread.
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Small messages must not wait for Nagle's algorithm (status, PUBREL, PINGREQ).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._lost = self._lost or "socket closed"

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._trio_thread:
            self._write_wanted.set()

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        pass

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connack = reason
        if reason.is_failure:
            return
        # MQTT 5 (3.2.2.3.3): no more QoS 1/2 publishes in flight than the broker's
        # Receive Maximum (65,535 when absent). Mosquitto announces max_inflight_messages.
        # paho 2.2 ignores it, and its setter refuses a connected client: set the limit
        # its publish() and _update_inflight() read (messages past it wait, queued, in paho).
        receive_maximum = getattr(properties, "ReceiveMaximum", 65535)
        client._max_inflight_messages = min(MAX_IN_FLIGHT, receive_maximum)
        self.receive_maximum = receive_maximum
        self.session_present = flags.session_present
        # paho sends what it holds right after this callback: within the limit.
        assert isinstance(client, MirrorClient)
        self.resume_queued = client.resume_within(client._max_inflight_messages)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._lost = f"disconnected ({reason})"

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        # Called at PUBCOMP for QoS 2, at PUBACK for the status messages (QoS 1), and
        # when a QoS 0 message is written (ignored: the ledger waits for a PINGRESP).
        if mid not in client._out_messages:
            return  # a QoS 0 message written (paho keeps QoS 1/2 ones until their last ack)
        if reason is not None and reason.is_failure:
            self.on_refused(mid, reason)
        else:
            self.ledger.completed(mid)
            self._status_mids.pop(mid, None)
        if self._trio_thread:
            self._progress.set()

    def on_quota_exceeded(self, mid: int) -> None:
        """PUBREC 0x97: the broker had Receive Maximum in flight; the message was queued
        again (MirrorClient), counted, and logged once per connection."""
        self.stats.quota_retries += 1
        if not self._quota_logged:
            self._quota_logged = True
            log.warning("MQTT broker %s: quota exceeded (0x97): sending that message again later", self.config.broker)
        if self._trio_thread:
            self._progress.set()

    def on_refused(self, mid: int, reason: ReasonCode) -> None:
        text = str(reason)
        if reason.value == 0x92:
            # "Packet identifier not found" at PUBCOMP: the broker lost its session (a
            # restart without persistence) after PUBREC; the message never got through.
            self.ledger.lost_by_broker(mid)
            log.error("MQTT broker lost a QoS 2 message with its session (restart without persistence?)")
            return
        pending = self.ledger.refused(mid, text)
        if pending is None:  # a status message (QoS 1): its refusal counts too
            self.stats.refused[text] = self.stats.refused.get(text, 0) + 1
        topic = pending.topic if pending is not None else self._status_mids.pop(mid, "a status topic")
        # Logged once per topic and reason (counted every time): an ACL that denies a
        # prefix must not flood the log.
        if (topic, text) not in self._refusals_logged and len(self._refusals_logged) < 10_000:
            self._refusals_logged.add((topic, text))
            log.error("MQTT broker refused a message on %s: %s (reason code %#04x)", topic, text, reason.value)
        self.stats.last_error = f"broker refused {topic}: {text}"
        if self._trio_thread:
            self._progress.set()

    # ------------------------------------------------------------------ one connection
    async def _session(self) -> None:
        client = self.client
        assert client is not None
        self._reset_connection()
        client.socket_error = None
        broker = self.config.broker
        # paho's connect blocks (TCP, TLS handshake; its own 5 s timeout). Abandoned on
        # cancellation, so that stopping the relay never waits for an unreachable broker.
        if not self._connected_before:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY
            await trio.to_thread.run_sync(
                lambda: client.connect(broker.host, broker.port, self.config.keepalive,
                                       clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=properties),
                abandon_on_cancel=True,
            )  # fmt: skip
        else:
            await trio.to_thread.run_sync(client.reconnect, abandon_on_cancel=True)
        self._trio_thread = True
        if self.sock is None:
            raise MqttUnavailable("no socket after connect")
        try:
            await self._connected()
        except BaseExceptionGroup as group:
            # The first failure of one of the tasks (the others were cancelled by it).
            failures, rest = group.split((OSError, ssl.SSLError, MqttUnavailable, Stopped))
            if rest is not None or failures is None:
                raise
            first: BaseException = failures
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from group

    async def _connected(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader)
            nursery.start_soon(self._writer)
            nursery.start_soon(self._misc)
            self._flush()
            with trio.move_on_after(CONNACK_TIMEOUT) as wait:
                while self._connack is None:
                    await self._wait_progress()
            if wait.cancelled_caught:
                raise MqttUnavailable(f"no CONNACK within {CONNACK_TIMEOUT:.0f} s")
            assert self._connack is not None
            if self._connack.is_failure:
                raise MqttUnavailable(_connack_problem(self._connack))
            self._connack_ok = True
            self._connected_before = True
            self.stats.connected = True
            self.stats.connects += 1
            log.info(
                "MQTT mirror connected to %s (MQTT 5, receive maximum %d, session %s, %d QoS 2 messages to complete, "
                "%d of them held back to keep to the receive maximum)",
                self.config.broker, self.receive_maximum, "resumed" if self.session_present else "new",
                len(self.ledger.qos2), self.resume_queued,
            )  # fmt: skip
            self._publish_status(mirror=True, sites=self.sites)
            nursery.start_soon(self._status_publisher)
            nursery.start_soon(self._stopper)
            await self._publisher()

    def _check(self, rc: MQTTErrorCode) -> None:
        if self._connack is not None and self._connack.is_failure:
            raise MqttUnavailable(_connack_problem(self._connack))  # (paho then reports a disconnection too)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._lost is not None:
            raise MqttUnavailable(self._lost or f"connection lost ({rc.name})")

    async def _wait_progress(self) -> None:
        await self._progress.wait()
        self._progress = trio.Event()

    async def _reader(self) -> None:
        assert self.client is not None and self.sock is not None
        client, sock = self.client, self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            self._check(client.loop_read())
            # TLS may hold whole records already decrypted: the socket will not become
            # readable again for them.
            while isinstance(sock, ssl.SSLSocket) and sock.pending():
                self._check(client.loop_read())
            self._progress.set()
            self._flush()

    def _flush(self) -> None:
        assert self.client is not None
        if self.stats.connected and self.ledger.wants_fence():
            self.client.send_fence()
        if self.client.want_write():
            self._write_wanted.set()

    async def _writer(self) -> None:
        assert self.client is not None and self.sock is not None
        client, sock = self.client, self.sock
        while True:
            await self._write_wanted.wait()
            self._write_wanted = trio.Event()
            while client.want_write():
                await trio.lowlevel.wait_writable(sock)
                self._check(client.loop_write())

    async def _misc(self) -> None:
        assert self.client is not None
        while True:
            await trio.sleep(1.0)
            self._check(self.client.loop_misc())
            self._check(self.client.retry_queued())
            self._flush()

    async def _status_publisher(self) -> None:
        while True:
            await self._status_changed.wait()
            self._status_changed = trio.Event()
            self._publish_status(mirror=False, sites={s: self.sites[s] for s in self._unsent_status})

    def _publish_status(self, *, mirror: bool, sites: dict[str, SiteStatus]) -> None:
        assert self.client is not None
        if mirror:
            self._publish_retained(mirror_status_topic(self.config), self._mirror_status("online"))
        for site, status in sites.items():
            payload = {"site": site, "area": self.config.area(site), "state": status.state,
                       "detail": status.detail, "since": iso(status.since)}  # fmt: skip
            self._publish_retained(site_status_topic(self.config, site), json.dumps(payload).encode())
        self._unsent_status.clear()
        self._flush()

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        info = self.client.publish(topic, payload, qos=STATUS_QOS, retain=True)
        self._check(info.rc)
        self._status_mids[info.mid] = topic

    async def _stopper(self) -> None:
        """Say goodbye: the retained status says offline, then DISCONNECT (after which the
        broker does not publish the will)."""
        await self.stopping.wait()
        assert self.client is not None
        self._publish_retained(mirror_status_topic(self.config), self._mirror_status("offline"))
        self.client.disconnect()
        self._flush()
        with trio.move_on_after(DISCONNECT_TIMEOUT):
            while self._lost is None and self.client.want_write():
                await trio.sleep(0.01)
        log.info("MQTT mirror disconnected from %s", self.config.broker)
        raise Stopped

    async def _publisher(self) -> None:
        assert self.client is not None
        client, queue, ledger = self.client, self.queue, self.ledger
        while True:
            while ledger.in_flight >= MAX_IN_FLIGHT:
                await self._wait_progress()
            entry = queue.pop()
            if entry is None:
                await queue.wait()
                continue
            try:
                out, failed = messages(self.config, entry.asdu, entry.site, entry.received_at)
            except Exception:  # never let one odd ASDU stop the mirror
                log.exception("mirror: cannot encode an ASDU of type %d from %s", entry.asdu[0], entry.site)
                self.stats.decode_errors += 1
                continue
            if failed:
                self.stats.decode_errors += 1
            for name, payload, qos in out:
                info = client.publish(name, payload, qos=qos)
                if qos == 0:
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        ledger.lost_qos0()
                    else:
                        ledger.handed_qos0(entry.received_at)
                else:
                    # paho keeps it (and sends it again after a reconnection) from here.
                    ledger.handed_qos2(info.mid, Pending(name, entry.received_at))
                self._check(info.rc)
            self._flush()
            await trio.lowlevel.checkpoint()

    def _close_socket(self) -> None:
        self._trio_thread = False
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
