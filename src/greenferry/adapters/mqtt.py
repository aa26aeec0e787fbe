"""MQTT: grid and renewable signals in, the node's retained status out (aiomqtt on paho-mqtt, MQTT 3.1.1).

:class:`MqttLink` subscribes every configured signal topic, parses each message with
:mod:`greenferry.core.payloads` and puts accepted readings on the :class:`SignalBoard` and the bus; refused
payloads are counted, published as :class:`SignalRejected` and logged at most once per topic per interval.
It keeps ``<prefix>/nodes/<node>/status`` retained (online on connect, offline on shutdown, and the broker's
last will when the connection drops) and reconnects with the shared :class:`Backoff`. See docs/mqtt.md.

Messages are handled inline, in paho's socket-read callback (see :func:`_inline_queue`): no task and no
queue hop per message, which is what makes 20,000+ messages/s on one core possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt.client import topic_matches_sub
from prometheus_client import CollectorRegistry, Counter, Gauge

from greenferry import __version__
from greenferry.config import DaemonConfig, MqttConfig, TlsConfig
from greenferry.core.clock import Clock
from greenferry.core.dr import DemandResponseEvent, DrEventBook
from greenferry.core.events import SignalAccepted, SignalRejected
from greenferry.core.payloads import Parser, make_parser
from greenferry.core.signals import Reading, SignalBoard, SignalKind
from greenferry.daemon.backoff import Backoff
from greenferry.daemon.bus import EventBus
from greenferry.errors import ConfigError, PayloadError, ServiceUnavailableError

__all__ = ["LINK_REASONS", "MqttLink", "probe_broker"]

logger = logging.getLogger(__name__)

# Reasons the link adds to the parsers' (core.payloads.REASONS).
LINK_REASONS = ("too_old", "unknown_topic")

_ROUTE_CACHE_MAX = 4096  # concrete topics remembered for wildcard subscriptions
_LOG_TOPICS_MAX = 1024  # topics whose last rejection log time is remembered
_CLIENT_TIMEOUT_S = 10.0  # aiomqtt's wait for CONNACK, SUBACK, PUBACK


@dataclass(slots=True)
class _Route:
    """One configured signal: where it comes from and how it is parsed and counted."""

    kind: SignalKind
    topic_filter: str
    wildcard: bool
    parser: Parser
    max_age_s: float
    accepted: Any  # the greenferry_mqtt_accepted_total child for this kind
    rejected: dict[str, Any] = field(default_factory=dict)  # reason -> counter child


def _inline_queue(handle: Callable[[aiomqtt.Message], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """An aiomqtt incoming-message queue type that hands each message to ``handle`` instead of queueing it.

    aiomqtt calls ``put_nowait`` from paho's socket-read callback. Handling the message right there saves
    the task and the ``asyncio.wait`` that aiomqtt's message iterator spends on every message (about half
    of the per-message cost). Nothing is ever queued, so ``client.messages`` only ends, by raising
    ``MqttError``, when the connection drops. ``handle`` must not raise.
    """

    class _InlineQueue(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            handle(item)

    return _InlineQueue


def _code(rc: object) -> int:
    """The number of an MQTT reason code (paho gives ReasonCode objects or plain ints)."""
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else -1


def _iso(time_s: float) -> str:
    return dt.datetime.fromtimestamp(time_s, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _TlsContext(ssl.SSLContext):
    """A client TLS context that remembers the sockets it wraps.

    paho-mqtt 2.2 does not close the socket when the TLS handshake fails (certificate not trusted, plain
    server): the socket lingers until garbage collection. A failed connection attempt closes them here.
    """

    wrapped: list[ssl.SSLSocket]

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.wrapped.append(sock)
        return sock

    def close_wrapped(self) -> None:
        """Close every socket wrapped so far (only after the connection attempt failed)."""
        for sock in self.wrapped:
            sock.close()
        self.wrapped.clear()


def _tls_context(tls: TlsConfig) -> _TlsContext:
    """The client TLS context: the CA bundle (or the system store) and an optional client certificate.

    Raises:
        OSError, ssl.SSLError: a file cannot be read or is not a certificate / key.
    """
    context = _TlsContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name by default
    context.wrapped = []
    if tls.ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.load_verify_locations(cafile=str(tls.ca_file))
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def _client(
    mqtt: MqttConfig,
    client_id: str,
    tls_context: ssl.SSLContext | None,
    *,
    will: aiomqtt.Will | None = None,
    queue_type: type[asyncio.Queue[aiomqtt.Message]] | None = None,
    timeout_s: float = _CLIENT_TIMEOUT_S,
) -> aiomqtt.Client:
    """An aiomqtt client for ``mqtt`` (MQTT 3.1.1, clean session)."""
    tls = mqtt.tls
    return aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=None if mqtt.password is None else mqtt.password.get_secret_value(),
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
        will=will,
        keepalive=mqtt.keepalive_s,
        timeout=timeout_s,
        queue_type=queue_type,
        tls_context=tls_context,
        tls_insecure=None if tls is None else tls.insecure,
        # Nagle off: PUBACKs and status messages are small and should leave at once.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )


class MqttLink:
    """The node's MQTT connection: signals in, retained status out, reconnecting until cancelled.

    Use as ``async with MqttLink(...) as link:`` and run ``await link.run()`` in a task you own; leaving
    the ``async with`` publishes the retained offline status and disconnects.

    Args:
        config: the node config; needs an ``[mqtt]`` section.
        bus: accepted and rejected signals are published here.
        board: accepted readings are stored here.
        clock: ``now_s`` stamps events and status, ``monotonic_s`` stamps readings and paces logs.
        registry: where the ``greenferry_mqtt_*`` metrics are registered.
        log_interval_s: a topic's rejected payloads are logged at most once per this many seconds.
        shutdown_timeout_s: bound on publishing the offline status and disconnecting at exit.

    Raises:
        ConfigError: no ``[mqtt]`` section, or a signal format that cannot carry its kind.
    """

    def __init__(
        self,
        config: DaemonConfig,
        bus: EventBus,
        board: SignalBoard,
        clock: Clock,
        registry: CollectorRegistry,
        *,
        log_interval_s: float = 60.0,
        shutdown_timeout_s: float = 3.0,
    ) -> None:
        if config.mqtt is None:
            raise ConfigError("MqttLink needs an [mqtt] section")
        self._config = config
        self._mqtt: MqttConfig = config.mqtt
        self._bus = bus
        self._board = board
        self._clock = clock
        self._log_interval_s = log_interval_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._status_topic = config.status_topic()
        self._where = f"{'mqtts' if self._mqtt.tls else 'mqtt'}://{self._mqtt.host}:{self._mqtt.port}"
        self.dr_events = DrEventBook()
        """Demand-response events received so far (newer versions replace older, cancellations remove)."""

        self._m_accepted = Counter(
            "greenferry_mqtt_accepted",
            "Signal payloads accepted, by signal kind.",
            ["kind"],
            registry=registry,
        )
        self._m_rejected = Counter(
            "greenferry_mqtt_rejected",
            "Signal payloads rejected, by signal kind and reason.",
            ["kind", "reason"],
            registry=registry,
        )
        self._m_connected = Gauge(
            "greenferry_mqtt_connected", "1 while connected to the MQTT broker.", registry=registry
        )
        self._m_reconnects = Counter(
            "greenferry_mqtt_reconnects", "Connections to the broker after the first one.", registry=registry
        )
        self._m_connect_failures = Counter(
            "greenferry_mqtt_connect_failures", "Failed attempts to connect to the broker.", registry=registry
        )

        self._routes: list[_Route] = []
        qos_by_filter: dict[str, int] = {}
        for kind, signal in config.signals.configured().items():
            self._routes.append(
                _Route(
                    kind=kind,
                    topic_filter=signal.topic,
                    wildcard="+" in signal.topic or "#" in signal.topic,
                    parser=make_parser(kind, signal, self._mqtt.max_payload_bytes),
                    max_age_s=signal.max_age_s,
                    accepted=self._m_accepted.labels(kind=kind.value),
                )
            )
            qos_by_filter[signal.topic] = max(signal.qos, qos_by_filter.get(signal.topic, 0))
        self._subscriptions = sorted(qos_by_filter.items())
        self._extra: list[tuple[str, Callable[[str, bytes], None]]] = []
        self._route_cache: dict[str, tuple[_Route, ...]] = {}
        self._unrouted_rejected: dict[str, Any] = {}
        self._log_state: dict[str, list[float]] = {}  # topic -> [last log monotonic s, suppressed count]

        self._status: dict[str, Any] = {
            "node": config.node.name,
            "site": config.node.site,
            "state": "online",
            "version": __version__,
        }
        self._will = aiomqtt.Will(
            self._status_topic,
            json.dumps(
                {
                    "node": config.node.name,
                    "site": config.node.site,
                    "state": "offline",
                    "reason": "connection lost",
                }
            ).encode(),
            qos=1,
            retain=True,
        )
        self._queue_type = _inline_queue(self._handle)
        self._client: aiomqtt.Client | None = None
        self._stack: AsyncExitStack | None = None
        self._session_ready = False
        self._closing = False
        self._connections = 0

    # --- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Nothing to open yet: :meth:`run` connects (and keeps reconnecting)."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Publish the retained offline status (``reason: shutdown``), then disconnect (bounded in time)."""
        self._closing = True
        client = self._client
        if client is not None:
            offline = {
                **self._status,
                "state": "offline",
                "reason": "shutdown",
                "time": _iso(self._clock.now_s()),
            }
            try:
                async with asyncio.timeout(self._shutdown_timeout_s):
                    await client.publish(self._status_topic, json.dumps(offline).encode(), qos=1, retain=True)
            except (aiomqtt.MqttError, TimeoutError) as err:
                logger.warning(
                    "could not publish the offline status to %s: %s", self._where, err or "timed out"
                )
        await self._drop_connection()

    @property
    def connected(self) -> bool:
        """True while connected to the broker (and subscribed)."""
        return self._client is not None and self._session_ready

    async def run(self) -> None:
        """Connect, subscribe, handle messages; on any connection loss wait (backoff) and start over.

        Returns only once the link is closing; cancel it to stop. Cancelling leaves the connection open so
        that leaving the ``async with`` can still publish the offline status.
        """
        backoff = Backoff(self._mqtt.reconnect_min_s, self._mqtt.reconnect_max_s)
        failures = 0
        outage_logged_s = -float("inf")
        while not self._closing:
            client = self._client
            try:
                if client is None:
                    client = await self._connect()
                    if self._closing:  # the link was closed while this connection was being made
                        await self._drop_connection()
                        return
                if not self._session_ready:
                    await self._start_session(client)
            except aiomqtt.MqttError as err:
                await self._drop_connection()
                failures += 1
                self._m_connect_failures.inc()
                now_s = self._clock.monotonic_s()
                if failures == 1 or now_s - outage_logged_s >= self._log_interval_s:
                    outage_logged_s = now_s
                    logger.warning(
                        "cannot connect to the MQTT broker %s (attempt %d): %s", self._where, failures, err
                    )
                await self._clock.sleep(backoff.next_delay_s())
                continue
            if failures:
                logger.info(
                    "connected to the MQTT broker %s after %d failed attempt(s)", self._where, failures
                )
            backoff.reset()
            failures = 0
            try:
                async for _ in client.messages:  # handled inline (_InlineQueue): this only ends by raising
                    pass
            except aiomqtt.MqttError as err:
                if self._closing:
                    return
                logger.warning(
                    "lost the connection to the MQTT broker %s: %s; reconnecting", self._where, err
                )
            await self._drop_connection()
            await self._clock.sleep(backoff.next_delay_s())

    async def _connect(self) -> aiomqtt.Client:
        """Open one connection (no retry). Raises aiomqtt.MqttError; TLS file problems are MqttError too."""
        try:
            tls = None if self._mqtt.tls is None else _tls_context(self._mqtt.tls)
        except (OSError, ssl.SSLError) as err:
            raise aiomqtt.MqttError(f"TLS setup failed: {err}") from err
        client = _client(
            self._mqtt, self._config.client_id, tls, will=self._will, queue_type=self._queue_type
        )
        stack = AsyncExitStack()
        attempt = asyncio.ensure_future(stack.enter_async_context(client))
        try:
            await asyncio.shield(attempt)
        except aiomqtt.MqttError:
            if tls is not None:
                tls.close_wrapped()
            raise
        except asyncio.CancelledError:
            # Let the attempt finish (bounded by the client timeout) and close it: a half-open paho socket
            # must not be left behind.
            try:
                await attempt
            except aiomqtt.MqttError:
                if tls is not None:
                    tls.close_wrapped()
            await stack.aclose()
            raise
        self._client, self._stack = client, stack
        self._connections += 1
        if self._connections > 1:
            self._m_reconnects.inc()
        return client

    async def _start_session(self, client: aiomqtt.Client) -> None:
        """Publish the retained online status and subscribe every signal topic (retained values follow)."""
        await client.publish(self._status_topic, self._status_payload(), qos=1, retain=True)
        if self._subscriptions:
            granted = await client.subscribe(self._subscriptions)
            for (topic, _qos), code in zip(self._subscriptions, granted, strict=False):
                if _code(code) >= 0x80:
                    logger.error("the broker %s refused the subscription to %r (ACL?)", self._where, topic)
        self._session_ready = True
        self._m_connected.set(1)
        logger.info(
            "MQTT %s: subscribed to %d topic(s), status on %s",
            self._where,
            len(self._subscriptions),
            self._status_topic,
        )

    async def _drop_connection(self) -> None:
        """Forget the current connection, disconnecting it if it is still up (bounded)."""
        stack, self._stack, self._client = self._stack, None, None
        self._session_ready = False
        self._m_connected.set(0)
        if stack is None:
            return
        try:
            async with asyncio.timeout(self._shutdown_timeout_s):
                await stack.aclose()
        except (aiomqtt.MqttError, TimeoutError) as err:
            logger.warning("MQTT %s: unclean disconnect: %s", self._where, err or "timed out")

    def add_handler(self, topic_filter: str, handler: Callable[[str, bytes], None], qos: int = 1) -> None:
        """Also subscribe ``topic_filter`` and pass its messages to ``handler(topic, payload)``.

        For greenferry's own topics (peer adverts); call before :meth:`run`. The handler must not block;
        an exception it raises is logged and the message dropped.
        """
        self._extra.append((topic_filter, handler))
        self._subscriptions = sorted({**dict(self._subscriptions), topic_filter: qos}.items())

    # --- publishing ------------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish one message (waits for the broker's PUBACK at QoS 1).

        Raises:
            ServiceUnavailableError: not connected, or the broker did not take the message.
        """
        client = self._client
        if client is None:
            raise ServiceUnavailableError(f"MQTT broker {self._where}: not connected; {topic} not published")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as err:
            raise ServiceUnavailableError(
                f"MQTT broker {self._where}: publishing to {topic} failed: {err}"
            ) from err

    async def publish_status(self, fields: Mapping[str, Any]) -> None:
        """Merge ``fields`` into the retained status and publish it now if connected, else on (re)connect.

        ``time`` is set on every publication.

        Raises:
            TypeError: a field is not JSON-serialisable (the status is left as it was).
        """
        merged = {**self._status, **fields}
        json.dumps(merged)  # a field that is not JSON fails here, in the caller, and is not kept
        self._status = merged
        payload = self._status_payload()
        client = self._client
        if client is None or not self._session_ready:
            return
        try:
            await client.publish(self._status_topic, payload, qos=1, retain=True)
        except aiomqtt.MqttError as err:
            logger.warning("MQTT %s: status not published (%s); it is re-sent on reconnect", self._where, err)

    def _status_payload(self) -> bytes:
        self._status["time"] = _iso(self._clock.now_s())
        return json.dumps(self._status).encode()

    # --- receiving (hot path) --------------------------------------------------------------------------

    def _handle(self, message: aiomqtt.Message) -> None:
        """Dispatch one message to every signal whose topic filter matches. Never raises (paho callback)."""
        topic = message.topic.value
        try:
            payload = message.payload
            if not isinstance(payload, bytes):
                payload = b"" if payload is None else str(payload).encode()
            if self._extra and self._handled_extra(topic, payload):
                return
            routes = self._route_cache.get(topic)
            if routes is None:
                routes = self._resolve(topic)
            if not routes:
                self._reject(
                    None, topic, PayloadError("unknown_topic", "no signal is configured here"), payload
                )
            for route in routes:
                self._dispatch(route, topic, payload)
        except Exception:  # the top of paho's read callback: a bug must not drop the connection
            logger.exception("MQTT: failed to handle a message on %r", topic)

    def _handled_extra(self, topic: str, payload: bytes) -> bool:
        handled = False
        for topic_filter, handler in self._extra:
            if topic_filter == topic or topic_matches_sub(topic_filter, topic):
                handled = True
                if len(payload) > self._mqtt.max_payload_bytes:
                    logger.debug("MQTT: %d bytes on %s: over max_payload_bytes", len(payload), topic)
                    continue
                try:
                    handler(topic, payload)
                except Exception:  # a handler bug must not drop the connection
                    logger.exception("MQTT: handler for %r failed on %r", topic_filter, topic)
        return handled

    def _resolve(self, topic: str) -> tuple[_Route, ...]:
        routes = tuple(
            r
            for r in self._routes
            if r.topic_filter == topic or (r.wildcard and topic_matches_sub(r.topic_filter, topic))
        )
        if len(self._route_cache) >= _ROUTE_CACHE_MAX:
            self._route_cache.clear()
        self._route_cache[topic] = routes
        return routes

    def _dispatch(self, route: _Route, topic: str, payload: bytes) -> None:
        clock = self._clock
        try:
            parsed = route.parser(payload)
            if parsed.source_time_s is not None and route.kind is not SignalKind.DEMAND_RESPONSE:
                age_s = clock.now_s() - parsed.source_time_s
                if age_s > route.max_age_s:
                    raise PayloadError(
                        "too_old", f"its time is {age_s:.0f} s ago, beyond max_age_s {route.max_age_s:g}"
                    )
        except PayloadError as err:
            self._reject(route, topic, err, payload)
            return
        value = parsed.value
        if isinstance(value, DemandResponseEvent):
            self.dr_events.apply(value)
            self.dr_events.prune(clock.now_s())
        reading = Reading(route.kind, value, clock.monotonic_s(), topic, parsed.source_time_s)
        self._board.update(reading)
        self._bus.publish(SignalAccepted(reading, clock.now_s()))
        route.accepted.inc()

    def _reject(self, route: _Route | None, topic: str, err: PayloadError, payload: bytes) -> None:
        kind = None if route is None else route.kind
        children = self._unrouted_rejected if route is None else route.rejected
        child = children.get(err.reason)
        if child is None:
            child = children[err.reason] = self._m_rejected.labels(
                kind="none" if kind is None else kind.value, reason=err.reason
            )
        child.inc()
        self._bus.publish(SignalRejected(topic, kind, err.reason, self._clock.now_s(), len(payload)))
        self._log_rejection(topic, kind, err)

    def _log_rejection(self, topic: str, kind: SignalKind | None, err: PayloadError) -> None:
        now_s = self._clock.monotonic_s()
        entry = self._log_state.get(topic)
        if entry is not None and now_s - entry[0] < self._log_interval_s:
            entry[1] += 1
            return
        suppressed = 0 if entry is None else int(entry[1])
        if entry is None and len(self._log_state) >= _LOG_TOPICS_MAX:
            self._log_state = {
                t: e for t, e in self._log_state.items() if now_s - e[0] < self._log_interval_s
            }
            if len(self._log_state) >= _LOG_TOPICS_MAX:
                self._log_state.clear()
        self._log_state[topic] = [now_s, 0]
        name = "unconfigured" if kind is None else kind.value
        if suppressed:
            logger.warning(
                "rejected %s payload on %r: %s (and %d more on this topic in the last %.0f s)",
                name,
                topic,
                err,
                suppressed,
                self._log_interval_s,
            )
        else:
            logger.warning("rejected %s payload on %r: %s", name, topic, err)


async def probe_broker(mqtt: MqttConfig, client_id: str, timeout_s: float) -> None:
    """Open one connection to the broker and close it again (``greenferry check-config``).

    Raises:
        ServiceUnavailableError: naming why: no answer, connection refused, TLS failure (with the
            certificate problem), bad username or password, not authorised.
    """
    where = f"{'mqtts' if mqtt.tls else 'mqtt'}://{mqtt.host}:{mqtt.port}"
    try:
        tls = None if mqtt.tls is None else _tls_context(mqtt.tls)
    except (OSError, ssl.SSLError) as err:
        raise ServiceUnavailableError(f"{where}: TLS setup failed: {err}") from err
    if tls is not None and mqtt.tls is not None and mqtt.tls.insecure:
        tls.check_hostname = False
    # The TCP and TLS handshake first, on our own socket, for a typed reason.
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(
                mqtt.host, mqtt.port, ssl=tls, server_hostname=None if tls is None else mqtt.host
            )
    except TimeoutError as err:
        raise ServiceUnavailableError(f"{where}: no answer within {timeout_s:g} s") from err
    except ssl.SSLCertVerificationError as err:
        raise ServiceUnavailableError(f"{where}: TLS failure: {err.verify_message or err}") from err
    except ssl.SSLError as err:
        raise ServiceUnavailableError(f"{where}: TLS failure: {err.reason or err}") from err
    except ConnectionRefusedError as err:
        raise ServiceUnavailableError(f"{where}: connection refused (is a broker listening there?)") from err
    except OSError as err:
        raise ServiceUnavailableError(f"{where}: cannot connect: {err.strerror or err}") from err
    writer.close()
    with contextlib.suppress(OSError):  # the probe connection is done with; a TLS close_notify may fail
        await writer.wait_closed()
    # Then the MQTT CONNECT, for the broker's verdict on our credentials.
    tls = None if mqtt.tls is None else _tls_context(mqtt.tls)  # it loaded above, so it loads again
    try:
        async with _client(mqtt, client_id, tls, timeout_s=timeout_s):
            pass
    except aiomqtt.MqttError as err:
        if tls is not None:
            tls.close_wrapped()
        raise ServiceUnavailableError(f"{where}: {_refusal(err, mqtt)}") from err


def _refusal(err: aiomqtt.MqttError, mqtt: MqttConfig) -> str:
    """Why the broker did not take our CONNECT, in words."""
    if not isinstance(err, aiomqtt.MqttCodeError):
        return str(err)
    code = _code(err.rc)
    if code in (4, 0x86):
        return "refused: bad username or password"
    if code in (5, 0x87):
        hint = "wrong username or password?" if mqtt.username else "the broker wants a username and password?"
        return f"refused: not authorised ({hint})"
    return f"refused: {err}"
