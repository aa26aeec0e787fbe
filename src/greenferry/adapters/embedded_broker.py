"""An MQTT broker inside the process (amqtt) for the zero-setup demo; real deployments use Mosquitto.

:class:`EmbeddedBroker` listens on a free 127.0.0.1 port with one plain TCP listener and anonymous access,
and nothing else: amqtt's defaults (``0.0.0.0:1883``, the ``$SYS`` and packet-logging plugins) are never
used. amqtt speaks MQTT 3.1.1 only, delivers at the subscription's QoS and queues nothing for anonymous
offline clients (see /work/shared/guide/INFRA.md section 2), which is all the demo needs. Tests of the real
system use Mosquitto (``greenferry.testing.services``).

amqtt is the optional ``demo`` extra: ``pip install 'greenferry[demo]'``.
"""

from __future__ import annotations

import errno
import logging
import socket
from types import TracebackType
from typing import Any, Self

from greenferry.errors import ServiceUnavailableError

__all__ = ["EmbeddedBroker"]

logger = logging.getLogger(__name__)

# amqtt and its state machine library log every connection and state change at INFO.
_CHATTY_LOGGERS = ("amqtt", "transitions")
_BIND_ATTEMPTS = 5


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _config(host: str, port: int) -> dict[str, Any]:
    """The broker config: one TCP listener, anonymous auth, no $SYS or logging plugins."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _fixed_broker_class(broker_class: Any) -> Any:
    """amqtt's Broker with its retained-message replay on connect confined to the client's own filters.

    amqtt 0.12.1, on every new connection, walks every topic filter ANY client subscribed and sends the
    new client the retained messages matching them (so a node received the other nodes' signals and
    statuses), awaiting inside that walk over a dict that a concurrent SUBSCRIBE changes (``RuntimeError:
    dictionary changed size during iteration``, which drops the connecting client's session). Replaying
    only filters the session itself subscribed fixes both: for a clean session the walk then never
    suspends. The replay that follows a SUBSCRIBE is unchanged (the session is subscribed by then).
    """

    class _Broker(broker_class):  # type: ignore[misc]
        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            subscribers = self._subscriptions.get(subscription[0], ())
            if not any(s.client_id == session.client_id for s, _ in subscribers):
                return
            await super()._publish_retained_messages_for_subscription(subscription, session)

    return _Broker


def _address_in_use(err: BaseException) -> bool:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            return True
        cause = cause.__cause__
    return False


class EmbeddedBroker:
    """An amqtt broker on a loopback port, started and stopped as an async context manager.

    ``async with EmbeddedBroker() as broker:`` then connect to ``broker.host``:``broker.port``.

    Args:
        host: listen address (loopback by default; the demo never listens beyond this machine).
        port: listen port; 0 picks a free one (retried if another process takes it first).
        quiet: while the broker runs, raise amqtt's and ``transitions``' loggers to WARNING if they are
            unset (they log every connection at INFO, which would scroll the live view).

    Raises:
        ServiceUnavailableError: (on enter) amqtt is not installed, or the broker could not listen.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._quiet = quiet
        self._quieted: list[logging.Logger] = []
        self._broker: Any = None

    @property
    def port(self) -> int:
        """The port the broker listens on.

        Raises:
            RuntimeError: the broker is not running.
        """
        if self._port is None:
            raise RuntimeError("the embedded broker is not running")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the running broker."""
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        """Start the broker (a few tens of milliseconds)."""
        try:
            from amqtt.broker import Broker  # type: ignore[import-untyped]
            from amqtt.errors import BrokerError  # type: ignore[import-untyped]
        except ImportError as err:
            raise ServiceUnavailableError(
                "the embedded MQTT broker needs amqtt: pip install 'greenferry[demo]' "
                "(or give the demo a broker URL)"
            ) from err
        if self._quiet:
            for name in _CHATTY_LOGGERS:
                chatty = logging.getLogger(name)
                if chatty.level == logging.NOTSET:
                    chatty.setLevel(logging.WARNING)
                    self._quieted.append(chatty)
        broker_class = _fixed_broker_class(Broker)
        attempts = 1 if self._requested_port else _BIND_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port(self.host)
            broker = broker_class(_config(self.host, port))
            try:
                await broker.start()
            except BrokerError as err:
                if attempt < attempts and _address_in_use(err):
                    logger.debug("port %d was taken before the broker bound it; trying another", port)
                    continue
                raise ServiceUnavailableError(
                    f"embedded MQTT broker: cannot listen on {self.host}:{port}: {err}"
                ) from err
            self._broker, self._port = broker, port
            break
        logger.info("embedded MQTT broker (amqtt) listening on %s:%d", self.host, self._port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect every client and stop listening."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await broker.shutdown()
        finally:
            self._port = None
            for chatty in self._quieted:
                chatty.setLevel(logging.NOTSET)
            self._quieted.clear()
            logger.info("embedded MQTT broker stopped")
