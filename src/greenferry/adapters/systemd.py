"""systemd readiness and watchdog: the sd_notify protocol on a plain AF_UNIX datagram socket.

systemd (``Type=notify``) passes ``$NOTIFY_SOCKET``: a filesystem path, or an abstract socket name written
with a leading ``@``. A service reports its state by sending one datagram of newline-separated
``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``). With ``WatchdogSec=``
systemd also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``) and restarts the service when no
``WATCHDOG=1`` arrives within that time; we ping at half of it, and only while the daemon is healthy.

Nothing here may take the daemon down: a send that fails (socket gone, queue full) is logged once and
the daemon carries on. Outside systemd :meth:`SystemdNotifier.from_env` returns None.

Typical use (the daemon does this)::

    notifier = SystemdNotifier.from_env()
    async with WatchdogPinger(notifier, clock, is_healthy) as pinger:
        tg.create_task(pinger.run())  # in a TaskGroup the daemon owns
        notifier.ready(status="online")
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self

from prometheus_client import CollectorRegistry, Counter

from greenferry.core.clock import Clock

__all__ = ["SystemdNotifier", "WatchdogPinger"]

logger = logging.getLogger(__name__)

_USEC_PER_S = 1_000_000


class SystemdNotifier:
    """Sends sd_notify messages to systemd's notification socket.

    Args:
        address: ``$NOTIFY_SOCKET`` as systemd writes it: an absolute path or ``@name`` (abstract).
        watchdog_usec: the watchdog timeout systemd enforces (µs), or None when there is no watchdog.

    Raises:
        ValueError: ``address`` is neither an absolute path nor an abstract ``@`` name.
    """

    def __init__(self, address: str, watchdog_usec: int | None = None) -> None:
        if address.startswith("@") and len(address) > 1:
            self._sockaddr: bytes = b"\0" + os.fsencode(address[1:])
        elif address.startswith("/"):
            self._sockaddr = os.fsencode(address)
        else:
            raise ValueError(f"NOTIFY_SOCKET {address!r}: expected an absolute path or an @abstract name")
        if watchdog_usec is not None and watchdog_usec <= 0:
            raise ValueError("watchdog_usec must be positive")
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._closed = False
        self._failing = False  # True after a failed send: later failures log at debug until one succeeds

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        """The notifier systemd asked for, or None when not started by systemd with ``Type=notify``.

        Args:
            environ: where to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``
                (default ``os.environ``). The watchdog is honoured only when ``WATCHDOG_PID`` is unset
                or is this process (it is meant for the service's main process, not its children).
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        if not (address.startswith("/") or (address.startswith("@") and len(address) > 1)):
            # e.g. systemd >= 256's "vsock:CID:PORT" for VMs; not something a node daemon runs under.
            logger.warning("NOTIFY_SOCKET=%r is not a unix socket; not notifying systemd", address)
            return None
        return cls(address, _watchdog_usec(env))

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1`` (half the watchdog timeout, s); None without a watchdog."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / _USEC_PER_S / 2

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram, e.g. ``notify(READY=1, STATUS="online")``.

        Returns:
            True when systemd's socket took the datagram; False when sending failed (logged) or the
            notifier is closed.

        Raises:
            ValueError: a key is not an upper-case sd_notify name or a value contains a newline
                (a programming error; use :meth:`status` for free text).
        """
        lines = []
        for key, value in fields.items():
            if not (key.isascii() and key.replace("_", "").isalnum() and key.isupper()):
                raise ValueError(f"sd_notify key {key!r} must be upper-case letters, digits and '_'")
            text = str(value)
            if "\n" in text:
                raise ValueError(f"sd_notify value for {key} must not contain a newline")
            lines.append(f"{key}={text}")
        return self.notify_raw("\n".join(lines))

    def notify_raw(self, text: str) -> bool:
        """Send ``text`` (newline-separated ``KEY=VALUE`` lines) as one datagram.

        Returns:
            True when sent, False when it failed (logged once per run of failures) or the notifier is closed.
        """
        if self._closed:
            logger.debug("sd_notify after close dropped: %r", text)
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop: a full receive queue is a failed send, not a stall.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(text.encode("utf-8"), self._sockaddr)
        except OSError as err:
            if self._failing:
                logger.debug("sd_notify to %s still failing: %s", self.address, err)
            else:
                self._failing = True
                logger.warning(
                    "cannot notify systemd at NOTIFY_SOCKET=%s: %s (the daemon keeps running; "
                    "further failures are logged at debug level)",
                    self.address,
                    err,
                )
            return False
        if self._failing:
            self._failing = False
            logger.info("notifying systemd at %s works again", self.address)
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up is complete (``READY=1``), optionally with a status line."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=_one_line(status))

    def reloading(self) -> bool:
        """Tell systemd a configuration reload started (``RELOADING=1``); send :meth:`ready` when done."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec)

    def stopping(self) -> bool:
        """Tell systemd the daemon is shutting down (``STOPPING=1``)."""
        return self.notify(STOPPING=1)

    def watchdog(self) -> bool:
        """Keep systemd's watchdog from firing (``WATCHDOG=1``)."""
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows (``STATUS=...``; newlines become spaces)."""
        return self.notify(STATUS=_one_line(text))

    def close(self) -> None:
        """Close the socket; later sends are dropped. Safe to call twice."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WatchdogPinger:
    """Sends ``WATCHDOG=1`` every watchdog interval, but only while ``health_fn()`` is True.

    A wedged event loop cannot run this loop, and an unhealthy daemon withholds the ping; either way
    systemd's ``WatchdogSec=`` expires and systemd restarts the service (``Restart=on-failure``).

    Args:
        notifier: where to send the pings; None (not under systemd) makes :meth:`run` just wait.
        clock: the time source for the interval.
        health_fn: called before each ping; False (or an exception, logged) withholds the ping.
        interval_s: ping interval (s); default :attr:`SystemdNotifier.watchdog_interval_s`.
        registry: where to register ``greenferry_watchdog_pings_total`` and
            ``greenferry_watchdog_withheld_total`` (default: a private registry).
    """

    def __init__(
        self,
        notifier: SystemdNotifier | None,
        clock: Clock,
        health_fn: Callable[[], bool],
        *,
        interval_s: float | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if interval_s is None and notifier is not None:
            interval_s = notifier.watchdog_interval_s
        if interval_s is not None and not interval_s > 0:
            raise ValueError("watchdog interval_s must be positive")
        self._notifier = notifier
        self._clock = clock
        self._health_fn = health_fn
        self.interval_s = interval_s
        self._healthy = True  # last verdict, to log transitions once
        registry = registry if registry is not None else CollectorRegistry()
        self._pings = Counter(
            "greenferry_watchdog_pings", "WATCHDOG=1 messages sent to systemd", registry=registry
        )
        self._withheld = Counter(
            "greenferry_watchdog_withheld",
            "Watchdog pings withheld because the daemon reported itself unhealthy",
            registry=registry,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def run(self) -> None:
        """Ping systemd every interval while healthy; runs until cancelled."""
        notifier, interval_s = self._notifier, self.interval_s
        if notifier is None or interval_s is None:
            logger.debug("no systemd watchdog configured; watchdog pinger idle")
            await asyncio.Event().wait()  # nothing to do, but keep the run-until-cancelled contract
            return
        logger.info("pinging the systemd watchdog every %.3g s while healthy", interval_s)
        while True:
            if self._check_health():
                if notifier.watchdog():
                    self._pings.inc()
            else:
                self._withheld.inc()
            await self._clock.sleep(interval_s)

    def _check_health(self) -> bool:
        try:
            healthy = bool(self._health_fn())
        except Exception:
            if self._healthy:
                logger.exception("health check raised; withholding systemd watchdog pings")
            self._healthy = False
            return False
        if healthy != self._healthy:
            if healthy:
                logger.info("daemon healthy again; resuming systemd watchdog pings")
            else:
                logger.warning(
                    "daemon unhealthy; withholding systemd watchdog pings (systemd will restart it)"
                )
            self._healthy = healthy
        return healthy


def _one_line(text: str) -> str:
    return " ".join(text.splitlines()).strip()


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw_usec = env.get("WATCHDOG_USEC", "")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID", "")
    if raw_pid:
        try:
            pid = int(raw_pid)
        except ValueError:
            logger.warning("ignoring the systemd watchdog: WATCHDOG_PID=%r is not a process id", raw_pid)
            return None
        if pid != os.getpid():
            logger.debug("WATCHDOG_PID=%d is not this process (%d); no watchdog here", pid, os.getpid())
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        usec = 0
    if usec <= 0:
        logger.warning("ignoring the systemd watchdog: WATCHDOG_USEC=%r is not a positive integer", raw_usec)
        return None
    return usec
